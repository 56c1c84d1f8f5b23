"""The lake executor's strategies (one sorted DuckDB query, series by series in file order
with growing file chunks, or small answers read with pyarrow) give the same answers, pages
and cursor walks."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from engine import lakeexec
from engine.access import LOCAL_ADMIN
from engine.lakeexec import ScanTuning
from engine.query import build_query
from engine.run import Engine
from engine.settings import load_settings
from sync.export import sync_to_lake
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.jobs import maintain_job
from sync.rollups import refresh_rollups

DUCKDB_ONLY = ScanTuning(small_rows=0)
DAY_ONE = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
def engine(warm_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    metrics = ["heart_rate", "steps", "spo2"]
    ingest_tables(
        warm_url, generate_cohort(3, 6, date(2024, 5, 1), seed=3, metrics=metrics, every_s=120)
    )
    refresh_rollups(warm_url)
    # DuckDB for every answer; small ones are compared with it below. The lake wherever it
    # holds the days (small answers are otherwise the warm store's while it holds them too).
    settings = load_settings({"STRATUM_HOME": str(tmp_path), "STRATUM_WARM_ROLLUP_ROWS": "0"})
    engine = Engine(settings, warm_url, DUCKDB_ONLY)
    # One day per batch: one file per participant-day, as the nightly sync leaves them until
    # a month is compacted, so the strategies have many files to order and chunk.
    sync_to_lake(warm_url, engine.lake, grace_days=1, batch_days=1, today=date(2024, 5, 6))
    yield engine
    engine.close()


def run(engine: Engine, **extra: str) -> tuple[list[dict], str | None]:
    params = {
        "user_id": "1,2,3",
        "metric": "heart_rate,spo2,steps",
        "start": "2024-05-01T03:00Z",
        "end": "2024-05-07",
        "resolution": "raw",
        **extra,
    }
    answer = engine.run(
        build_query(
            {k: [v] for k, v in params.items()}, engine.settings.query, principal=LOCAL_ADMIN
        )
    )
    rows = pa.Table.from_batches(list(answer.batches), schema=answer.schema).to_pylist()
    return rows, answer.next_cursor


def walk(engine: Engine, page_size: int) -> list[dict]:
    rows, cursor = run(engine, page_size=str(page_size))
    while cursor:
        more, cursor = run(engine, page_size=str(page_size), cursor=cursor)
        rows += more
    return rows


def test_series_scans_equal_one_sorted_query(
    engine: Engine, warm_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    one_series = {
        "user_id": "1",
        "metric": "steps",
        "start": "2024-05-01",
        "end": "2024-05-07",
        "resolution": "raw",  # (auto is hourly here: small hourly answers are warm-only)
    }
    query = build_query(
        {k: [v] for k, v in one_series.items()}, engine.settings.query, principal=LOCAL_ADMIN
    )
    assert engine.plan(query).sources == ["lake", "warm"]
    sorted_whole, _ = run(engine, page_size="0")
    sorted_pages = [run(engine, page_size="700", page_number=str(n))[0] for n in (1, 5, 9)]
    # The same data, read series by series (nothing counts as small) in runs of one file.
    series = Engine(
        engine.settings, warm_url, ScanTuning(sort_rows=0, first_chunk_files=1, small_rows=0)
    )
    try:
        with caplog.at_level(logging.DEBUG, logger="engine.lakeexec"):
            series_whole, _ = run(series, page_size="0")
        assert "series by series" in caplog.text and "in one query" not in caplog.text
        assert series_whole == sorted_whole and len(sorted_whole) > 5_000
        pages = [run(series, page_size="700", page_number=str(n))[0] for n in (1, 5, 9)]
        assert pages == sorted_pages
        assert walk(series, 1_234) == sorted_whole
    finally:
        series.close()


def test_deep_pages_of_several_metrics_read_series_from_their_day(
    engine: Engine, warm_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A page of several metrics sorted in one query reads every row of its participants'
    # files; when that costs more than the queries of the series the page spans (here any
    # query costs what 1,000 rows do), the page is read series by series from its day.
    whole, _ = run(engine, page_size="0")
    costly = Engine(engine.settings, warm_url, ScanTuning(query_rows=1_000, small_rows=0))
    try:
        for number in (1, 9, 20):
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="engine.lakeexec"):
                page, _ = run(costly, page_size="700", page_number=str(number))
            # (The span starts at 03:00: a deep page first counts that day's rows, in one
            # query over its files; the page itself is the last scan.)
            scans = [r.getMessage() for r in caplog.records if "lake scan" in r.getMessage()]
            assert scans[-1].endswith("series by series")
            assert page == whole[(number - 1) * 700 : number * 700]
        assert walk(costly, 1_234) == whole
    finally:
        costly.close()


def test_a_deep_page_of_one_metric_opens_no_file_before_its_day(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    one_metric = {"metric": "steps", "start": "2024-05-01T00:00Z", "end": "2024-05-05"}
    whole, _ = run(engine, page_size="0", **one_metric)  # 4 days, all in the lake
    at = next(i for i, row in enumerate(whole) if row["user_id"] == 3)
    at += 2 * (len(whole) - at) // 3  # into the last participant's third day
    number = at // 100 + 1
    with caplog.at_level(logging.DEBUG, logger="engine.lakeexec"):
        page, _ = run(engine, page_size="100", page_number=str(number), **one_metric)
    assert page == whole[(number - 1) * 100 : number * 100] and len(page) == 100
    first_day = page[0]["ts"].date()
    assert page[0]["user_id"] == 3 and first_day >= date(2024, 5, 3)
    days_read = (date(2024, 5, 4) - first_day).days + 1
    assert f"lake scan of {days_read} files in one query" in caplog.text


@pytest.mark.parametrize("compacted", [False, True], ids=["day files", "month files"])
@pytest.mark.parametrize("resolution", ["raw", "1m", "1h"])
def test_small_answers_read_with_pyarrow_equal_duckdbs(
    engine: Engine,
    warm_url: str,
    resolution: str,
    compacted: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if compacted:  # as the nightly job leaves settled months: one file per participant-month
        assert maintain_job(warm_url, engine.settings.lake).status == "ok"
        assert len(engine.lake.files("raw", [1], DAY_ONE, DAY_ONE + timedelta(days=7)).files) == 1
    # Fresh engines after the compaction; `small` counts everything as small: every answer
    # below is read file by file with pyarrow.
    duck = Engine(engine.settings, warm_url, DUCKDB_ONLY)
    small = Engine(engine.settings, warm_url, ScanTuning(small_rows=10**9, small_files=10**6))
    asked = [
        {"resolution": resolution},  # three participants, three metrics: sorted
        {"resolution": resolution, "metric": "steps"},  # one metric: file order
        {"resolution": resolution, "user_id": "2", "start": "2024-05-02T13:17:05Z"},
    ]
    try:
        for extra in asked:
            whole, _ = run(duck, page_size="0", **extra)
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="engine.lakeexec"):
                assert run(small, page_size="0", **extra)[0] == whole
            assert "with pyarrow" in caplog.text and "query" not in caplog.text
            assert len(whole) > 100
            for number in (1, 3, 7):
                page, _ = run(small, page_size="97", page_number=str(number), **extra)
                assert page == whole[(number - 1) * 97 : number * 97]
            assert walk_with(small, 211, extra) == whole
    finally:
        small.close()
        duck.close()


@pytest.mark.parametrize("resolution", ["raw", "1h"])
def test_streamed_queries_equal_those_run_to_the_end(
    engine: Engine, warm_url: str, resolution: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A query of few rows runs to the end before its first batch (ScanTuning's
    materialize_rows); the same queries streamed as DuckDB reads them give the same answers,
    pages and walks."""
    streamed = Engine(engine.settings, warm_url, ScanTuning(small_rows=0, materialize_rows=0))
    asked = [
        {"resolution": resolution},
        {"resolution": resolution, "metric": "steps"},
        {"resolution": resolution, "user_id": "2", "start": "2024-05-02T13:17:05Z"},
    ]
    try:
        for extra in asked:
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="engine.lakeexec"):
                whole, _ = run(engine, page_size="0", **extra)
            assert "DuckDB query run to the end" in caplog.text
            assert "DuckDB query streamed" not in caplog.text
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="engine.lakeexec"):
                assert run(streamed, page_size="0", **extra)[0] == whole
            assert "DuckDB query streamed" in caplog.text
            assert "DuckDB query run to the end" not in caplog.text
            assert len(whole) > 100
            for number in (1, 4):
                page, _ = run(streamed, page_size="89", page_number=str(number), **extra)
                assert page == whole[(number - 1) * 89 : number * 89]
            assert walk_with(streamed, 307, extra) == whole == walk_with(engine, 307, extra)
    finally:
        streamed.close()


