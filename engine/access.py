"""Who is asking: the Principal a query carries, and keys checked against the warm store.

A key is a random 256-bit secret shown once; the warm store keeps only its SHA-256 (a fast
hash is right for random secrets: there is no dictionary to try). The scope is read at each
request, so a revoked or expired key, or a participant removed from a cohort, stops working
at once. A leaf of `engine` (the write side, sync/access.py, shares hash_key).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg

from engine.errors import Forbidden, InvalidParameter, Unauthenticated

KEY_PREFIX = "stratum_"


@dataclass(frozen=True)
class Principal:
    """A key's name and scope. `users`/`metrics` None: all of them."""

    name: str
    admin: bool
    users: frozenset[int] | None
    metrics: frozenset[str] | None

    def sees_user(self, user_id: int) -> bool:
        return self.users is None or user_id in self.users

    def sees_metric(self, metric: str) -> bool:
        return self.metrics is None or metric in self.metrics

    def require(self, users: Iterable[int], metrics: Iterable[str]) -> None:
        """Forbidden unless every user and metric is in scope. The message names what was
        asked and says only that it is outside the key's scope: the same answer whether the
        participant exists or not."""
        outside_users = sorted(u for u in users if not self.sees_user(u))
        if outside_users:
            raise Forbidden(
                f"participant {outside_users[0]} is outside the cohorts of key {self.name!r}",
                parameter="user_id",
            )
        outside_metrics = sorted(m for m in metrics if not self.sees_metric(m))
        if outside_metrics:
            raise Forbidden(
                f"metric {outside_metrics[0]!r} is outside the metrics of key {self.name!r}",
                parameter="metric",
            )

    def require_admin(self, what: str) -> None:
        if not self.admin:
            raise Forbidden(f"{what} needs an admin key; key {self.name!r} is not one")


# The CLI on the server's own machine: it has the database's credentials anyway.
LOCAL_ADMIN = Principal(name="local", admin=True, users=None, metrics=None)


def new_key_text() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 256 random bits


def hash_key(key_text: str) -> bytes:
    return hashlib.sha256(key_text.encode()).digest()


# A key's principal in one statement: for a key of cohorts, its participants come along as an
# array (a second round trip per request otherwise). Admin keys see everyone: no array.
_MEMBERS_OF = "SELECT DISTINCT user_id FROM cohort_members WHERE cohort = ANY({})"
_MEMBERS = _MEMBERS_OF.format("%s")  # a cohort's participants, as a key of it sees them
_PRINCIPAL = (
    "name, admin, metrics, CASE WHEN admin THEN NULL ELSE "
    f"ARRAY({_MEMBERS_OF.format('k.cohorts')}) END"
)
_LIVE = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
_KEY = f"SELECT {_PRINCIPAL} FROM api_keys k WHERE key_hash = %s AND {_LIVE}"  # noqa: S608
_LIVE_KEYS = f"SELECT key_hash, {_PRINCIPAL} FROM api_keys k WHERE {_LIVE}"  # noqa: S608


def _principal(
    name: str, admin: bool, metrics: list[str] | None, users: list[int] | None
) -> Principal:
    return Principal(
        name=name,
        admin=admin,
        users=None if admin else frozenset(users or ()),
        metrics=None if metrics is None else frozenset(metrics),
    )


def cohort_principal(conn: psycopg.Connection, cohort: str) -> Principal:
    """The scope of a cohort-wide job: the cohort's members as they are now, every metric.
    InvalidParameter for an unknown or empty cohort."""
    if conn.execute("SELECT 1 FROM cohorts WHERE name = %s", (cohort,)).fetchone() is None:
        raise InvalidParameter("cohort", f"no cohort named {cohort!r}; see `stratum cohort list`")
    users = frozenset(r[0] for r in conn.execute(_MEMBERS, ([cohort],)))
    if not users:
        raise InvalidParameter("cohort", f"cohort {cohort!r} has no participants")
    return Principal(name=f"cohort {cohort}", admin=False, users=users, metrics=None)


def live_principals(conn: psycopg.Connection) -> dict[bytes, Principal]:
    """Every live key's principal by key hash: what the server falls back on if the warm
    store goes down (loaded at start-up, like the lake coverage)."""
    rows = conn.execute(_LIVE_KEYS).fetchall()
    return {bytes(digest): _principal(*rest) for digest, *rest in rows}


def authenticate(conn: psycopg.Connection, key_text: str) -> Principal:
    """The principal of a live key; Unauthenticated for an unknown, expired or revoked one
    (one message for all three: which of them it is helps only a guesser)."""
    row = conn.execute(_KEY, (hash_key(key_text),)).fetchone()
    if row is None:
        raise Unauthenticated(
            "the key is not valid (unknown, expired or revoked); send Authorization: "
            "Bearer <key> with a live key"
        )
    return _principal(*row)


_NEW_SECRET = (
    "INSERT INTO server_secrets (name, secret) VALUES ('cursor', %s) ON CONFLICT DO NOTHING"
)
_SECRET = "SELECT secret FROM server_secrets WHERE name = 'cursor'"


def cursor_secret(conn: psycopg.Connection) -> bytes:
    """The HMAC key of cursors, made on first use. Kept in the warm store so every server
    process over it accepts the others' cursors (and a restart keeps them valid)."""
    conn.execute(_NEW_SECRET, (secrets.token_bytes(32),))
    row = conn.execute(_SECRET).fetchone()
    assert row is not None  # inserted just now, or already there
    return bytes(row[0])
