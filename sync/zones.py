"""The write side of participants' time zones (`stratum tz set`, `stratum tz load`).

Entries are upserts keyed by (user, valid_from): setting a zone again from the same instant
replaces it. Answers read the history at each request, so an edit applies at once: the
calendar cache (engine/calendarcache.py) holds buckets by their UTC interval, and the
intervals an edit makes are new ones, so nothing needs invalidating here.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from engine.errors import IngestRejected, InvalidParameter
from engine.zones import DAWN, History, group, zone_name

MAX_USER_ID = 2**31 - 1
CSV_COLUMNS = ("user_id", "valid_from", "tz")
_UPSERT = (
    "INSERT INTO tz_history (user_id, valid_from, tz) "
    "SELECT * FROM unnest(%s::int[], %s::timestamptz[], %s::text[]) "
    "ON CONFLICT (user_id, valid_from) DO UPDATE SET tz = EXCLUDED.tz"
)


@dataclass(frozen=True)
class ZoneChange:
    user_id: int
    valid_from: datetime  # UTC
    tz: str  # canonical IANA name


def _instant(text: str) -> datetime:
    """ISO 8601 date or date-time; without an offset, UTC. ValueError otherwise."""
    value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if value < DAWN:
        raise ValueError(text)
    return value


def change(user_id: int, tz: str, valid_from: datetime | None) -> ZoneChange:
    """A checked change; without `valid_from`, the zone holds from the start of the history."""
    if not 0 <= user_id <= MAX_USER_ID:
        raise InvalidParameter("USER", f"participant id {user_id} is outside 0..{MAX_USER_ID}")
    when = DAWN if valid_from is None else valid_from.astimezone(UTC)
    if when < DAWN:
        raise InvalidParameter("--from", f"--from {when.isoformat()} is before {DAWN:%Y-%m-%d}")
    return ZoneChange(user_id, when, zone_name("TZ", tz))


def read_changes(path: Path) -> list[ZoneChange]:
    """A CSV with a header user_id,valid_from,tz (valid_from: ISO 8601; no offset = UTC)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise IngestRejected(str(path), None, f"cannot be read as UTF-8 text: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = tuple(name.strip() for name in (reader.fieldnames or ()))
    if header != CSV_COLUMNS:
        raise IngestRejected(
            str(path), 1, f"the header must be {','.join(CSV_COLUMNS)}, not {','.join(header)}"
        )
    changes = []
    for line, row in enumerate(reader, start=2):
        values = [(row.get(name) or "").strip() for name in CSV_COLUMNS]
        user_text, when_text, tz_text = values
        if not user_text.isascii() or not user_text.isdigit():
            raise IngestRejected(str(path), line, f"user_id {user_text!r} is not an id")
        try:
            when = _instant(when_text)
        except ValueError:
            raise IngestRejected(
                str(path),
                line,
                f"valid_from {when_text!r} is not an ISO 8601 date-time "
                f"from {DAWN:%Y-%m-%d} on (e.g. 2024-06-10T14:00:00Z)",
            ) from None
        try:
            changes.append(change(int(user_text), tz_text, when))
        except InvalidParameter as exc:
            raise IngestRejected(str(path), line, exc.message) from None
    return changes


def record(url: str, changes: Iterable[ZoneChange]) -> int:
    """Upsert the changes in one transaction; the number written."""
    # One row per key, the last given winning (as applying them in order would).
    listed = list({(c.user_id, c.valid_from): c for c in changes}.values())
    if not listed:
        return 0
    with psycopg.connect(url) as conn:
        conn.execute(
            _UPSERT,
            (
                [c.user_id for c in listed],
                [c.valid_from for c in listed],
                [c.tz for c in listed],
            ),
        )
    return len(listed)


def history(url: str, user_id: int) -> History:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT user_id, valid_from, tz FROM tz_history WHERE user_id = %s ORDER BY valid_from",
            (user_id,),
        )
        return group(rows).get(user_id, ())
