"""DataQuery: a validated request. Parsing from strings lives here so HTTP and CLI agree."""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeGuard, cast

from engine.access import Principal
from engine.calendar import CALENDARS, Calendar, local_midnight
from engine.errors import InvalidParameter
from engine.registry import METRICS, metric_names
from engine.resolution import choose_resolution
from engine.settings import QuerySettings
from engine.tiers import RESOLUTIONS, Resolution
from engine.timestamps import midnight
from engine.zones import zone, zone_name

RESOLUTION_CHOICES = ("auto", *RESOLUTIONS, "1w", "1mo")
LOCAL = "local"  # tz=local: each participant's own zone history
MAX_POINTS_LIMIT = 10_000_000
DOWNSAMPLE_CHOICES = ("none", "m4")
MAX_WIDTH = 16_384  # pixel columns of an M4 answer: wider than any screen
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The span a query may cover. Far inside what Python, PostgreSQL, DuckDB and Arrow's
# microseconds can represent, so no bound, day after the last or cursor position overflows.
MIN_INSTANT = datetime(1900, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(2200, 1, 1, tzinfo=UTC)
# A cursor is ~150 characters; a longer one is forged, and is not worth decoding.
MAX_CURSOR_CHARS = 1024
_ASCII_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True, order=True)
class Key:
    """A row's position in the answer's order (user_id, metric, ts in µs since the epoch)."""

    user_id: int
    metric: str
    ts_us: int


@dataclass(frozen=True)
class DataQuery:
    users: tuple[int, ...]  # sorted, unique
    metrics: tuple[str, ...]  # sorted, unique, all in the registry
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    resolution: Resolution  # resolved: `auto` is decided when the query is built
    requested_resolution: str  # what was asked ("auto" or a resolution)
    max_points: int
    page_size: int  # 0: the whole answer
    page_number: int  # 1-based
    principal: Principal  # who asks: the planner refuses what is outside its scope
    after: Key | None = None  # from a cursor: answer rows strictly after this key
    # downsample=m4&width=N on a raw answer: per pixel column (N over [start, end)), each
    # series' first, last, lowest and highest row only (engine/m4.py). None: every row.
    m4_width: int | None = None
    tz: str = "UTC"  # "UTC", "local" (each participant's history) or an IANA name
    # Set when the answer is in calendar buckets: 1w and 1mo, or 1d in a zone other than
    # UTC (`resolution` is then 1d; the tier read is chosen when the zones are known).
    calendar: Calendar | None = None
    # tz=local with dates for start/end: the local dates [first, end) of the buckets; start
    # and end then hold a UTC span a day wider, holding every participant's buckets.
    local_start: date | None = None
    local_end: date | None = None
    # The server's HMAC key for cursors (Engine.cursor_secret()): a cursor is signed over the
    # answer, the principal and the position, so it cannot be forged or used by another key.
    cursor_secret: bytes = field(default=b"", repr=False, compare=False)

    @functools.cached_property  # asked several times per answer (routing, paging, planning)
    def days(self) -> tuple[date, date]:
        """First and last UTC day that [start, end) touches."""
        return self.start.date(), (self.end - timedelta(microseconds=1)).date()

    @property
    def offset(self) -> int:
        """Rows before this page (page_number paging; 0 with a cursor)."""
        return 0 if self.after is not None else (self.page_number - 1) * self.page_size

    @property
    def answer_resolution(self) -> str:
        """What the rows are: a tier's resolution, or the calendar bucket."""
        return self.calendar or self.resolution

    def fingerprint(self) -> str:
        """Identifies the answer a cursor walks through (not the page)."""
        parts: list[Any] = [
            self.users,
            self.metrics,
            to_us(self.start),
            to_us(self.end),
            self.resolution,
            self.m4_width,
        ]
        if self.calendar is not None or self.tz != "UTC":
            local = [d.isoformat() if d else None for d in (self.local_start, self.local_end)]
            parts += [self.tz, self.calendar, *local]
        text = json.dumps(parts)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def cursor_tag(self, key: Key) -> str:
        """HMAC of the answer's fingerprint, the principal's name and the position."""
        text = json.dumps(
            [self.fingerprint(), self.principal.name, key.user_id, key.metric, key.ts_us]
        )
        return hmac.new(self.cursor_secret, text.encode(), hashlib.sha256).hexdigest()[:32]

    def cursor_after(self, key: Key) -> str:
        payload = {"f": self.cursor_tag(key), "u": key.user_id, "m": key.metric, "t": key.ts_us}
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def to_us(ts: datetime) -> int:
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(ts_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=ts_us)


