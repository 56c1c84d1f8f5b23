"""Time zones: IANA names checked against zoneinfo, and each participant's zone history.

A participant's history is a list of (valid_from, tz): from `valid_from` on, their calendar
is `tz`'s, until the next entry. Before the first entry the default zone
(STRATUM_DEFAULT_TZ) applies. Names are only ever compared with zoneinfo's own list, never
put into SQL text (they travel as bound parameters).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, available_timezones

import psycopg

from engine.errors import InvalidParameter

# The start of every history: `stratum tz set` without --from sets the zone from here.
DAWN = datetime(1900, 1, 1, tzinfo=UTC)

# A history as read: (valid_from, tz) sorted by valid_from.
History = tuple[tuple[datetime, str], ...]


@functools.cache
def _names() -> dict[str, str]:
    """Lower-cased IANA name -> its canonical spelling (zoneinfo keys are case-sensitive)."""
    return {name.lower(): name for name in available_timezones() | {"UTC"}}


def zone_name(parameter: str, text: str) -> str:
    """The canonical IANA name for `text`, or InvalidParameter naming `parameter`."""
    name = _names().get(text.strip().lower()) if isinstance(text, str) else None
    if name is None:
        raise InvalidParameter(
            parameter,
            f"{parameter}={text!r} is not an IANA time zone; e.g. UTC, Europe/Berlin, "
            "Asia/Kolkata, America/New_York (the names zoneinfo knows)",
        )
    return name


@functools.cache
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@dataclass(frozen=True)
class Period:
    """[start, end) UTC in one zone."""

    start: datetime
    end: datetime
    tz: str


def periods(history: History, default_tz: str, start: datetime, end: datetime) -> list[Period]:
    """The zones of [start, end), in order; consecutive entries of one zone are one period."""
    changes: list[tuple[datetime, str]] = [(DAWN.replace(year=1), default_tz), *history]
    out: list[Period] = []
    for i, (valid_from, tz) in enumerate(changes):
        until = changes[i + 1][0] if i + 1 < len(changes) else end
        lo, hi = max(valid_from, start), min(until, end)
        if lo >= hi:
            continue
        if out and out[-1].tz == tz and out[-1].end == lo:
            out[-1] = Period(out[-1].start, hi, tz)
        else:
            out.append(Period(lo, hi, tz))
    return out


_HISTORY = (
    "SELECT user_id, valid_from, tz FROM tz_history WHERE user_id = ANY(%(users)s) "
    "ORDER BY user_id, valid_from"
)
_ALL_HISTORY = "SELECT user_id, valid_from, tz FROM tz_history ORDER BY user_id, valid_from"


def read_histories(
    conn: psycopg.Connection, users: Sequence[int] | None = None
) -> dict[int, History]:
    """Zone histories of `users` (None: everyone who has one)."""
    rows = (
        conn.execute(_ALL_HISTORY)
        if users is None
        else conn.execute(_HISTORY, {"users": list(users)})
    )
    return group(rows)


def group(rows: Iterable[tuple[int, datetime, str]]) -> dict[int, History]:
    histories: dict[int, list[tuple[datetime, str]]] = {}
    for user_id, valid_from, tz in rows:
        histories.setdefault(int(user_id), []).append((valid_from.astimezone(UTC), str(tz)))
    return {u: tuple(sorted(h)) for u, h in histories.items()}


def describe_histories(histories: Mapping[int, History]) -> list[dict[str, object]]:
    """For /catalog: each participant's changes as ISO text."""
    return [
        {
            "user_id": user_id,
            "history": [{"valid_from": v.isoformat(), "tz": tz} for v, tz in history],
        }
        for user_id, history in sorted(histories.items())
    ]
