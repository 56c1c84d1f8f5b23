"""Issue 16, point 2: cohort jobs on Daft over the pinned lake, in process.

Each job's answer equals what the engine (`/data`'s pipeline) gives for the same
participant-days; only the cohort's lake days are read (synced, verified, unchanged since);
the table it writes reads the same in DuckDB, pandas and polars; bad input exits 2.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from api.cli import main
from engine.access import LOCAL_ADMIN
from engine.errors import WarmStoreUnavailable
from engine.query import build_query
from engine.run import Engine
from engine.settings import Settings
from jobs.features import JOBS, RESTING_LOWEST_MINUTES
from jobs.run import compute, run_job
from jobs.source import Span, chunks, pin
from lake import Lake
from sync.ingest import ingest_tables
from tests.integration.test_lake_integrity import flip_byte, lake_file
from tests.jobs.conftest import COHORT_USERS, END, LAKE_DAYS, START, make_lake_cohort, settings_for


def engine_rows(settings: Settings, url: str, metric: str, resolution: str) -> pd.DataFrame:
    """The engine's whole answer for the cohort's lake days (what /data answers)."""
    params = {
        "user_id": [",".join(map(str, COHORT_USERS))],
        "metric": [metric],
        "start": [START.isoformat()],
        "end": [(LAKE_DAYS[-1] + timedelta(days=1)).isoformat()],
        "resolution": [resolution],
        "page_size": ["0"],
    }
    engine = Engine(settings, url)
    try:
        query = build_query(params, settings.query, principal=LOCAL_ADMIN)
        answer = engine.run(query)
        assert answer.plan.sources == ["lake"]
        table = pa.Table.from_batches(list(answer.batches), schema=answer.schema)
    finally:
        engine.close()
    frame = table.to_pandas()
    frame["date"] = frame["ts"].dt.date
    return frame


def run(settings: Settings, url: str, name: str, out: Path, **kwargs: Any) -> pd.DataFrame:
    result = run_job(settings, url, name, "study", START, END, out, **kwargs)
    assert result.rows == len(COHORT_USERS) * len(LAKE_DAYS)
    # The third day is not in the lake: left out, and said so.
    assert result.skipped == tuple(
        (u, END - timedelta(days=1), END - timedelta(days=1)) for u in COHORT_USERS
    )
    assert result.lake_version == Lake(settings.lake.path).version("agg_1m")
    frame = DeltaTable(str(out)).to_pandas()
    assert list(frame[["user_id", "date"]].itertuples(index=False, name=None)) == [
        (u, d) for u in COHORT_USERS for d in LAKE_DAYS
    ]
    return frame.set_index(["user_id", "date"])


def by_day(frame: pd.DataFrame) -> pd.core.groupby.DataFrameGroupBy:
    return frame.groupby(["user_id", "date"])


def test_wear_time_and_steps_equal_the_engine_answers(
    lake_cohort: Settings, warm_url: str, tmp_path: Path
) -> None:
    wear = run(lake_cohort, warm_url, "wear_time", tmp_path / "wear")
    minutes = by_day(engine_rows(lake_cohort, warm_url, "heart_rate", "1m")).size()
    assert wear["wear_minutes"].to_dict() == minutes.to_dict()
    assert (wear["wear_minutes"] > 1000).all()  # once a minute, off-wrist gaps aside
    assert wear["coverage"].to_dict() == (minutes / 1440).to_dict()

    steps = run(lake_cohort, warm_url, "daily_steps", tmp_path / "steps")
    daily = engine_rows(lake_cohort, warm_url, "steps", "1d").set_index(["user_id", "date"])
    assert steps["steps"].to_dict() == daily["sum"].to_dict()
    assert (steps["steps"] > 0).all()


def test_resting_heart_rate_and_nightly_hrv_equal_the_engine_answers(
    lake_cohort: Settings, warm_url: str, tmp_path: Path
) -> None:
    resting = run(lake_cohort, warm_url, "resting_hr", tmp_path / "resting")
    minute_means = engine_rows(lake_cohort, warm_url, "heart_rate", "1m")
    lowest = by_day(minute_means)["avg"].apply(lambda means: sorted(means)[:RESTING_LOWEST_MINUTES])
    expected = {key: sum(values) / len(values) for key, values in lowest.items()}
    assert resting["resting_hr_bpm"].to_dict() == pytest.approx(expected, rel=1e-12)
    assert all(30 < bpm < 80 for bpm in expected.values())

    hrv = run(lake_cohort, warm_url, "nightly_hrv", tmp_path / "hrv")
    minutes = engine_rows(lake_cohort, warm_url, "hrv", "1m")
    night = minutes[minutes["ts"].dt.hour < 6]
    totals = by_day(night)[["sum", "count"]].sum()
    assert hrv["hrv_night_samples"].to_dict() == totals["count"].to_dict()
    assert hrv["hrv_night_ms"].to_dict() == pytest.approx(
        (totals["sum"] / totals["count"]).to_dict(), rel=1e-12
    )
    assert (hrv["hrv_night_samples"] > 100).all()  # in bed from 22:00-24:00 to 05:30-08:00


def test_the_table_reads_the_same_in_duckdb_pandas_and_polars(
    lake_cohort: Settings, warm_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "wear"
    run(lake_cohort, warm_url, "wear_time", out)
    table = DeltaTable(str(out))
    with_pandas = table.to_pandas().to_dict("records")
    with_polars = pl.read_delta(str(out)).to_dicts()
    duck = duckdb.connect()
    duck.register("job", table.to_pyarrow_dataset())
    with_duckdb = duck.sql("SELECT * FROM job ORDER BY user_id, date").arrow().read_all()
    duck.unregister("job")  # before the dataset goes (delta-rs #2184)
    duck.close()
    assert with_polars == with_duckdb.to_pylist() == with_pandas
    assert list(with_pandas[0]) == ["user_id", "date", "wear_minutes", "coverage"]
    assert isinstance(with_pandas[0]["date"], date)


def test_chunks_of_participants_give_the_same_answer(
    lake_cohort: Settings, warm_url: str, tmp_path: Path
) -> None:
    """The memory budget splits the cohort into chunks; any split answers the same."""
    job = JOBS["resting_hr"]
    engine = Engine(lake_cohort, warm_url)
    try:
        principal = LOCAL_ADMIN
        pinned = pin(engine, principal, (1, 2, 3), job.metrics, START, END)
    finally:
        engine.close()
    assert len(pinned.spans) == 3
    whole, one_chunk = compute(job, pinned, budget_rows=10**9, io=None)
    split, three_chunks = compute(job, pinned, budget_rows=1, io=None)
    assert (one_chunk, three_chunks) == (1, 3)
    assert split.equals(whole)
    assert whole.num_rows == 3 * len(LAKE_DAYS)


def test_chunks_split_at_the_row_budget() -> None:
    spans = tuple(Span((u,), START, START, rows) for u, rows in ((1, 5), (2, 5), (3, 20), (4, 1)))
    assert [[s.users[0] for s in c] for c in chunks(spans, 10)] == [[1, 2], [3], [4]]
    assert [[s.users[0] for s in c] for c in chunks(spans, 100)] == [[1, 2, 3, 4]]


def test_days_written_since_their_sync_or_damaged_are_left_out(
    lake_cohort: Settings, warm_url: str, tmp_path: Path
) -> None:
    """The engine's plan decides: a day changed since its sync, or whose lake file fails its
    recorded hash, is not read from the lake; the job leaves it out and names it."""
    late = pa.table(
        {
            "ts": pa.array([datetime(2024, 1, 2, 12, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
            "user_id": pa.array([2], pa.int32()),
            "metric": ["heart_rate"],
            "value": [70.0],
        }
    )
    ingest_tables(warm_url, [late])
    flip_byte(lake_file(lake_cohort, 1, "2024-01-01", tier="agg_1m"))
    result = run_job(lake_cohort, warm_url, "wear_time", "study", START, END, tmp_path / "wear")
    days = DeltaTable(str(tmp_path / "wear")).to_pandas()
    assert list(days[["user_id", "date"]].itertuples(index=False, name=None)) == [
        (1, LAKE_DAYS[1]),
        (2, LAKE_DAYS[0]),
    ]
    assert result.skipped_days == 4  # (1, 01-01), (2, 01-02) and both 01-03s


@pytest.fixture
def cli_env(lake_cohort: Settings, warm_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = lake_cohort.database.home
    monkeypatch.setenv("STRATUM_DATABASE_URL", warm_url)
    monkeypatch.setenv("STRATUM_HOME", str(home))
    monkeypatch.setenv("STRATUM_LAKE_PATH", str(lake_cohort.lake.path))
    monkeypatch.setenv("STRATUM_MEMORY_BUDGET", "1GiB")
    return home


def test_the_cli_runs_a_job(
    cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "steps"
    argv = ["job", "run", "daily_steps", "--cohort", "study", "--start", "2024-01-01"]
    assert main([*argv, "--end", "2024-01-04", "--out", str(out), "--users", "2"]) == 0
    printed = capsys.readouterr().out
    assert "daily_steps: 2 participant-days of 1 participants" in printed
    assert "left out 1 participant-days" in printed and "2: 2024-01-03..2024-01-03" in printed
    assert DeltaTable(str(out)).to_pandas()["user_id"].tolist() == [2, 2]
    assert main(["job", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in JOBS)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["pulse"], "NAME: unknown job 'pulse'; jobs: wear_time, resting_hr"),
        (["wear_time", "--end", "2024-01-01"], "--end (2024-01-01) must be after --start"),
        (["wear_time", "--users", "1-3"], "participants 3 are not in cohort 'study'"),
        (["wear_time", "--cohort", "nobody"], "cohort: no cohort named 'nobody'"),
        (["wear_time", "--out", "{tmp}"], "exists; a job writes a new table"),
        (["wear_time", "--out", "{tmp}/no/such"], "does not exist; create it first"),
    ],
    ids=["job", "dates", "participant", "cohort", "out exists", "out folder"],
)
def test_bad_input_exits_2_naming_it(
    cli_env: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    defaults = {"--cohort": "study", "--start": "2024-01-02", "--end": "2024-01-04"}
    defaults["--out"] = str(tmp_path / "new")
    name, *options = arguments
    given = dict(zip(options[::2], options[1::2], strict=True))
    merged = {**defaults, **{k: v.format(tmp=tmp_path) for k, v in given.items()}}
    argv = ["job", "run", name, *[part for pair in merged.items() for part in pair]]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_bad_date_exits_2(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["job", "run", "wear_time", "--cohort", "study", "--start", "2024-13-01"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--end", "2024-01-04", "--out", "x"])
    assert exit_info.value.code == 2
    assert "'2024-13-01' is not a date (YYYY-MM-DD)" in capsys.readouterr().err


def test_a_job_over_a_lake_on_s3(warm_url: str, tmp_path: Path, s3_root: str) -> None:
    """The lake on the local S3 server: Daft reads the pinned version there with the lake's
    endpoint and credentials (the AWS_* variables), and answers what the engine answers."""
    settings = make_lake_cohort(
        warm_url, settings_for(tmp_path / "home", STRATUM_LAKE_PATH=s3_root)
    )
    wear = run(settings, warm_url, "wear_time", tmp_path / "wear")
    minutes = by_day(engine_rows(settings, warm_url, "heart_rate", "1m")).size()
    assert wear["wear_minutes"].to_dict() == minutes.to_dict()


def test_daily_holds_every_job_side_by_side(
    lake_cohort: Settings, warm_url: str, tmp_path: Path
) -> None:
    """`daily` answers, column for column, what the four jobs answer one by one."""
    daily = run(lake_cohort, warm_url, "daily", tmp_path / "daily")
    singles = [
        run(lake_cohort, warm_url, name, tmp_path / name)
        for name in ("wear_time", "resting_hr", "daily_steps", "nightly_hrv")
    ]
    joined = pd.concat(singles, axis=1)
    assert list(daily.columns) == list(joined.columns)
    assert daily.to_dict() == joined.to_dict()


def test_a_day_with_some_metrics_gets_the_others_empty_values() -> None:
    """Day 1 has heart rate only, day 2 steps only: each job's own empty values fill in."""
    import daft

    midnight_ts = [datetime(2024, 1, d, 0, m, tzinfo=UTC) for d, m in ((1, 0), (1, 1), (2, 0))]
    rows = daft.from_pydict(
        {
            "user_id": [1, 1, 1],
            "date": [date(2024, 1, 1), date(2024, 1, 1), date(2024, 1, 2)],
            "metric": ["heart_rate", "heart_rate", "steps"],
            "ts": midnight_ts,
            "count": [60, 30, 1],
            "sum": [3600.0, 1800.0, 12.0],
        }
    )
    out = JOBS["daily"].compute(rows).sort("date").to_pydict()
    assert out["wear_minutes"] == [2, 0]
    assert out["coverage"] == [2 / 1440, 0.0]
    assert out["resting_hr_bpm"] == [None, None]  # fewer than 10 minutes
    assert out["steps"] == [None, 12.0]
    assert out["hrv_night_ms"] == [None, None]
    assert out["hrv_night_samples"] == [0, 0]


def test_an_unreachable_warm_store_is_a_clear_error(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "home")
    nowhere = f"postgresql://stratum@{str(tmp_path).replace('/', '%2F')}%2Fnone/db"
    with pytest.raises(WarmStoreUnavailable, match="the warm store is unreachable"):
        run_job(settings, nowhere, "wear_time", "study", START, END, tmp_path / "out")
    assert not (tmp_path / "out").exists()
