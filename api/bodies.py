"""Response bodies that hold resources (memory reservations, DuckDB and warm-store cursors)
are closed when the request ends, whatever way it ends.

Litestar's Stream does not close its iterator when a send fails or the client disconnects
(it cancels the send loop and drops the iterator), so an async generator's `finally` would
run only when the garbage collector finds it, and the memory reservation it releases would
stay taken until then. Handlers register such bodies (anything with `aclose`: an async
generator, a ChunkPump) in the request's scope; the wrapper around the whole app closes
each one when the app returns.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

import anyio
from litestar.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)

_BODIES = "stratum.bodies"


class Closable(Protocol):
    def aclose(self) -> Awaitable[None]: ...


B = TypeVar("B", bound=Closable)


def register(scope: Any, body: B) -> B:
    """Have `body` closed when this request ends; returns it."""
    scope.setdefault(_BODIES, []).append(body)
    return body


def wrap(app: ASGIApp) -> ASGIApp:
    async def closing_bodies(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        finally:
            bodies: list[Closable] = scope.pop(_BODIES, [])  # type: ignore[misc]
            with anyio.CancelScope(shield=True):
                for body in bodies:
                    try:
                        await body.aclose()
                    except Exception:  # a failing close must not stop the others'
                        log.exception("closing a response body failed")

    return closing_bodies
