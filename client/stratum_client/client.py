"""`Client`: /data as a pandas DataFrame, an Arrow table or a polars frame; /plan; /catalog."""

from __future__ import annotations

import http.client
import io
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.ipc as ipc

from stratum_client.errors import StratumError, from_response
from stratum_client.transport import Body, Connections

if TYPE_CHECKING:
    import pandas
    import polars

# Busy answers (429: the key's requests are all running; 503: the memory budget is in use or
# a store is down) are retried this many times, each after the wait the server names in
# Retry-After (capped at max_retry_wait_s); then the last one is raised as StratumError.
DEFAULT_RETRIES = 5
DEFAULT_MAX_RETRY_WAIT_S = 60.0
RETRIED_STATUSES = (429, 503)
ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
# The Arrow IPC stream's end marker: continuation token, then a zero length.
END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"

When = str | date | datetime


def _text(value: When) -> str:
    # A date or datetime as ISO 8601; a datetime without a zone is read as UTC by the server.
    return value if isinstance(value, str) else value.isoformat()


def _joined(values: int | str | Iterable[int | str]) -> str:
    if isinstance(values, int | str):
        return str(values)
    return ",".join(str(v) for v in values)


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date (RFC 9110); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _interrupted(exc: BaseException) -> StratumError:
    return StratumError(
        None,
        "stream_interrupted",
        f"the answer stopped before its end ({type(exc).__name__}: {exc}); nothing partial "
        "is returned: read again",
    )


@dataclass
class _Seen:
    """What the last /data response said besides its rows."""

    schema: pa.Schema | None = None
    next_cursor: str | None = None


