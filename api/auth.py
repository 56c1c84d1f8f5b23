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

from api.explorer import UNAUTHENTICATED_PATHS
from engine.access import LOCAL_ADMIN, Principal
from engine.errors import Unauthenticated

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