# A time then a space and an offset's digits: the '+' of '+01:00' sent unescaped in a URL,
# which arrives as a space.
_LOST_PLUS = re.compile(r"\d\d:\d\d(:\d\d(\.\d+)?)? \d\d(:?\d\d)?$")


def parse_time(parameter: str, text: str) -> datetime:
    """ISO 8601 date or date-time; without a zone it is taken as UTC."""
    text = text.strip()
    try:
        if len(text) == 10:
            return midnight(date.fromisoformat(text))
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
        instant = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:  # year 1 east of UTC, year 9999 west of it
        raise InvalidParameter(parameter, _out_of_span(parameter, text)) from None
    except ValueError:
        hint = ""
        if _LOST_PLUS.search(text):
            hint = (
                "; a '+' in a URL arrives as a space: write the offset's '+' as %2B "
                "(e.g. 2024-01-01T06:00:00%2B01:00)"
            )
        raise InvalidParameter(
            parameter,
            f"{parameter}={text!r} is not an ISO 8601 date or date-time "
            f"(e.g. 2024-01-01 or 2024-01-01T06:00:00Z){hint}",
        ) from None
    return instant


def _out_of_span(parameter: str, text: str) -> str:
    return (
        f"{parameter}={text!r} is outside the span stratum answers; allowed: "
        f"{MIN_INSTANT:%Y-%m-%d} to {MAX_INSTANT:%Y-%m-%d} (UTC)"
    )


def _within_span(parameter: str, text: str, instant: datetime) -> datetime:
    if not MIN_INSTANT <= instant <= MAX_INSTANT:
        raise InvalidParameter(parameter, _out_of_span(parameter, text))
    return instant


def _int(parameter: str, text: str, minimum: int, maximum: int) -> int:
    # ASCII digits only: Python's int() also takes Arabic-Indic and full-width digits and
    # underscores ("1_0"), which no other client would read as the same id.
    stripped = text.strip() if isinstance(text, str) else ""
    try:
        if not _ASCII_INTEGER.fullmatch(stripped):
            raise ValueError(text)
        value = int(stripped)
    except ValueError:  # also: more digits than int() converts
        raise InvalidParameter(parameter, f"{parameter}={text!r} is not an integer") from None
    if not minimum <= value <= maximum:
        raise InvalidParameter(
            parameter, f"{parameter}={value} is out of range; allowed: {minimum}..{maximum}"
        )
    return value