class Client:
    """A stratum server at `url`, read with `key` (sent as `Authorization: Bearer`).

    Every request is retried up to `retries` times while the server answers 429 or 503,
    each after its Retry-After (at most `max_retry_wait_s`); other errors are raised at once
    as StratumError.
    """

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout_s: float = 300.0,
        retries: int = DEFAULT_RETRIES,
        max_retry_wait_s: float = DEFAULT_MAX_RETRY_WAIT_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 0:
            raise ValueError(f"retries={retries}: must be 0 or more")
        if key is not None and (not key or key != key.strip() or not key.isprintable()):
            # Sent as a header: whitespace or control characters would make another header.
            raise ValueError("key: the key's text as `stratum key create` printed it, or None")
        headers = {"User-Agent": "stratum-client/0.1"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        self.url = url.rstrip("/")
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s
        self._sleep = sleep  # the wait before a retry (a test observes it)
        self._http = Connections(self.url, headers, timeout_s)

    # -- life cycle ----------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------

    def _send(self, path: str, params: dict[str, str], accept: str) -> http.client.HTTPResponse:
        """A response with a 2xx status, its body unread, after any retries (give it back
        with `self._http.done`)."""
        attempt = 0
        while True:
            try:
                response = self._http.get(path, params, {"Accept": accept})
            except (OSError, http.client.HTTPException) as exc:
                raise StratumError(
                    None, "connection_failed", f"{self.url}{path}: {type(exc).__name__}: {exc}"
                ) from exc
            if 200 <= response.status < 300:
                return response
            try:
                body = response.read()
            except (OSError, http.client.HTTPException):
                body = b""
            finally:
                self._http.done(response)
            wait = _retry_after_s(response.getheader("Retry-After"))
            if response.status in RETRIED_STATUSES and attempt < self.retries:
                attempt += 1
                self._sleep(min(self.max_retry_wait_s, 1.0 if wait is None else wait))
                continue
            raise from_response(response.status, body, wait)

    def _json(self, path: str, params: dict[str, str]) -> Any:
        response = self._send(path, params, "application/json")
        try:
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise _interrupted(exc) from exc
        finally:
            self._http.done(response)
        return json.loads(body)

    def _arrow_batches(self, params: dict[str, str], seen: _Seen) -> Iterator[pa.RecordBatch]:
        """The batches of one /data Arrow answer; its schema and next cursor go to `seen`."""
        response = self._send("/data", params, ARROW_MEDIA_TYPE)
        seen.next_cursor = response.getheader("X-Stratum-Next")
        body = Body(response, len(END_OF_STREAM))
        try:
            reader = ipc.open_stream(io.BufferedReader(body))
            seen.schema = reader.schema
            yield from reader
            if body.tail != END_OF_STREAM:
                # pyarrow takes a stream cut between two batches for a whole one.
                raise _interrupted(EOFError("no end-of-stream marker"))
            response.read()  # to the body's own end: a chunked body cut after it is an error too
        except (OSError, http.client.HTTPException, pa.ArrowInvalid) as exc:
            # A server that fails after its 200 went out aborts the connection: the stream
            # ends without its end marker, and a short answer must not pass for a whole one.
            raise _interrupted(exc) from exc
        finally:
            self._http.done(response)

    @staticmethod
    def _params(
        users: int | Iterable[int],
        metrics: str | Iterable[str],
        start: When,
        end: When,
        resolution: str,
        tz: str | None,
        max_points: int | None,
        width: int | None = None,
    ) -> dict[str, str]:
        params = {
            "user_id": _joined(users),
            "metric": _joined(metrics),
            "start": _text(start),
            "end": _text(end),
            "resolution": resolution,
        }
        # Only when asked: a server without the parameter refuses names it does not know.
        if tz is not None:
            params["tz"] = tz
        if max_points is not None:
            params["max_points"] = str(max_points)
        if width is not None:
            # M4: per pixel column and series, the first, last, lowest and highest raw row,
            # so a chart drawn from it is the chart of every row.
            params["downsample"] = "m4"
            params["width"] = str(width)
        return params

    # -- the API -------------------------------------------------------------------------

    def iter_batches(
        self,
        users: int | Iterable[int],
        metrics: str | Iterable[str],
        start: When,
        end: When,
        resolution: str = "auto",
        tz: str | None = None,
        *,
        page_size: int | None = None,
        max_points: int | None = None,
        width: int | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The answer's Arrow record batches as they arrive, in the server's row order.

        `page_size=None` streams the whole answer in one response (`page_size=0`); a number
        reads it in pages of that many rows, following each page's cursor (each page is its
        own request, so a busy answer mid-way is retried for that page only).
        `width` asks for a raw answer M4-downsampled to that many pixel columns (per column
        and series: the first, last, lowest and highest row; rollups come unchanged).
        """
        yield from self._batches(
            self._params(users, metrics, start, end, resolution, tz, max_points, width),
            page_size,
            _Seen(),
        )

    def _batches(
        self, params: dict[str, str], page_size: int | None, seen: _Seen
    ) -> Iterator[pa.RecordBatch]:
        params = {**params, "format": "arrow"}
        if page_size is None:
            params["page_size"] = "0"
            yield from self._arrow_batches(params, seen)
            return
        if page_size < 1:
            raise ValueError(f"page_size={page_size}: a number of rows >= 1, or None to stream")
        params["page_size"] = str(page_size)
        while True:
            yield from self._arrow_batches(params, seen)
            if not seen.next_cursor:
                return
            params["cursor"] = seen.next_cursor

    def read_arrow(
        self,
        users: int | Iterable[int],
        metrics: str | Iterable[str],
        start: When,
        end: When,
        resolution: str = "auto",
        tz: str | None = None,
        *,
        page_size: int | None = None,
        max_points: int | None = None,
        width: int | None = None,
    ) -> pa.Table:
        """The whole answer as a pyarrow Table (columns as /data's Arrow format names them:
        user_id, metric, ts, value for raw; count, sum, min, max, avg for rollups). `metric`
        is dictionary-encoded over the metrics asked (a categorical in pandas and polars)."""
        seen = _Seen()
        params = self._params(users, metrics, start, end, resolution, tz, max_points, width)
        batches = list(self._batches(params, page_size, seen))
        return pa.Table.from_batches(batches, schema=seen.schema)

    def read(
        self,
        users: int | Iterable[int],
        metrics: str | Iterable[str],
        start: When,
        end: When,
        resolution: str = "auto",
        tz: str | None = None,
        *,
        page_size: int | None = None,
        max_points: int | None = None,
        width: int | None = None,
    ) -> pandas.DataFrame:
        """The whole answer as a pandas DataFrame (`ts` is a UTC-aware datetime column)."""
        try:
            import pandas  # noqa: F401  (pyarrow's to_pandas needs it)
        except ImportError as exc:
            raise ImportError(
                "Client.read returns a pandas DataFrame: pip install 'stratum-client[pandas]' "
                "(or use read_arrow)"
            ) from exc
        table = self.read_arrow(
            users,
            metrics,
            start,
            end,
            resolution,
            tz,
            page_size=page_size,
            max_points=max_points,
            width=width,
        )
        return table.to_pandas()

    def read_polars(
        self,
        users: int | Iterable[int],
        metrics: str | Iterable[str],
        start: When,
        end: When,
        resolution: str = "auto",
        tz: str | None = None,
        *,
        page_size: int | None = None,
        max_points: int | None = None,
        width: int | None = None,
    ) -> polars.DataFrame:
        """The whole answer as a polars DataFrame."""
        try:
            import polars
        except ImportError as exc:
            raise ImportError(
                "Client.read_polars needs polars: pip install 'stratum-client[polars]'"
            ) from exc
        table = self.read_arrow(
            users,
            metrics,
            start,
            end,
            resolution,
            tz,
            page_size=page_size,
            max_points=max_points,
            width=width,
        )
        frame = polars.from_arrow(table)
        assert isinstance(frame, polars.DataFrame)  # a Table gives a frame, never a Series
        return frame

    def plan(
        self,
        users: int | Iterable[int],
        metrics: str | Iterable[str],
        start: When,
        end: When,
        resolution: str = "auto",
        tz: str | None = None,
        *,
        max_points: int | None = None,
        width: int | None = None,
    ) -> dict[str, Any]:
        """How /data would answer: segments per store and tier, lake files, estimated rows."""
        params = self._params(users, metrics, start, end, resolution, tz, max_points, width)
        answer: dict[str, Any] = self._json("/plan", params)
        return answer

    def catalog(self) -> dict[str, Any]:
        """Metrics with their units, the participants the key sees, coverage per store."""
        answer: dict[str, Any] = self._json("/catalog", {})
        return answer
