"""HEAD on every GET route (monitors and link checkers probe with it).

Litestar refuses HEAD on a handler that returns a body, so HEAD is answered here, in front of
the app: the request runs as a GET, its status and headers go out, its body does not. Once the
headers are out, the app is told the client left, so a streaming answer stops (and releases
its memory reservation) instead of being computed for nobody.
"""

from __future__ import annotations

from typing import Any

import anyio
from litestar.types import ASGIApp, Message, Receive, Scope, Send

_DISCONNECT: dict[str, Any] = {"type": "http.disconnect"}


def answer_head(app: ASGIApp) -> ASGIApp:
    async def head_as_get(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "HEAD":
            await app(scope, receive, send)
            return
        headers_sent = anyio.Event()

        async def headers_only(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
            elif not headers_sent.is_set():
                headers_sent.set()
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def receive_until_answered() -> Any:
            if headers_sent.is_set():
                return _DISCONNECT
            received: Any = _DISCONNECT
            async with anyio.create_task_group() as group:

                async def from_client() -> None:
                    nonlocal received
                    received = await receive()
                    group.cancel_scope.cancel()

                async def until_answered() -> None:
                    await headers_sent.wait()
                    group.cancel_scope.cancel()

                group.start_soon(from_client)
                group.start_soon(until_answered)
            return received

        await app({**scope, "method": "GET"}, receive_until_answered, headers_only)  # type: ignore[arg-type]

    return head_as_get
