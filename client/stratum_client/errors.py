"""The one error the client raises: what the server said, or why no answer arrived."""

from __future__ import annotations

import json
from typing import Any


class StratumError(Exception):
    """An error answer of the server (`status`, and its JSON error's `code`, `message`,
    `parameter`), or a request that got no whole answer (`status` None: `connection_failed`,
    `stream_interrupted`)."""

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        parameter: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.parameter = parameter
        self.retry_after_s = retry_after_s
        where = f" [{parameter}]" if parameter else ""
        super().__init__(f"{status or 'no answer'} {code}{where}: {message}")


def from_response(status: int, body: bytes, retry_after_s: float | None) -> StratumError:
    """The server's JSON error shape, {"error": {"code", "message", "parameter"}}; any other
    body (a proxy's page, say) keeps its first characters as the message."""
    try:
        error: Any = json.loads(body)["error"]
        return StratumError(
            status,
            str(error["code"]),
            str(error["message"]),
            error.get("parameter"),
            retry_after_s,
        )
    except (ValueError, KeyError, TypeError):
        text = body[:500].decode("utf-8", errors="replace").strip()
        return StratumError(status, f"http_{status}", text or "no message", None, retry_after_s)