def test_streams_bound_once_equal_the_relations_streams(
    engine: Engine,
    warm_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A streamed query goes through DuckDB's private single-bind submit where this DuckDB
    has it (lakeexec._stream_reader); through its public relation API, or when that submit
    turns out not to take these arguments, the answers are the same."""
    real = lakeexec._submit
    if real is None:
        pytest.skip("this DuckDB has no _seam.submit: every stream is a relation's")
    submitted: list[str] = []

    def counted(*args: object) -> object:
        submitted.append(str(args[1]))
        return real(*args)

    def changed(*args: object) -> object:
        raise TypeError("submit() takes 2 positional arguments but 5 were given")

    streamed = Engine(engine.settings, warm_url, ScanTuning(small_rows=0, materialize_rows=0))
    asked = [{}, {"metric": "steps"}, {"user_id": "2", "start": "2024-05-02T13:17:05Z"}]
    try:
        for extra in asked:
            monkeypatch.setattr(lakeexec, "_submit", counted)
            once, _ = run(streamed, page_size="0", **extra)
            assert submitted and all("read_parquet" in sql for sql in submitted)
            assert len(once) > 100
            submitted.clear()
            monkeypatch.setattr(lakeexec, "_submit", None)
            assert run(streamed, page_size="0", **extra)[0] == once
            monkeypatch.setattr(lakeexec, "_submit", changed)
            with caplog.at_level(logging.WARNING, logger="engine.lakeexec"):
                assert run(streamed, page_size="0", **extra)[0] == once
            assert "_seam.submit is not as expected" in caplog.text
            assert lakeexec._submit is None  # not tried again
    finally:
        streamed.close()


def walk_with(engine: Engine, page_size: int, extra: dict[str, str]) -> list[dict]:
    rows, cursor = run(engine, page_size=str(page_size), **extra)
    while cursor:
        more, cursor = run(engine, page_size=str(page_size), cursor=cursor, **extra)
        rows += more
    return rows
