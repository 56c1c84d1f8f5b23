"""The Host header check: the API answers only the names it is served under.

A DNS-rebinding page makes a browser send requests for a loopback server under the
attacker's name; refusing unknown Host names closes that path, and `Link` headers (built from
the request's Host) only ever carry an allowed name. Runs before routing, for every path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from api.errors import to_http
from engine.errors import InvalidParameter

ASGIApp = Callable[..., Any]


def host_name(header: str) -> str:
    """'Example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def wrap(app: ASGIApp, allowed: Iterable[str]) -> ASGIApp:
    names = frozenset(allowed)
    if "*" in names:
        return app

    async def checked(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"host", b"").decode("latin-1")
        if host_name(given) in names:
            await app(scope, receive, send)
            return
        error = to_http(
            InvalidParameter(
                "Host",
                f"Host {given!r} is not a name this server answers to; the operator lists "
                "them in STRATUM_ALLOWED_HOSTS",
            )
        )
        body = json.dumps(error.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return checked
