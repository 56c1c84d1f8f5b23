"""The one exception → HTTP map, and the one JSON error shape.

    {"error": {"code": "invalid_parameter", "message": "...", "parameter": "metric"}}

Registered once on the app for `Exception`, so stratum errors, Litestar's own (404, 405,
query validation) and anything unexpected all leave in this shape. Unexpected errors are
logged with their traceback and answered with a generic message: internals never leak.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from engine.errors import (
    ConfigurationError,
    Forbidden,
    InvalidParameter,
    StratumError,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error; it has been logged"


@dataclass(frozen=True)
class HttpError:
    status: int
    code: str
    message: str
    parameter: str | None = None
    headers: dict[str, str] | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "parameter": self.parameter}}


def _litestar_error(exc: HTTPException) -> HttpError:
    status = exc.status_code
    headers = dict(exc.headers or {})
    if isinstance(exc, ValidationException):
        # Litestar validates declared parameters before our code runs; name the first one.
        extra = exc.extra if isinstance(exc.extra, list) else []
        first = extra[0] if extra and isinstance(extra[0], dict) else {}
        parameter = first.get("key")
        reason = first.get("message") or exc.detail
        message = f"{parameter}: {reason}" if parameter else str(reason)
        return HttpError(status, InvalidParameter.code, message, parameter, headers or None)
    code = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return HttpError(status, code, exc.detail or HTTPStatus(status).phrase, None, headers or None)


def retry_after(kind: type[Unavailable] | type[TooManyRequests]) -> dict[str, str]:
    """The Retry-After header for a kind of unavailability (its policy is on the class)."""
    return {"Retry-After": str(max(1, int(kind.retry_after_s)))}


def to_http(exc: Exception) -> HttpError:
    """The single place that decides status, code and headers for an exception."""
    if isinstance(exc, Unavailable):  # busy or down: the error says when to retry
        return HttpError(503, exc.code, exc.message, exc.parameter, retry_after(type(exc)))
    if isinstance(exc, ConfigurationError):  # the server's problem, not the client's
        log.error("configuration error: %s", exc.message)
        return HttpError(500, exc.code, INTERNAL_MESSAGE)
    if isinstance(exc, TooManyRequests):  # the key's or address's own requests fill its share
        return HttpError(429, exc.code, exc.message, exc.parameter, retry_after(type(exc)))
    if isinstance(exc, Unauthenticated):
        return HttpError(401, exc.code, exc.message, None, {"WWW-Authenticate": "Bearer"})
    if isinstance(exc, Forbidden):  # the same words whether the participant exists or not
        return HttpError(403, exc.code, exc.message, exc.parameter)
    if isinstance(exc, StratumError):  # InvalidParameter, IngestRejected, ...
        return HttpError(400, exc.code, exc.message, exc.parameter)
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        return _litestar_error(exc)
    return HttpError(500, "internal_error", INTERNAL_MESSAGE)


def error_response(error: HttpError) -> Response[dict[str, Any]]:
    return Response(
        error.body(), status_code=error.status, headers=error.headers, media_type="application/json"
    )


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    error = to_http(exc)
    if error.status >= 500 and error.code == "internal_error":
        log.error(
            "unhandled error on %s %s",
            request.method,
            request.url.path,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    return error_response(error)


EXCEPTION_HANDLERS = {Exception: handle_exception}
