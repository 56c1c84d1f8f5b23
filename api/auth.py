"""Authentication of API requests: Litestar's authentication middleware with a bearer key.

Every route needs `Authorization: Bearer KEY` except those marked `exclude_from_auth`
(/health, /ready), the OpenAPI description (no data, and Swagger UI must load to let a
key be entered) and the explorer page's files (no data; the page sends the key itself).
The key's principal becomes `request.user`; the engine checks its scope.
"""

from __future__ import annotations

from typing import Any

import anyio
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from api.explorer import UNAUTHENTICATED_PATHS
from engine.access import LOCAL_ADMIN, Principal
from engine.errors import KeyBusy, Unauthenticated

EXCLUDED_PATHS = ["^/schema", *UNAUTHENTICATED_PATHS]
_BEARER = "bearer "


class BearerKeyAuthentication(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
        service = connection.app.state.service
        if not service.settings.access.auth:
            return AuthenticationResult(user=LOCAL_ADMIN, auth=None)
        header = connection.headers.get("authorization") or ""
        if not header.lower().startswith(_BEARER) or not header[len(_BEARER) :].strip():
            raise Unauthenticated(
                "this endpoint needs a key: send Authorization: Bearer <key> "
                "(`stratum key create` makes one)"
            )
        key_text = header[len(_BEARER) :].strip()
        principal = await anyio.to_thread.run_sync(service.engine.authenticate, key_text)
        return AuthenticationResult(user=principal, auth=principal.name)


AUTHENTICATION = DefineMiddleware(BearerKeyAuthentication, exclude=EXCLUDED_PATHS)


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    user = connection.scope.get("user")
    if not isinstance(user, Principal):  # a route excluded from authentication
        raise Unauthenticated("this endpoint needs a key: send Authorization: Bearer <key>")
    return user


def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: the route needs an admin key."""
    principal_of(connection).require_admin(connection.url.path)


class KeySlots:
    """Requests running per key. Only the event loop touches it: no lock needed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running: dict[str, int] = {}

    def acquire(self, name: str) -> None:
        held = self.running.get(name, 0)
        if held >= self.limit:
            raise KeyBusy(
                f"key {name!r} already has {held} requests running (at most {self.limit} "
                "at once: STRATUM_MAX_REQUESTS_PER_KEY); retry when one has finished"
            )
        self.running[name] = held + 1

    def release(self, name: str) -> None:
        left = self.running.get(name, 1) - 1
        if left > 0:
            self.running[name] = left
        else:
            self.running.pop(name, None)


class KeyConcurrencyLimit:
    """After authentication: holds one of the key's slots until the response is whole (or
    abandoned), so a stream counts for as long as it runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        service = scope["litestar_app"].state.service
        if not isinstance(user, Principal) or not service.settings.access.auth:
            await self.app(scope, receive, send)
            return
        slots: KeySlots = service.key_slots
        slots.acquire(user.name)
        try:
            await self.app(scope, receive, send)
        finally:
            slots.release(user.name)


KEY_LIMIT = DefineMiddleware(KeyConcurrencyLimit)
