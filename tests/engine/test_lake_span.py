"""The lake's DuckDB statement tests each row's ts only where a file's days reach outside
the span (engine/lakeexec.py: within_span)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from engine.lakeexec import within_span
from engine.plan import Segment
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
