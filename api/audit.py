"""The access log at the HTTP edge: an ASGI wrapper that records every request to a
route that needs a key, when the response ends however it ends (answered, refused, failed,
or cut off by the client), with what the handlers noted about the query.

Handlers note the query through `note(request, ...)`; rows are counted as they are rendered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
from litestar import Request

from engine.access import Principal
from engine.audit import AuditEntry
from engine.query import DataQuery

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[..., Any]

SCOPE_KEY = "stratum.audit"
UNAUDITED = ("/health", "/ready", "/")  # no key needed, no data
CLIENT_CLOSED = 499  # nginx's code: the client went away before the answer was whole


def _audited(scope: Scope) -> bool:
    path = str(scope.get("path", ""))
    # The OpenAPI description and the explorer page's files: no key needed, no data.
    return path not in UNAUDITED and not path.startswith(("/schema", "/explorer/"))


def entry_of(request: Request[Any, Any, Any]) -> AuditEntry | None:
    found = request.scope.get(SCOPE_KEY)
    return found if isinstance(found, AuditEntry) else None


def note_query(request: Request[Any, Any, Any], query: DataQuery, format_name: str) -> None:
    entry = entry_of(request)
    if entry is not None:
        entry.users, entry.metrics = query.users, query.metrics
        entry.span_start, entry.span_end = query.start, query.end
        # A calendar answer names its bucket and zone: "1d tz=local".
        zone = "" if query.tz == "UTC" else f" tz={query.tz}"
        entry.resolution, entry.format = query.answer_resolution + zone, format_name


def add_rows(request: Request[Any, Any, Any], rows: int) -> None:
    entry = entry_of(request)
    if entry is not None:
        entry.rows = (entry.rows or 0) + rows


def wrap(app: ASGIApp, record: Callable[[AuditEntry], object]) -> ASGIApp:
    """An ASGI app that records each audited request of `app` with `record` (blocking: it
    runs in a worker thread, shielded, so a client that goes away does not skip it)."""

    async def audited(scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or not _audited(scope):
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        client = scope.get("client")
        entry = AuditEntry(
            key_name="-",
            method=str(scope.get("method", "GET")),
            path=str(scope.get("path", "")),
            client=None if not client else str(client[0]),
        )
        scope[SCOPE_KEY] = entry

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                entry.status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body":  # counted once it has left
                entry.bytes += len(message.get("body", b""))

        try:
            await app(scope, receive, counting_send)
        except BaseException as exc:
            if entry.status < 400:  # the headers said 200, the body is short
                gone = isinstance(exc, (anyio.get_cancelled_exc_class(), OSError))
                entry.status = CLIENT_CLOSED if gone else 500
            raise
        finally:
            user = scope.get("user")
            if isinstance(user, Principal):
                entry.key_name = user.name
            entry.duration_ms = (time.perf_counter() - started) * 1e3
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(record, entry)

    return audited
