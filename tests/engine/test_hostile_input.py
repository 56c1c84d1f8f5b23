"""Extreme dates, numbers and forged cursors: build_query refuses them by name (a 400), and
whatever it accepts can be planned and paged without an exception (never a 500)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.access import LOCAL_ADMIN
from engine.catalog import Catalog, Coverage
from engine.errors import InvalidParameter
from engine.planner import plan
from engine.query import MAX_INSTANT, MIN_INSTANT, Key, build_query, decode_cursor, to_us
from engine.settings import QuerySettings
from engine.tiers import LAKE_TABLES

SETTINGS = QuerySettings(max_points=5000, default_page_size=100, max_page_size=1000, max_users=3)
GOOD = {
    "user_id": ["1"],
    "metric": ["heart_rate"],
    "start": ["2024-01-01"],
    "end": ["2024-01-02"],
}


def build(**changes: list[str]):  # type: ignore[no-untyped-def]
    return build_query({**GOOD, **changes}, SETTINGS, principal=LOCAL_ADMIN)


def forged(payload: Any) -> str:
    """A cursor carrying `payload`, as an attacker would write one."""
    raw = json.dumps(payload, separators=(",", ":"), allow_nan=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def forged_key(**fields: Any) -> str:
    """A cursor with the right fingerprint and one field replaced."""
    payload = {"f": build().fingerprint(), "u": 1, "m": "heart_rate", "t": to_us(build().start)}
    return forged({**payload, **fields})


def nested(depth: int) -> str:
    raw = ("[" * depth + "]" * depth).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _catalog(lake_days: Coverage | None = None) -> Catalog:
    return Catalog(
        lake_days=dict.fromkeys(LAKE_TABLES, lake_days or Coverage()),
        unsynced=Coverage(),
        stale_rollups=Coverage(),
        lake_versions=dict.fromkeys(LAKE_TABLES, 1),
        list_files=lambda *args: (),
    )


HOSTILE = [
    ("end in year 9999", {"end": ["9999-12-31T23:59:59Z"]}, "end"),
    ("start in year 1 east of UTC", {"start": ["0001-01-01T00:00:00+01:00"]}, "start"),
    ("start in year 1", {"start": ["0001-01-01"]}, "start"),
    ("end_date 9999-12-31", {"end": [], "end_date": ["9999-12-31"]}, "end_date"),
    ("cursor t=1e400", {"cursor": [forged_key(t=float("inf"))]}, "cursor"),
    ("cursor nested 3000 deep", {"cursor": [nested(3000)]}, "cursor"),
    ("cursor u=2**63", {"cursor": [forged_key(u=2**63)]}, "cursor"),
    ("cursor t=10**30", {"cursor": [forged_key(t=10**30)]}, "cursor"),
    ("cursor NUL in m", {"cursor": [forged_key(m="heart_rate\x00")]}, "cursor"),
    ("cursor lone surrogate in m", {"cursor": [forged_key(m="\ud800")]}, "cursor"),
    ("cursor m not a metric", {"cursor": [forged_key(m="steps")]}, "cursor"),
    ("cursor u not asked for", {"cursor": [forged_key(u=2)]}, "cursor"),
    ("cursor u a boolean", {"cursor": [forged_key(u=True)]}, "cursor"),
    ("cursor t a float", {"cursor": [forged_key(t=1.5)]}, "cursor"),
    ("cursor t a string", {"cursor": [forged_key(t="1")]}, "cursor"),
    ("cursor a list", {"cursor": [forged([1, 2, 3])]}, "cursor"),
    ("cursor very long", {"cursor": ["A" * 5_000]}, "cursor"),
    ("cursor with a 600-digit number", {"cursor": [forged_key(t=10**600)]}, "cursor"),
]


@pytest.mark.parametrize(
    ("changes", "parameter"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_values_are_refused_by_name(changes: dict, parameter: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        build(**changes)
    assert caught.value.parameter == parameter


def test_the_widest_span_allowed_plans() -> None:
    query = build(start=[MIN_INSTANT.isoformat()], end=[MAX_INSTANT.isoformat()])
    assert (query.start, query.end) == (MIN_INSTANT, MAX_INSTANT)
    whole = Coverage({1: ((MIN_INSTANT.date(), MAX_INSTANT.date()),)})
    assert plan(query, _catalog(whole)).segments
    cursor = query.cursor_after(Key(1, "heart_rate", to_us(MAX_INSTANT) - 1))
    assert decode_cursor(cursor, query).ts_us == to_us(MAX_INSTANT) - 1


def test_a_cursor_at_the_span_edges_is_accepted_and_past_them_refused() -> None:
    query = build()
    for ts_us in (to_us(query.start) - 1, to_us(query.end)):
        with pytest.raises(InvalidParameter, match="cursor"):
            decode_cursor(query.cursor_after(Key(1, "heart_rate", ts_us)), query)
    last = query.cursor_after(Key(1, "heart_rate", to_us(query.end) - 1))
    assert decode_cursor(last, query).ts_us == to_us(query.end) - 1


# -- property: whatever the text, a 400 or a query that plans --------------------------------

_ZONES = st.one_of(
    st.none(),
    st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23)).map(
        timezone
    ),
)
# Edges drawn as often as everything else: plain strategies rarely reach them.
_EDGE_INSTANTS = st.sampled_from(
    [
        "0001-01-01T00:00:00+01:00",
        "0001-01-01",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-23:59",
        "9999-12-31",
        "1899-12-31T23:59:59.999999Z",
        "2200-01-01T00:00:00.000001Z",
    ]
)
_INSTANTS = _EDGE_INSTANTS | st.datetimes(timezones=_ZONES).map(lambda d: d.isoformat())
_DATES = st.sampled_from(["0001-01-01", "9999-12-31", "2199-12-31"]) | st.dates().map(
    date.isoformat
)
_NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["1e400", "NaN", "-0", "1_0", "\u0661", "\uff11", " 7 ", "0x10", "9" * 5000]),
)
_EDGE_JSON = st.sampled_from(
    [2**63, -(2**63) - 1, 10**30, float("inf"), float("nan"), 1.5, True, "\x00", "\ud800", ""]
)
_JSON = _EDGE_JSON | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


@st.composite
def _cursors(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["payload", "key", "text", "nested"]))
    if kind == "text":
        return draw(st.text())
    if kind == "nested":
        return nested(draw(st.integers(min_value=1, max_value=3000)))
    if kind == "payload":
        return forged(draw(_JSON))
    field = draw(st.sampled_from(["u", "m", "t"]))
    return forged_key(**{field: draw(_JSON)})


HOSTILE_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.lists(_NUMBERS, min_size=1, max_size=2),
        "start": st.lists(_INSTANTS | _DATES | st.text(), min_size=1, max_size=1),
        "end": st.lists(_INSTANTS | _DATES | st.text(), min_size=1, max_size=1),
        "start_date": st.lists(_DATES, min_size=1, max_size=1),
        "end_date": st.lists(_DATES, min_size=1, max_size=1),
        "resolution": st.lists(st.sampled_from(["auto", "raw", "1m", "1h", "1d"]), min_size=1),
        "max_points": st.lists(_NUMBERS, min_size=1, max_size=1),
        "page_size": st.lists(_NUMBERS, min_size=1, max_size=1),
        "page_number": st.lists(_NUMBERS, min_size=1, max_size=1),
        "cursor": st.lists(_cursors(), min_size=1, max_size=1),
    },
)


@st.composite
def one_hostile_value(draw: st.DrawFn) -> dict[str, list[str]]:
    """GOOD with one parameter made extreme, so no other parameter is refused first."""
    name = draw(
        st.sampled_from(
            ["start", "end", "start_date", "end_date", "user_id", "max_points", "cursor"]
        )
    )
    params = dict(GOOD)
    if name.endswith("_date"):
        del params[name.removesuffix("_date")]
        value = draw(_DATES)
    elif name in ("start", "end"):
        value = draw(_INSTANTS | _DATES)
    elif name == "cursor":
        value = draw(_cursors())
    else:
        value = draw(_NUMBERS)
    return {**params, name: [value]}


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(one_hostile_value())
def test_one_extreme_value_gives_a_named_refusal_or_a_plannable_query(
    params: dict[str, list[str]],
) -> None:
    refused_or_plannable(params)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(HOSTILE_PARAMS)
def test_any_parameters_give_a_named_refusal_or_a_plannable_query(
    params: dict[str, list[str]],
) -> None:
    refused_or_plannable({"metric": ["heart_rate"], "user_id": ["1"], **params})


def refused_or_plannable(params: dict[str, list[str]]) -> None:
    try:
        query = build_query(params, SETTINGS, principal=LOCAL_ADMIN)
    except InvalidParameter as refused:
        assert refused.parameter in params or refused.parameter in ("start", "end")
        return
    assert MIN_INSTANT <= query.start < query.end <= MAX_INSTANT
    first, last = query.days
    lake = Coverage(dict.fromkeys(query.users, ((first, last),)))
    for catalog in (_catalog(), _catalog(lake)):
        assert plan(query, catalog).segments
    assert query.offset >= 0 and query.fingerprint()
    assert datetime.fromisoformat(query.end.isoformat()).tzinfo is not None
    assert query.end.tzinfo == UTC
