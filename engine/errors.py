"""One error root for stratum. The API maps these to HTTP once (api/errors.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import TypeVar

_T = TypeVar("_T")


def first_few(items: Sequence[_T], describe: Callable[[_T], str] = str, shown: int = 5) -> str:
    """The first `shown` items described and joined, then "and N more": a refusal names what
    it refuses without growing with it."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(describe(item) for item in items[:shown]) + more


class StratumError(Exception):
    """Base of every error stratum reports to a user. `code` is stable and machine-readable."""

    code = "stratum_error"

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.parameter = parameter


class InvalidParameter(StratumError):
    """A request or command parameter is not acceptable; the message says what is allowed."""

    code = "invalid_parameter"

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message, parameter=parameter)


class IngestRejected(StratumError):
    """An input file was refused whole; nothing of it was written."""

    code = "ingest_rejected"

    def __init__(self, file: str, row: int | None, reason: str) -> None:
        where = f"{file}" if row is None else f"{file}, row {row}"
        super().__init__(f"{where}: {reason}", parameter="file")
        self.file = file
        self.row = row
        self.reason = reason


class Unavailable(StratumError):
    """A resource needed for the answer is busy or down; retrying later may succeed.

    Each kind says how long to wait (`retry_after_s`, the API's Retry-After): the one
    retry policy, decided here and nowhere else.
    """

    code = "unavailable"
    retry_after_s = 5


class BudgetExhausted(Unavailable):
    """Admitting the query would exceed the memory budget."""

    code = "budget_exhausted"
    retry_after_s = 2  # queries hold memory for seconds: room comes back soon


class WarmStoreUnavailable(Unavailable):
    """The warm store (PostgreSQL) cannot be reached and the answer needs it."""

    code = "warm_store_unavailable"
    retry_after_s = 10  # a restart or fail-over takes a while


class WarmStoreBusy(WarmStoreUnavailable):
    """Every warm-store connection is in use by other queries."""

    retry_after_s = 2  # a connection frees up when a query finishes


class SyncFailed(Unavailable):
    """A sync run could not complete (verification mismatch, lock held, ...)."""

    code = "sync_failed"
    retry_after_s = 30  # lake jobs hold their lock for minutes


class ConfigurationError(StratumError):
    """A STRATUM_* setting is malformed."""

    code = "configuration_error"


class Unauthenticated(StratumError):
    """No key, or one that is unknown, expired or revoked (HTTP 401)."""

    code = "unauthenticated"


class Forbidden(StratumError):
    """The key may not see what was asked (HTTP 403). Worded the same whether or not the
    participant exists: a refusal must not reveal who is in the store."""

    code = "forbidden"


class TooManyRequests(StratumError):
    """A client already has its most concurrent requests running (HTTP 429 + Retry-After):
    one key, or one client address, must not take the whole server. The subclasses say
    which limit was hit; `retry_after_s` is the API's Retry-After."""

    code = "too_many_requests"
    retry_after_s = 1  # requests finish in seconds; the client's next one may proceed


class KeyBusy(TooManyRequests):
    """The key already has STRATUM_MAX_REQUESTS_PER_KEY requests running."""

    code = "key_busy"


class ClientBusy(TooManyRequests):
    """The client address already has STRATUM_MAX_REQUESTS_PER_CLIENT requests running."""

    code = "client_busy"


class LakeDamaged(Unavailable):
    """Lake days an answer needs are damaged or lost, and the warm store no longer holds them.

    Never a silently short 200: the request is refused naming the days, until `stratum
    repair` (or a restore from a backup) brings them back.
    """

    code = "lake_damaged"
    retry_after_s = 300  # a repair is an operator's job: minutes at least

    def __init__(
        self, tier: str, days: list[tuple[int, date, date]], reason: str | None = None
    ) -> None:
        shown = first_few(
            days, lambda d: f"user {d[0]} {d[1]}" + ("" if d[2] == d[1] else f"..{d[2]}"), 10
        )
        reason = reason or (
            "is damaged and the warm store no longer holds those days; `stratum repair` "
            "lists what must be restored from a backup"
        )
        super().__init__(f"the lake copy ({tier}) of {shown} {reason}")
        self.tier = tier
        self.days = days
