"""The lake's DuckDB statement tests each row's ts only where a file's days reach outside
the span (engine/lakeexec.py: within_span), and a page resumed inside one series tests
only the time (which DuckDB can test in the scan)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from engine.lakeexec import _statement, within_span
from engine.plan import Segment
from engine.query import Key, to_us
from lake import LakeFile


def _month(first: date, last: date) -> LakeFile:
    return LakeFile(f"raw/user_id=1/month={first:%Y-%m}/part.parquet", 1, first, last, 100, 1)


def _segment(start: datetime, end: datetime, *files: LakeFile) -> Segment:
    return Segment("lake", "raw", "raw", (1,), start, end, files=files)


MAY = _month(date(2024, 5, 1), date(2024, 5, 31))
JUNE = _month(date(2024, 6, 1), date(2024, 6, 30))


def test_files_whose_days_lie_in_the_span_need_no_row_test() -> None:
    whole = _segment(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))
    assert within_span(whole, (MAY, JUNE))
    wider = _segment(datetime(2024, 4, 30, 12, tzinfo=UTC), datetime(2024, 7, 2, tzinfo=UTC))
    assert within_span(wider, (MAY, JUNE))


def test_a_file_reaching_outside_the_span_needs_it() -> None:
    late_start = _segment(datetime(2024, 5, 1, 3, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))
    assert not within_span(late_start, (MAY, JUNE))
    early_end = _segment(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 6, 30, tzinfo=UTC))
    assert not within_span(early_end, (MAY, JUNE))
    mid_day_end = _segment(
        datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 6, 30, 23, 59, tzinfo=UTC)
    )
    assert not within_span(mid_day_end, (MAY, JUNE))


def _where(after: Key, users: tuple[int, ...], metrics: tuple[str, ...]) -> str:
    segment = _segment(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))
    sql, params = _statement(segment, "lake", {}, users, metrics, {}, after, 10, None, (MAY,))
    assert set(params) >= {"at"}
    return sql.split(" WHERE ", 1)[1]


def test_a_page_resumed_inside_its_series_tests_only_the_time() -> None:
    after = Key(1, "heart_rate", to_us(datetime(2024, 5, 20, tzinfo=UTC)))
    where = _where(after, (1,), ("heart_rate",))
    assert "ts > $at" in where and "$au" not in where and "$am" not in where
    # Several series: the whole key decides which rows come after it.
    assert "$au" in _where(after, (1, 2), ("heart_rate",))
    assert "$am" in _where(after, (1,), ("heart_rate", "steps"))
