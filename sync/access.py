"""The write side of access control: cohorts, keys and the audit log (`stratum cohort`,
`stratum key`, `stratum audit`). The read side (checking a key) is engine/access.py."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from engine.access import hash_key, new_key_text
from engine.errors import InvalidParameter
from engine.registry import METRICS, metric_names

MAX_USER_ID = 2**31 - 1


def parse_user_ranges(text: str, parameter: str = "--users") -> list[int]:
    """'1-40,52' -> [1, ..., 40, 52]."""
    users: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low_text, _, high_text = part.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if high_text else low
        except ValueError:
            raise InvalidParameter(
                parameter, f"{part!r} is not a participant id or a range like 1-40"
            ) from None
        if not 0 <= low <= high <= MAX_USER_ID:
            raise InvalidParameter(
                parameter, f"{part!r}: ids are 0..{MAX_USER_ID} and a range runs low-high"
            )
        if high - low >= 1_000_000:
            raise InvalidParameter(parameter, f"{part!r}: at most 1,000,000 ids per range")
        users.update(range(low, high + 1))
    if not users:
        raise InvalidParameter(parameter, "no participant ids given, e.g. --users 1-40,52")
    return sorted(users)


def _check_name(name: str, what: str) -> None:
    if not name or len(name) > 100 or not name.replace("-", "").replace("_", "").isalnum():
        raise InvalidParameter(what, f"{name!r}: a name is 1-100 letters, digits, '-' or '_'")


# -- cohorts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CohortInfo:
    name: str
    members: int
    first_user: int | None
    last_user: int | None


def _cohort_exists(conn: psycopg.Connection, name: str) -> None:
    if conn.execute("SELECT 1 FROM cohorts WHERE name = %s", (name,)).fetchone() is None:
        raise InvalidParameter("cohort", f"no cohort named {name!r}; see `stratum cohort list`")


def create_cohort(url: str, name: str, users: Sequence[int]) -> int:
    _check_name(name, "cohort")
    with psycopg.connect(url) as conn:
        inserted = conn.execute(
            "INSERT INTO cohorts (name) VALUES (%s) ON CONFLICT DO NOTHING", (name,)
        ).rowcount
        if not inserted:
            raise InvalidParameter("cohort", f"cohort {name!r} exists; use `stratum cohort add`")
        return _add(conn, name, users)


def _add(conn: psycopg.Connection, name: str, users: Iterable[int]) -> int:
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO cohort_members (cohort, user_id) SELECT %s, unnest(%s::integer[]) "
            "ON CONFLICT DO NOTHING",
            (name, list(users)),
        )
        return cur.rowcount


def add_members(url: str, name: str, users: Sequence[int]) -> int:
    with psycopg.connect(url) as conn:
        _cohort_exists(conn, name)
        return _add(conn, name, users)


def remove_members(url: str, name: str, users: Sequence[int]) -> int:
    with psycopg.connect(url) as conn:
        _cohort_exists(conn, name)
        return conn.execute(
            "DELETE FROM cohort_members WHERE cohort = %s AND user_id = ANY(%s)",
            (name, list(users)),
        ).rowcount


def list_cohorts(url: str) -> list[CohortInfo]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.name, count(m.user_id), min(m.user_id), max(m.user_id) FROM cohorts c "
            "LEFT JOIN cohort_members m ON m.cohort = c.name GROUP BY c.name ORDER BY c.name"
        ).fetchall()
    return [CohortInfo(*row) for row in rows]


# -- keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    name: str
    admin: bool
    cohorts: list[str]
    metrics: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def create_key(
    url: str,
    name: str,
    *,
    admin: bool,
    cohorts: Sequence[str],
    metrics: Sequence[str] | None,
    expires_in: timedelta | None,
) -> str:
    """A new key's text: returned once, stored only as its hash."""
    _check_name(name, "name")
    if admin == bool(cohorts):
        raise InvalidParameter("cohort", "a key is either --admin or scoped to --cohort C ...")
    unknown = sorted(set(metrics or ()) - set(METRICS))
    if unknown:
        raise InvalidParameter(
            "metrics", f"unknown metric {unknown[0]!r}; valid: {', '.join(metric_names())}"
        )
    key_text = new_key_text()
    with psycopg.connect(url) as conn:
        for cohort in cohorts:
            _cohort_exists(conn, cohort)
        inserted = conn.execute(
            "INSERT INTO api_keys (name, key_hash, admin, cohorts, metrics, expires_at) "
            "VALUES (%s, %s, %s, %s, %s, now() + %s) ON CONFLICT (name) DO NOTHING",
            (
                name,
                hash_key(key_text),
                admin,
                sorted(set(cohorts)),
                None if metrics is None else sorted(set(metrics)),
                expires_in,
            ),
        ).rowcount
        if not inserted:
            raise InvalidParameter("name", f"a key named {name!r} exists; pick another name")
    return key_text


def list_keys(url: str) -> list[KeyInfo]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT name, admin, cohorts, metrics, created_at, expires_at, revoked_at "
            "FROM api_keys ORDER BY name"
        ).fetchall()
    return [KeyInfo(*row) for row in rows]


def revoke_key(url: str, name: str) -> bool:
    """True when the key was live; a key already revoked stays revoked at its first time."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT revoked_at FROM api_keys WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise InvalidParameter("name", f"no key named {name!r}; see `stratum key list`")
        return bool(
            conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL",
                (name,),
            ).rowcount
        )


# -- the audit log -------------------------------------------------------------------------

_READ_AUDIT = (
    "SELECT at, key_name, method, path, users, metrics, span_start, span_end, resolution, "
    "format, rows, bytes, status, duration_ms, client FROM access_audit "
    "WHERE (%(key)s::text IS NULL OR key_name = %(key)s) "
    "AND (%(user)s::integer IS NULL OR %(user)s = ANY(users)) "
    "AND (%(since)s::timestamptz IS NULL OR at >= %(since)s) "
    "ORDER BY at DESC, id DESC LIMIT %(limit)s"
)


def read_audit(
    url: str,
    *,
    key_name: str | None = None,
    user_id: int | None = None,
    since: datetime | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """The newest audit rows first, filtered by key, participant and time."""
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            _READ_AUDIT,
            {"key": key_name, "user": user_id, "since": since, "limit": limit},
        )
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def prune_audit(url: str, retention: timedelta) -> int:
    """Drop audit rows older than the retention; the count dropped."""
    with psycopg.connect(url) as conn:
        return conn.execute("DELETE FROM access_audit WHERE at < now() - %s", (retention,)).rowcount
