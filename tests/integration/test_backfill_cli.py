"""`stratum backfill` end to end: Fitbit responses and rows files into the lake, exit 2 with a
clear message for input errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.cli import main
from sync.runs import recent_runs

FITBIT = Path(__file__).parent.parent / "sync" / "fitbit"


@pytest.fixture
def env(warm_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("STRATUM_DATABASE_URL", warm_url)
    monkeypatch.setenv("STRATUM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STRATUM_LAKE_PATH", str(tmp_path / "lake"))
    return warm_url


def test_fitbit_heart_rate_and_steps_of_one_day_land_side_by_side(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(FITBIT / "heart_1sec.json"), str(FITBIT / "steps_1min.json")]
    assert main(["backfill", "--user", "7", "--tz", "Europe/Berlin", *files]) == 0
    out = capsys.readouterr().out
    assert "backfilled 2 files: 10 raw rows" in out and "raw rows/s" in out
    out_file = tmp_path / "answer.csv"
    query = ["query", "--user", "7", "--metric", "heart_rate,steps", "--start", "2018-12-31"]
    query += ["--end", "2019-01-03", "--resolution", "raw", "--page-size", "0"]
    assert main([*query, "--format", "csv", "--out", str(out_file)]) == 0
    lines = out_file.read_text().splitlines()
    assert len(lines) == 1 + 10  # the steps file kept the heart rate of the same day
    assert '7,"heart_rate","2018-12-31T23:00:00Z",64' in lines
    assert '7,"steps","2019-01-01T07:15:00Z",61' in lines
    assert [(r.job, r.status) for r in recent_runs(env)] == [("backfill", "ok")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([str(FITBIT / "heart_1sec.json")], "give them with --user ID and --tz ZONE"),
        (["--user", "1", "--tz", "Mars/Olympus", str(FITBIT / "heart_1sec.json")], "--tz: unknown"),
        (
            ["--user", "1", "--tz", "Europe/Berlin", str(FITBIT / "heart_spring_forward.json")],
            "heart_spring_forward.json, row 2: 2023-03-26T02:30:00 does not exist",
        ),
        (["missing.csv"], "missing.csv: no such file"),
    ],
)
def test_input_errors_exit_2_naming_the_problem(
    env: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["backfill", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_rows_file_with_the_fitbit_options_is_refused(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("ts,user_id,metric,value\n2019-01-01T00:00:00Z,1,steps,3\n")
    assert main(["backfill", "--user", "1", "--tz", "UTC", str(path)]) == 2
    assert "--user and --tz apply to Fitbit Web API responses only" in capsys.readouterr().err
    assert main(["backfill", str(path)]) == 0
    assert "1 raw rows" in capsys.readouterr().out
