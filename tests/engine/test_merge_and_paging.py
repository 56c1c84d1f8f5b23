"""The k-way merge keeps answer order; page location skips whole days exactly."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from engine.access import LOCAL_ADMIN
from engine.catalog import Coverage
from engine.merge import merge_sorted, take
from engine.paging import locate, partial_days
from engine.query import DataQuery, Key, to_us
from engine.shapes import RAW

rows = st.lists(
    st.tuples(st.integers(1, 3), st.sampled_from(["heart_rate", "steps"]), st.integers(0, 10_000)),
    unique=True,
    max_size=200,
)


def batches(keys: list[tuple[int, str, int]], size: int) -> list[pa.RecordBatch]:
    table = pa.table(
        {
            "user_id": pa.array([k[0] for k in keys], pa.int32()),
            "metric": [k[1] for k in keys],
            "ts": pa.array([k[2] for k in keys], pa.int64()).cast(RAW.field("ts").type),
            "value": [float(k[2]) for k in keys],
        },
        schema=RAW,
    )
    return table.to_batches(max_chunksize=size) if keys else []


def keys_of(stream: object) -> list[tuple[int, str, int]]:
    table = pa.Table.from_batches(list(stream), schema=RAW)  # type: ignore[call-overload]
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    users, metrics = table.column("user_id").to_pylist(), table.column("metric").to_pylist()
    return list(zip(users, metrics, ts, strict=True))


@given(rows, st.integers(1, 4), st.integers(1, 7))
def test_merge_equals_sorting_everything(keys: list, parts: int, size: int) -> None:
    # Deal rows into `parts` streams by time range, like segments, each sorted on its own.
    streams = [sorted(k for k in keys if k[2] * parts // 10_001 == p) for p in range(parts)]
    merged = merge_sorted([iter(batches(s, size)) for s in streams], ["heart_rate", "steps"])
    assert keys_of(merged) == sorted(keys)


@given(rows, st.integers(0, 250), st.integers(0, 50))
def test_take_is_a_slice(keys: list, skip: int, limit: int) -> None:
    keys = sorted(keys)
    assert keys_of(take(iter(batches(keys, 7)), skip, limit)) == keys[skip : skip + limit]


def query(start: str, end: str, users: tuple[int, ...] = (1, 2)) -> DataQuery:
    return DataQuery(
        users=users,
        metrics=("heart_rate", "steps"),
        start=datetime.fromisoformat(start).replace(tzinfo=UTC),
        end=datetime.fromisoformat(end).replace(tzinfo=UTC),
        resolution="raw",
        requested_resolution="raw",
        max_points=1,
        page_size=10,
        page_number=1,
        principal=LOCAL_ADMIN,
    )


COUNTS = {
    (1, "heart_rate"): [(date(2024, 1, 1), 100), (date(2024, 1, 2), 100)],
    (1, "steps"): [(date(2024, 1, 2), 50)],
    (2, "heart_rate"): [(date(2024, 1, 1), 10)],
}


TOTALS = {series: sum(n for _, n in days) for series, days in COUNTS.items()}


def locate_with(q: DataQuery, offset: int, stale: Coverage) -> tuple[Key | None, int]:
    asked: list[tuple[int, str]] = []

    def series_days(user: int, metric: str) -> list[tuple[date, int]]:
        asked.append((user, metric))
        return COUNTS.get((user, metric), [])

    found = locate(q, offset, TOTALS, series_days, stale)
    assert len(asked) <= 1, "only the series holding the offset is read day by day"
    return found


def at(user: int, metric: str, day: str) -> Key:
    return Key(user, metric, to_us(datetime.fromisoformat(day).replace(tzinfo=UTC)) - 1)


def test_locate_skips_whole_days() -> None:
    q = query("2024-01-01", "2024-01-03")
    assert locate_with(q, 0, Coverage()) == (None, 0)
    assert locate_with(q, 99, Coverage()) == (at(1, "heart_rate", "2024-01-01"), 99)
    assert locate_with(q, 100, Coverage()) == (at(1, "heart_rate", "2024-01-02"), 0)
    assert locate_with(q, 230, Coverage()) == (at(1, "steps", "2024-01-02"), 30)
    assert locate_with(q, 255, Coverage()) == (at(2, "heart_rate", "2024-01-01"), 5)


def test_locate_past_the_end_starts_after_everything() -> None:
    q = query("2024-01-01", "2024-01-03")
    after, skip = locate_with(q, 10_000, Coverage())
    assert skip == 0 and after == Key(2, "steps", to_us(q.end))


def test_uncertain_days_stop_the_skip() -> None:
    q = query("2024-01-01", "2024-01-03")
    stale = Coverage({1: ((date(2024, 1, 2), date(2024, 1, 2)),)})
    # Day 2 of user 1 may hold any number of rows: start there and skip row by row.
    assert locate_with(q, 150, stale) == (at(1, "heart_rate", "2024-01-02"), 50)
    partial = query("2024-01-01T12:00", "2024-01-03")
    assert locate_with(partial, 150, Coverage()) == (
        Key(1, "heart_rate", to_us(partial.start) - 1),
        150,
    )


def test_partial_days_counted_exactly_are_skipped_too() -> None:
    # The span starts at noon: day counts give its whole days (the 2nd), and the rows each
    # series holds on the partial 1st are counted from the answer (here 40, 0 and 6).
    q = query("2024-01-01T12:00", "2024-01-03")
    whole_days = {
        series: [d for d in days if d[0] != date(2024, 1, 1)] for series, days in COUNTS.items()
    }
    partial = {(1, "heart_rate", date(2024, 1, 1)): 40, (2, "heart_rate", date(2024, 1, 1)): 6}
    totals = {series: sum(n for _, n in days) for series, days in whole_days.items()}

    def located(offset: int) -> tuple[Key | None, int]:
        def series_days(user: int, metric: str) -> list[tuple[date, int]]:
            return whole_days.get((user, metric), [])

        return locate(q, offset, totals, series_days, Coverage(), partial)

    assert located(39) == (Key(1, "heart_rate", to_us(q.start) - 1), 39)
    assert located(40) == (at(1, "heart_rate", "2024-01-02"), 0)
    assert located(145) == (at(1, "steps", "2024-01-02"), 5)
    assert located(193) == (Key(2, "heart_rate", to_us(q.start) - 1), 3)
    assert partial_days(q) == [(date(2024, 1, 1), q.start, q.start + timedelta(hours=12))]
