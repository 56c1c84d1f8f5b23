"""The `stratum` CLI end to end against a real PostgreSQL."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from api import commands
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
    generate = shlex.split("generate --users 2 --days 1 --start 2024-01-01 --every 60 --out")
    assert main([*generate, str(out)]) == 0
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


def test_ingest_ts_unit_reads_epoch_seconds(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    epochs = tmp_path / "epochs.csv"
    epochs.write_text("ts,user_id,metric,value\n1704067200,1,steps,60\n")
    assert main(["db", "init"]) == 0
    assert main(["ingest", str(epochs)]) == 2
    assert "--ts-unit" in capsys.readouterr().err
    assert main(["ingest", "--ts-unit", "s", str(epochs)]) == 0
    with psycopg.connect(env) as conn:
        stored = conn.execute("SELECT ts::text FROM raw_data").fetchone()
    assert stored == ("2024-01-01 00:00:00+00",)


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def test_lake_files_are_readable_by_their_owner_only(
    env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = tmp_path / "lake"
    monkeypatch.setenv("STRATUM_LAKE_PATH", str(lake))
    before = _umask()
    generate = "generate --users 1 --days 2 --start 2024-01-01 --every 3600 --metrics steps"
    assert main(shlex.split(generate)) == 0
    assert main(["sync"]) == 0
    written = [lake, *lake.rglob("*")]
    assert any(p.suffix == ".parquet" for p in written)
    assert [str(p) for p in written if p.stat().st_mode & 0o077] == []
    assert _umask() == before  # main restores its caller's umask


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


def test_bench_without_its_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """A serving install lacks matplotlib: `stratum bench` exits 2 with the pip command,
    not a traceback. Python refuses an import whose sys.modules entry is None, which is
    what a missing package looks like; our own modules are untouched."""
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from api.cli import main\n"
        f"sys.exit(main(['bench', '--scale', 'ci', '--out', {str(tmp_path / 'out')!r}]))\n"
    )
    env = {**os.environ, "STRATUM_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    said = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stderr
    assert "pip install 'stratum[bench]'" in said and "matplotlib is not installed" in said
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("error", "is_missing_extra"),
    [
        (ModuleNotFoundError("no matplotlib", name="matplotlib.pyplot"), True),
        (ModuleNotFoundError("no httpx", name="httpx"), True),
        (ModuleNotFoundError("a bug of ours", name="benchmarks.gone"), False),
        (ImportError("cannot import name 'x' from 'engine.run'", name="engine.run"), False),
    ],
)
def test_only_a_missing_third_party_package_reads_as_the_extra(
    error: ImportError, is_missing_extra: bool
) -> None:
    assert (commands.missing_bench_extra(error) is not None) is is_missing_extra


def test_an_error_quoting_user_text_prints_it_whole_on_one_line(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Rich would read "[red]" and "[run 1]" as markup and wrap at 80 columns when piped.
    folder = tmp_path / "[run 1] [red]"
    folder.mkdir()
    bad = folder / ("a-long-file-name-" * 6 + ".csv")
    bad.write_text("ts,user_id,metric,value\n2024-01-01T00:00:00Z,1,pulse,60\n")
    assert main(["ingest", str(bad)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"error: {bad}, row 1: unknown metric 'pulse'; valid metrics: heart_rate, hrv, "
        "respiratory_rate, skin_temperature, sleep_stage, spo2, steps"
    ]
