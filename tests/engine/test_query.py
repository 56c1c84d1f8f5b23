"""Request validation: every bad parameter is named with what is allowed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.access import LOCAL_ADMIN
from engine.errors import InvalidParameter
from engine.query import Key, build_query, decode_cursor
from engine.settings import QuerySettings

SETTINGS = QuerySettings(max_points=5000, default_page_size=100, max_page_size=1000, max_users=3)
GOOD = {
    "user_id": ["1,2"],
    "metric": ["heart_rate"],
    "start": ["2024-01-01"],
    "end": ["2024-01-02"],
}


def build(**changes: list[str]):  # type: ignore[no-untyped-def]
    params = {**GOOD, **changes}
    return build_query({k: v for k, v in params.items() if v}, SETTINGS, principal=LOCAL_ADMIN)


def test_defaults_and_normalisation() -> None:
    q = build(
        user_id=["2", "1,2"], metric=["steps,heart_rate"], start=["2024-01-01T01:00:00+01:00"]
    )
    assert q.users == (1, 2) and q.metrics == ("heart_rate", "steps")
    assert q.start == datetime(2024, 1, 1, tzinfo=UTC)
    assert q.resolution == "1m" and q.requested_resolution == "auto"
    assert (q.page_size, q.page_number, q.offset) == (100, 1, 0)


@pytest.mark.parametrize(
    ("changes", "parameter", "fragment"),
    [
        ({"user_id": []}, "user_id", "required"),
        ({"user_id": ["x"]}, "user_id", "not an integer"),
        ({"user_id": ["1,2,3,4"]}, "user_id", "at most 3"),
        ({"metric": []}, "metric", "required"),
        ({"metric": ["pulse"]}, "metric", "valid: heart_rate"),
        ({"start": []}, "start", "required"),
        ({"end": ["tomorrow"]}, "end", "ISO 8601"),
        ({"end": ["2024-01-01"]}, "end", "must be after start"),
        ({"resolution": ["5m"]}, "resolution", "auto, raw, 1m, 1h, 1d"),
        ({"max_points": ["0"]}, "max_points", "out of range"),
        ({"page_size": ["1001"]}, "page_size", "0..1000"),
        ({"page_number": ["0"]}, "page_number", "out of range"),
        ({"page_size": ["0"], "page_number": ["2"]}, "page_number", "no pages"),
        ({"cursor": ["%%%"]}, "cursor", "malformed"),
    ],
)
def test_invalid_parameters(changes: dict, parameter: str, fragment: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        build(**changes)
    assert caught.value.parameter == parameter
    assert fragment in caught.value.message


def test_cursor_round_trip_and_binding() -> None:
    q = build()
    key = Key(1, "heart_rate", 1_704_067_200_000_123)  # inside the span
    cursor = q.cursor_after(key)
    assert decode_cursor(cursor, q) == key
    assert build(cursor=[cursor]).after == key
    with pytest.raises(InvalidParameter, match="different query"):
        build(metric=["steps"], cursor=[cursor])
    with pytest.raises(InvalidParameter, match="not both"):
        build(cursor=[cursor], page_number=["2"])


def test_start_date_and_end_date_are_days_with_end_date_inclusive() -> None:
    dates = {"start": [], "end": [], "start_date": ["2024-01-01"], "end_date": ["2024-01-02"]}
    q = build(**dates)
    assert q.start == datetime(2024, 1, 1, tzinfo=UTC)
    assert q.end == datetime(2024, 1, 3, tzinfo=UTC)  # through the end of Jan 2
    assert q.fingerprint() == build(end=["2024-01-03"]).fingerprint()  # the same answer
    one_day = build(start=[], end=[], start_date=["2024-01-05"], end_date=["2024-01-05"])
    assert (one_day.start, one_day.end) == (
        datetime(2024, 1, 5, tzinfo=UTC),
        datetime(2024, 1, 6, tzinfo=UTC),
    )
    mixed = build(end=[], end_date=["2024-01-01"])  # start 2024-01-01 + end_date: one day
    assert mixed.end == datetime(2024, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("changes", "parameter", "fragment"),
    [
        ({"start_date": ["2024-01-01"]}, "start_date", "start and start_date both"),
        ({"end_date": ["2024-01-01"]}, "end_date", "end and end_date both"),
        ({"end": [], "end_date": ["2024-01-02T12:00:00Z"]}, "end_date", "use end"),
        ({"start": [], "start_date": ["2024-01-01 06:00"]}, "start_date", "is a date-time"),
        ({"start": [], "start_date": ["Jan 1"]}, "start_date", "is not a date"),
        ({"start": [], "end": []}, "start", "or start_date"),
        ({"page": ["2"]}, "page", "page_number?"),
        ({"format": ["csv"]}, "format", "valid: user_id, metric, start, end, start_date"),
    ],
)
def test_span_aliases_and_unknown_parameters_are_refused_by_name(
    changes: dict, parameter: str, fragment: str
) -> None:
    with pytest.raises(InvalidParameter) as caught:
        build(**changes)
    assert caught.value.parameter == parameter
    assert fragment in caught.value.message


def test_a_caller_may_allow_parameters_it_reads_itself() -> None:
    params = {**GOOD, "format": ["csv"]}
    assert build_query(params, SETTINGS, principal=LOCAL_ADMIN, also_allowed=("format",)).users == (
        1,
        2,
    )


def test_cursor_tags_are_keyed_by_the_secret_and_the_principal() -> None:
    from dataclasses import replace

    from engine.access import Principal

    key = Key(1, "heart_rate", 1_704_067_200_000_123)  # inside the span
    signed = replace(build(), cursor_secret=b"s" * 32)
    cursor = signed.cursor_after(key)
    assert decode_cursor(cursor, signed) == key
    for other in (
        replace(signed, cursor_secret=b"t" * 32),  # another server secret (or none)
        replace(signed, cursor_secret=b""),
        replace(signed, principal=Principal("someone", True, None, None)),  # another key
    ):
        with pytest.raises(InvalidParameter, match="another key"):
            decode_cursor(cursor, other)
