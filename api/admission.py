"""Admission: how many requests one client may have running at once.

One scheme, two holders: each request takes a slot of its client address
(STRATUM_MAX_REQUESTS_PER_CLIENT, whatever its keys) and, with authentication on, one of its
key (STRATUM_MAX_REQUESTS_PER_KEY, wherever it connects from). A request over either limit
is refused at once with 429, the error shape and Retry-After (`client_busy` or `key_busy`);
a slot is held until the response is whole or abandoned, so a stream counts while it runs.
The memory budget (503 `budget_exhausted`) then decides what the admitted requests may hold.
"""

from __future__ import annotations

from typing import Any

from litestar.middleware.base import DefineMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from engine.access import Principal
from engine.errors import ClientBusy, KeyBusy, TooManyRequests


class Slots:
    """Requests running per holder (a key's name, a client address), at most `limit` each.
    Only the event loop touches it: no lock needed."""

    def __init__(self, limit: int, refusal: type[TooManyRequests], what: str, setting: str):
        self.limit = limit
        self.refusal = refusal
        self.what = what
        self.setting = setting
        self.running: dict[str, int] = {}

    def acquire(self, holder: str) -> None:
        held = self.running.get(holder, 0)
        if held >= self.limit:
            raise self.refusal(
                f"{self.what} {holder!r} already has {held} requests running (at most "
                f"{self.limit} at once: {self.setting}); retry when one has finished"
            )
        self.running[holder] = held + 1

    def release(self, holder: str) -> None:
        left = self.running.get(holder, 1) - 1
        if left > 0:
            self.running[holder] = left
        else:
            self.running.pop(holder, None)


def key_slots(limit: int) -> Slots:
    return Slots(limit, KeyBusy, "key", "STRATUM_MAX_REQUESTS_PER_KEY")


def client_slots(limit: int) -> Slots:
    return Slots(limit, ClientBusy, "client address", "STRATUM_MAX_REQUESTS_PER_CLIENT")


def _holders(scope: Scope, service: Any) -> list[tuple[Slots, str]]:
    """The slots this request needs: its client address's, then its key's."""
    needed: list[tuple[Slots, str]] = []
    client = scope.get("client")
    if client:
        needed.append((service.client_slots, str(client[0])))
    user = scope.get("user")
    if isinstance(user, Principal) and service.settings.access.auth:
        needed.append((service.key_slots, user.name))
    return needed


class Admission:
    """After authentication: takes every slot the request needs, or none and refuses it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        taken: list[tuple[Slots, str]] = []
        try:
            for slots, holder in _holders(scope, scope["litestar_app"].state.service):
                slots.acquire(holder)
                taken.append((slots, holder))
            await self.app(scope, receive, send)
        finally:
            for slots, holder in reversed(taken):
                slots.release(holder)


ADMISSION = DefineMiddleware(Admission)