def _split(values: Iterable[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def parse_users(values: Iterable[str], max_users: int) -> tuple[int, ...]:
    parts = _split(values)
    if not parts:
        raise InvalidParameter("user_id", "user_id is required, e.g. user_id=1&user_id=2 or 1,2")
    users = sorted({_int("user_id", p, 0, 2**31 - 1) for p in parts})
    if len(users) > max_users:
        raise InvalidParameter(
            "user_id", f"{len(users)} participants requested; at most {max_users} per request"
        )
    return tuple(users)


def parse_metrics(values: Iterable[str]) -> tuple[str, ...]:
    names = _split(values)
    if not names:
        raise InvalidParameter("metric", f"metric is required; valid: {', '.join(metric_names())}")
    unknown = sorted({n for n in names if n not in METRICS})
    if unknown:
        raise InvalidParameter(
            "metric",
            f"unknown metric {', '.join(map(repr, unknown))}; valid: {', '.join(metric_names())}",
        )
    return tuple(sorted(set(names)))


def decode_cursor(text: str, query: DataQuery) -> Key:
    malformed = InvalidParameter(
        "cursor", "cursor is malformed; pass back the `next` value of a previous page"
    )
    if len(text) > MAX_CURSOR_CHARS:
        raise malformed
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise malformed from None
    if not isinstance(payload, dict):
        raise malformed
    fingerprint, user_id, metric, ts_us = (payload.get(k) for k in ("f", "u", "m", "t"))
    if not (_is_int(user_id) and isinstance(metric, str) and _is_int(ts_us)):
        raise malformed
    key = Key(user_id, metric, ts_us)
    if not isinstance(fingerprint, str) or not hmac.compare_digest(
        fingerprint.encode(), query.cursor_tag(key).encode()
    ):
        raise InvalidParameter(
            "cursor",
            "cursor belongs to a different query (users, metrics, span or resolution "
            "changed) or another key, or was altered; pass back the `next` value of a "
            "previous page of this query",
        )
    # Only a position inside this query's answer: a forged one would reach SQL as a huge
    # number or a string PostgreSQL cannot hold (NUL, lone surrogates).
    inside = (
        user_id in query.users
        and metric in query.metrics
        and to_us(query.start) <= ts_us < to_us(query.end)
    )
    if not inside:
        raise malformed
    return key


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# Every parameter build_query reads; `start_date`/`end_date` are the original /data
# contract's names for the span (dates; end_date inclusive).
QUERY_PARAMETERS = (
    "user_id",
    "metric",
    "start",
    "end",
    "start_date",
    "end_date",
    "resolution",
    "max_points",
    "page_size",
    "page_number",
    "cursor",
    "downsample",
    "width",
    "tz",
)


def reject_unknown(given: Iterable[str], known: Sequence[str]) -> None:
    """InvalidParameter naming the first parameter not in `known`: a mistyped name (page=2)
    must not be ignored, silently answering something else."""
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    name = unknown[0]
    # page -> page_size, page_number; user -> user_id; fmt -> format
    close = [k for k in known if k.startswith(name) or name.startswith(k)]
    close += [k for k in difflib.get_close_matches(name, known) if k not in close]
    guess = f" (did you mean {' or '.join(close[:3])}?)" if close else ""
    valid = f"valid: {', '.join(known)}" if known else "this endpoint takes no parameters"
    raise InvalidParameter(name, f"unknown parameter {name!r}{guess}; {valid}")


def parse_day(parameter: str, text: str) -> date:
    """A date alone (YYYY-MM-DD): what start_date and end_date take."""
    text = text.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        datetime.fromisoformat(text.replace("z", "Z"))
        kind = "a date-time"
    except ValueError:
        kind = "not a date"
    bound = parameter.removesuffix("_date")
    meaning = "runs through the end of that day" if bound == "end" else "starts at its midnight"
    raise InvalidParameter(
        parameter,
        f"{parameter}={text!r} is {kind}; {parameter} takes a date (YYYY-MM-DD): the span "
        f"{meaning} (UTC); for a time of day use {bound}",
    )


def parse_tz(text: str | None) -> str:
    """UTC (the default), local, or a canonical IANA name."""
    if text is None or text.strip().lower() == "utc":
        return "UTC"
    if text.strip().lower() == LOCAL:
        return LOCAL
    name = zone_name("tz", text)
    return name


@dataclass(frozen=True)
class Bound:
    parameter: str  # the name given (start, end, start_date, end_date)
    text: str
    instant: datetime  # UTC; for a local date under tz=local, a day beyond every zone's
    local_day: date | None = None  # tz=local, a date given: the local date (end: exclusive)


def _instant(parameter: str, text: str, tz: str) -> datetime:
    """A date-time; without an offset it is in `tz` (under tz=local, refused)."""
    stripped = text.strip()
    try:
        naive = datetime.fromisoformat(stripped.replace("z", "Z")).tzinfo is None
    except ValueError:
        naive = False  # parse_time names what is wrong
    if tz == "UTC" or not naive:
        return parse_time(parameter, text)
    if tz == LOCAL:
        raise InvalidParameter(
            parameter,
            f"{parameter}={text!r} has no offset, and under tz=local each participant's clock "
            "differs: give a date (a local date), or a date-time with an offset or Z",
        )
    local = datetime.fromisoformat(stripped).replace(tzinfo=zone(tz))
    return _within_span(parameter, text, local.astimezone(UTC))


def _day_instant(day: date, tz: str, name: str) -> tuple[datetime, date | None]:
    """(UTC instant, local date under tz=local) of a date bound in zone `tz`."""
    if tz == "UTC":
        return midnight(day), None
    if tz == LOCAL:
        # Every zone's midnight of `day` lies within a day of UTC midnight.
        widened = midnight(day) + timedelta(days=-1 if name == "start" else 1)
        return max(MIN_INSTANT, min(MAX_INSTANT, widened)), day
    return local_midnight(day, tz), None


def _bound(one: Callable[[str], str | None], name: str, tz: str = "UTC") -> Bound:
    """The span's start or end: `name` (a date or date-time; end exclusive) or
    `name`_date (a date; end_date through the end of its day). Dates and date-times without
    an offset are in zone `tz`."""
    alias = f"{name}_date"
    text, day_text = one(name), one(alias)
    if text is not None and day_text is not None:
        raise InvalidParameter(
            alias, f"{name} and {alias} both give the span's {name}; pass only one of them"
        )
    if day_text is not None:
        day = parse_day(alias, day_text)
        if not MIN_INSTANT.date() <= day < MAX_INSTANT.date():
            raise InvalidParameter(alias, _out_of_span(alias, day_text))
        day = day + timedelta(days=1) if name == "end" else day
        return Bound(alias, day_text, *_day_instant(day, tz, name))
    if text is None:
        example = "2024-01-01" if name == "start" else "2024-02-01, exclusive"
        raise InvalidParameter(
            name, f"{name} is required (ISO 8601, e.g. {example}; or {alias}, a date)"
        )
    if len(text.strip()) == 10 and tz != "UTC":
        day = parse_day(name, text)
        # As in UTC: `end` (exclusive) may be the last date itself.
        if not MIN_INSTANT.date() <= day <= MAX_INSTANT.date() - timedelta(days=name == "start"):
            raise InvalidParameter(name, _out_of_span(name, text))
        return Bound(name, text, *_day_instant(day, tz, name))
    return Bound(name, text, _within_span(name, text, _instant(name, text, tz)))


def _calendar(requested: str, resolution: Resolution, tz: str) -> Calendar | None:
    if requested in CALENDARS and requested != "1d":
        return cast(Calendar, requested)
    if resolution == "1d" and tz != "UTC":
        return "1d"
    return None


def build_query(
    params: Mapping[str, Sequence[str]],
    settings: QuerySettings,
    *,
    principal: Principal,
    cursor_secret: bytes = b"",
    also_allowed: Sequence[str] = (),
) -> DataQuery:
    """Validate request parameters (each a list of strings, as in a query string).
    `principal`: who asks (every entry point names one: no default can widen a scope).
    `cursor_secret`: the server's cursor key (Engine.cursor_secret()); servers always pass it.
    `also_allowed`: parameters the caller reads itself (the API's `format`)."""
    reject_unknown(params, (*QUERY_PARAMETERS, *also_allowed))

    def one(name: str) -> str | None:
        values = params.get(name) or []
        return values[-1] if values else None

    users = parse_users(params.get("user_id") or [], settings.max_users)
    metrics = parse_metrics(params.get("metric") or [])
    tz = parse_tz(one("tz"))
    first, last = _bound(one, "start", tz), _bound(one, "end", tz)
    start_name, start_text, start = first.parameter, first.text, first.instant
    end_name, end_text, end = last.parameter, last.text, last.instant
    if start >= end or (
        first.local_day is not None
        and last.local_day is not None
        and first.local_day >= last.local_day
    ):
        relation = "on or after" if end_name == "end_date" else "after"
        raise InvalidParameter(
            end_name,
            f"{end_name} ({end_text}) must be {relation} {start_name} ({start_text})",
        )
    requested = (one("resolution") or "auto").lower()
    if requested not in RESOLUTION_CHOICES:
        raise InvalidParameter(
            "resolution", f"resolution={requested!r}; allowed: {', '.join(RESOLUTION_CHOICES)}"
        )
    max_points_text = one("max_points")
    max_points = (
        settings.max_points
        if max_points_text is None
        else _int("max_points", max_points_text, 1, MAX_POINTS_LIMIT)
    )
    resolution = (
        choose_resolution(metrics, start, end, max_points)
        if requested == "auto"
        else cast(Resolution, "1d" if requested in CALENDARS else requested)
    )
    m4_width = _downsampling(one("downsample"), one("width"))
    calendar = _calendar(requested, resolution, tz)
    local_days = (first.local_day, last.local_day)
    if calendar is None and local_days != (None, None):
        raise InvalidParameter(
            first.parameter if first.local_day else last.parameter,
            f"under tz=local, dates select calendar buckets (resolution 1d, 1w or 1mo); a "
            f"{resolution} answer needs start/end as date-times with an offset or Z",
        )
    size_text, number_text, cursor_text = one("page_size"), one("page_number"), one("cursor")
    page_size = (
        settings.default_page_size
        if size_text is None
        else _int("page_size", size_text, 0, settings.max_page_size)
    )
    page_number = 1 if number_text is None else _int("page_number", number_text, 1, 2**31 - 1)
    if page_size == 0 and page_number > 1:
        raise InvalidParameter("page_number", "page_size=0 returns the whole answer: no pages")
    query = DataQuery(
        users=users,
        metrics=metrics,
        start=start,
        end=end,
        resolution=resolution,
        requested_resolution=requested,
        max_points=max_points,
        page_size=page_size,
        page_number=page_number,
        principal=principal,
        cursor_secret=cursor_secret,
        # Rollups are already at most max_points per series: M4 reduces raw answers only.
        m4_width=m4_width if resolution == "raw" else None,
        tz=tz,
        calendar=calendar,
        local_start=first.local_day,
        local_end=last.local_day,
    )
    if cursor_text:
        if number_text is not None:
            raise InvalidParameter("cursor", "use either cursor or page_number, not both")
        query = replace(query, after=decode_cursor(cursor_text, query))
    return query


def _downsampling(downsample_text: str | None, width_text: str | None) -> int | None:
    """The pixel width of an M4 request (downsample=m4&width=N), or None."""
    downsample = (downsample_text or "none").strip().lower()
    if downsample not in DOWNSAMPLE_CHOICES:
        raise InvalidParameter(
            "downsample",
            f"downsample={downsample_text!r}; allowed: {', '.join(DOWNSAMPLE_CHOICES)}",
        )
    if downsample == "none":
        if width_text is not None:
            raise InvalidParameter("width", "width (pixel columns) is used only with downsample=m4")
        return None
    if width_text is None:
        raise InvalidParameter(
            "width",
            f"downsample=m4 needs width: the chart's width in pixel columns (1..{MAX_WIDTH})",
        )
    return _int("width", width_text, 1, MAX_WIDTH)


def describe(query: DataQuery) -> dict[str, Any]:
    """The query as plain data (for logs, /plan and meta)."""
    return {
        "users": list(query.users),
        "metrics": list(query.metrics),
        "start": query.start.isoformat(),
        "end": query.end.isoformat(),
        "resolution": query.answer_resolution,
        "requested_resolution": query.requested_resolution,
        "tz": query.tz,
        "max_points": query.max_points,
        "page_size": query.page_size,
        "page_number": query.page_number,
        "downsample": None if query.m4_width is None else "m4",
        "width": query.m4_width,
    }
