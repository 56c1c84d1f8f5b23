"""Calendar buckets, zone periods, the exact tier and re-bucketing: pure, no database."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest

from engine.access import LOCAL_ADMIN
from engine.calendar import Bucket, buckets, following, label, local_midnight
from engine.errors import InvalidParameter
from engine.query import build_query
from engine.rebucket import BucketTable, aggregate, exact_tier
from engine.settings import QuerySettings
from engine.shapes import ROLLUP
from engine.zones import DAWN, periods

SETTINGS = QuerySettings(max_points=5000, default_page_size=100, max_page_size=1000, max_users=3)
EARLY, LATE = datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)


def days(tz: str, first: date, last: date) -> list[Bucket]:
    zone_periods = periods((), tz, EARLY, LATE)
    return buckets(
        zone_periods,
        "1d",
        since=EARLY,
        until=LATE,
        first_date=first,
        end_date=last + timedelta(days=1),
    )


@pytest.mark.parametrize(
    ("tz", "day", "minutes"),
    [
        ("America/New_York", date(2024, 3, 10), 1380),
        ("America/New_York", date(2024, 11, 3), 1500),
        ("America/New_York", date(2024, 3, 11), 1440),
        ("Australia/Adelaide", date(2024, 4, 7), 1500),  # southern autumn
        ("Pacific/Chatham", date(2024, 9, 29), 1380),  # +12:45 -> +13:45
        ("America/St_Johns", date(2024, 3, 10), 1380),  # -03:30 -> -02:30
    ],
)
def test_day_lengths_around_dst(tz: str, day: date, minutes: int) -> None:
    (bucket,) = days(tz, day, day)
    assert (bucket.local_date, bucket.minutes, bucket.split) == (day, minutes, False)


def test_a_midnight_in_a_gap_starts_the_day_at_the_transition() -> None:
    # Chile's 2024-09-08 began at 00:00 -04 = 04:00Z, when clocks jumped to 01:00 -03.
    start = local_midnight(date(2024, 9, 8), "America/Santiago")
    assert start == datetime(2024, 9, 8, 4, 0, tzinfo=UTC)
    (bucket,) = days("America/Santiago", date(2024, 9, 8), date(2024, 9, 8))
    assert bucket.minutes == 1380


def test_kolkata_day_starts_at_1830_utc_the_day_before() -> None:
    (bucket,) = days("Asia/Kolkata", date(2024, 3, 15), date(2024, 3, 15))
    assert bucket.start == datetime(2024, 3, 14, 18, 30, tzinfo=UTC)


def test_weeks_start_on_monday_and_months_on_the_first() -> None:
    assert label(date(2024, 6, 9), "1w") == date(2024, 6, 3)  # a Sunday
    assert label(date(2024, 6, 10), "1w") == date(2024, 6, 10)
    assert label(date(2024, 2, 29), "1mo") == date(2024, 2, 1)
    assert following(date(2024, 12, 1), "1mo") == date(2025, 1, 1)


def test_periods_merge_repeats_and_start_with_the_default() -> None:
    change = datetime(2024, 6, 10, 14, tzinfo=UTC)
    history = ((DAWN, "Asia/Tokyo"), (change, "Asia/Tokyo"), (LATE, "Europe/Paris"))
    assert [(p.tz, p.start, p.end) for p in periods(history, "UTC", EARLY, LATE)] == [
        ("Asia/Tokyo", EARLY, LATE)
    ]
    later = ((change, "Europe/London"),)
    assert [p.tz for p in periods(later, "America/New_York", EARLY, LATE)] == [
        "America/New_York",
        "Europe/London",
    ]


def test_a_flight_west_gives_a_local_date_twice() -> None:
    """Tokyo -> Los Angeles at 17:00Z on 06-10 (02:00 on 06-11 in Tokyo, 10:00 on 06-10 in
    Los Angeles): Tokyo's 06-11 is cut short, then Los Angeles lives 06-10 from 10:00."""
    change = datetime(2024, 6, 10, 17, tzinfo=UTC)
    zone_periods = periods(((change, "America/Los_Angeles"),), "Asia/Tokyo", EARLY, LATE)
    selected = buckets(
        zone_periods,
        "1d",
        since=datetime(2024, 6, 10, 15, tzinfo=UTC),
        until=datetime(2024, 6, 11, 8, tzinfo=UTC),
    )
    assert [(b.local_date.isoformat(), b.tz, b.minutes, b.split) for b in selected] == [
        ("2024-06-11", "Asia/Tokyo", 120, True),
        ("2024-06-10", "America/Los_Angeles", 840, True),
        ("2024-06-11", "America/Los_Angeles", 1440, False),
    ]


def test_exact_tier_is_the_coarsest_nesting_one() -> None:
    whole_hours = [b.start for b in days("America/New_York", date(2024, 3, 9), date(2024, 3, 11))]
    assert exact_tier(whole_hours) == "1h"
    assert exact_tier([local_midnight(date(2024, 3, 15), "Asia/Kathmandu")]) == "1m"
    assert exact_tier([EARLY, LATE]) == "1d"
    assert exact_tier([EARLY + timedelta(seconds=30)]) == "raw"
    # Kolkata in 1900 kept local mean time (+05:53:20): no rollup nests in its days.
    assert exact_tier([local_midnight(date(1900, 6, 1), "Asia/Kolkata")]) == "raw"


