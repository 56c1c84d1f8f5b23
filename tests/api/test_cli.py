"""The `stratum` CLI end to end against a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from api.cli import main


@pytest.fixture
def env(warm_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("STRATUM_DATABASE_URL", warm_url)
    monkeypatch.setenv("STRATUM_HOME", str(tmp_path / "home"))
    return warm_url


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in ("raw_data", "data_1m", "data_1h", "data_1d")
        }


def test_generate_file_ingest_aggregate(env: str, tmp_path: Path) -> None:
    out = tmp_path / "cohort.parquet"
    assert main(["generate", "--users", "2", "--days", "1", "--start", "2024-01-01",
                 "--every", "60", "--out", str(out)]) == 0  # fmt: skip
    assert out.exists()
    assert main(["db", "init"]) == 0
    assert main(["ingest", str(out)]) == 0
    assert main(["aggregate"]) == 0
    after = counts(env)
    assert after["raw_data"] > 0 and after["data_1d"] > 0
    assert after["data_1m"] == after["raw_data"]  # one sample per minute per metric


def test_generate_ingests_directly(env: str) -> None:
    assert main(["generate", "--users", "1", "--days", "1", "--metrics", "steps"]) == 0
    assert counts(env)["raw_data"] > 0


def test_bad_file_exits_2_with_row_and_reason(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,user_id,metric,value\n2024-01-01T00:00:00Z,1,pulse,60\n")
    assert main(["ingest", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "row 1" in err and "unknown metric 'pulse'" in err and "Traceback" not in err
    assert counts(env)["raw_data"] == 0


def test_unknown_metric_for_generate_names_parameter(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--users", "1", "--days", "1", "--metrics", "pulse"]) == 2
    assert "metrics" in capsys.readouterr().err