def _rollup_rows(n: int) -> pa.RecordBatch:
    """n one-minute rows of one user and metric from 2024-03-14T12:00Z, values 0..n-1."""
    start = datetime(2024, 3, 14, 12, tzinfo=UTC)
    values = [float(i) for i in range(n)]
    return pa.RecordBatch.from_pydict(
        {
            "user_id": [1] * n,
            "metric": ["steps"] * n,
            "ts": [start + timedelta(minutes=i) for i in range(n)],
            "count": [1] * n,
            "sum": values,
            "min": values,
            "max": values,
            "avg": values,
        },
        schema=ROLLUP,
    )


def test_rebucketing_joins_runs_cut_by_batch_ends() -> None:
    table = BucketTable({1: days("Asia/Kolkata", date(2024, 3, 14), date(2024, 3, 15))})
    rows = _rollup_rows(24 * 60)  # 12:00Z .. 12:00Z: across Kolkata's 18:30Z midnight
    whole = aggregate(iter([rows]), table)
    sliced = aggregate(iter([rows.slice(i, 7) for i in range(0, rows.num_rows, 7)]), table)
    assert whole.equals(sliced)
    assert whole.column("count").to_pylist() == [390, 1050]  # 12:00..18:30Z, then the rest
    assert whole.column("local_date").to_pylist() == [date(2024, 3, 14), date(2024, 3, 15)]
    assert whole.column("max").to_pylist() == [389.0, 1439.0]


def test_rows_outside_every_selected_bucket_are_dropped() -> None:
    table = BucketTable({1: days("Asia/Kolkata", date(2024, 3, 15), date(2024, 3, 15))})
    answer = aggregate(iter([_rollup_rows(24 * 60)]), table)
    assert answer.column("count").to_pylist() == [1050]


def test_tz_and_its_errors_in_query_parameters() -> None:
    def query(**params: str):  # type: ignore[no-untyped-def]
        base = {"user_id": "1", "metric": "steps", "start": "2024-03-15", "end": "2024-03-16"}
        merged = {k: [v] for k, v in {**base, **params}.items()}
        return build_query(merged, SETTINGS, principal=LOCAL_ADMIN)

    assert query().calendar is None and query(resolution="1d").tz == "UTC"
    named = query(resolution="1d", tz="asia/kolkata")
    assert (named.tz, named.calendar) == ("Asia/Kolkata", "1d")
    assert named.start == datetime(2024, 3, 14, 18, 30, tzinfo=UTC)
    local = query(resolution="1d", tz="LOCAL")
    assert (local.local_start, local.local_end) == (date(2024, 3, 15), date(2024, 3, 16))
    assert query(resolution="1w").calendar == "1w"
    assert query(resolution="1h", tz="Asia/Kolkata").calendar is None  # sub-day: UTC buckets
    # A cursor of the UTC answer is not one of the local answer.
    assert query(resolution="1d").fingerprint() == query(resolution="1d", tz="utc").fingerprint()
    assert named.fingerprint() != query(resolution="1d").fingerprint()
    with pytest.raises(InvalidParameter) as caught:
        query(tz="Europe/Atlantis")
    assert caught.value.parameter == "tz"
    with pytest.raises(InvalidParameter) as caught:
        query(tz="local", resolution="1d", end="2024-03-16T00:00:00")
    assert caught.value.parameter == "end"
    with pytest.raises(InvalidParameter) as caught:
        query(tz="local", resolution="raw")
    assert caught.value.parameter == "start"


def test_auto_still_chooses_by_points_per_series() -> None:
    def query(**params: str):  # type: ignore[no-untyped-def]
        base = {"user_id": "1", "metric": "steps", "tz": "Asia/Kolkata"}
        merged = {k: [v] for k, v in {**base, **params}.items()}
        return build_query(merged, SETTINGS, principal=LOCAL_ADMIN)

    year = query(start="2024-01-01", end="2025-01-01")
    assert (year.resolution, year.calendar, year.requested_resolution) == ("1d", "1d", "auto")
    day = query(start="2024-03-15", end="2024-03-16")
    assert (day.resolution, day.calendar) == ("raw", None)  # sub-day answers: UTC instants
    assert day.start == datetime(2024, 3, 14, 18, 30, tzinfo=UTC)  # from Kolkata's midnight


def test_local_dates_reach_the_ends_of_the_span() -> None:
    def query(**params: str):  # type: ignore[no-untyped-def]
        base = {"user_id": "1", "metric": "steps", "resolution": "1mo"}
        merged = {k: [v] for k, v in {**base, **params}.items()}
        return build_query(merged, SETTINGS, principal=LOCAL_ADMIN)

    # As under UTC, end=2200-01-01 (exclusive) is the last end allowed.
    assert query(start="2199-12-01", end="2200-01-01", tz="America/Los_Angeles").calendar
    assert query(start="2199-12-01", end="2200-01-01", tz="local").local_end == date(2200, 1, 1)
    with pytest.raises(InvalidParameter) as caught:
        query(start="2200-01-01", end="2200-01-02", tz="Asia/Tokyo")
    assert caught.value.parameter == "start"
