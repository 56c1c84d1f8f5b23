"""GET requests over kept-alive standard-library connections (http.client), pooled.

Not httpx: it reads a body 64 KiB at a time through h11, each read a round of Python calls.
One participant-year raw as Arrow (477,611 rows, 16 MB) on loopback, each client alternating
with the bench's http.client reader: 65.7-67.4 ms through httpx (the reader 46.6-52.1), 54.5
through this module (the reader 51.9-55.5). A body is read straight into pyarrow's buffers
(`readinto`), with no copy of ours.
"""

from __future__ import annotations

import http.client
import io
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

# What a kept-alive connection raises when the server closed it while it sat idle (its
# keep-alive timeout): the request is sent again, once, on a new connection.
_CLOSED_WHILE_IDLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Connections:
    """Connections to one server, each serving one request at a time; thread-safe. A
    response read to its end gives its connection back for the next request; one abandoned
    early closes it (unread bytes would be taken for the next answer)."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float) -> None:
        address = urlsplit(url)
        if address.scheme not in ("http", "https") or not address.hostname:
            raise ValueError(f"url={url!r}: an http:// or https:// address")
        self._kind = (
            http.client.HTTPSConnection if address.scheme == "https" else http.client.HTTPConnection
        )
        self._host = address.hostname
        self._port = address.port
        self._prefix = address.path.rstrip("/")
        self._headers = headers
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []

    def _new(self) -> http.client.HTTPConnection:
        return self._kind(self._host, self._port, timeout=self._timeout_s)

    def get(
        self, path: str, params: dict[str, str], headers: dict[str, str]
    ) -> http.client.HTTPResponse:
        """The response, its headers read and its body not yet (give it back with `done`).
        Raises OSError or http.client.HTTPException when no answer arrives."""
        target = f"{self._prefix}{path}"
        if params:
            target += "?" + urlencode(params)
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        reused = conn is not None
        while True:
            if conn is None:
                conn = self._new()
            try:
                conn.request("GET", target, headers={**self._headers, **headers})
                response = conn.getresponse()
            except _CLOSED_WHILE_IDLE:
                conn.close()
                conn = None
                if not reused:
                    raise
                reused = False
                continue
            except BaseException:
                conn.close()
                raise
            response.connection = conn  # type: ignore[attr-defined]  # for `done`
            return response

    def done(self, response: http.client.HTTPResponse) -> None:
        """Give the response's connection back if its body was read to the end and the
        server keeps it open; close it otherwise."""
        conn: http.client.HTTPConnection = response.connection  # type: ignore[attr-defined]
        if response.isclosed() and not response.will_close:
            with self._lock:
                self._idle.append(conn)
            return
        response.close()
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Body(io.RawIOBase):
    """A response's body as a raw file for pyarrow to read into its own buffers, keeping the
    last bytes it gave (a whole Arrow stream ends with its end-of-stream marker)."""

    def __init__(self, response: http.client.HTTPResponse, tail: int) -> None:
        self._response = response
        self._keep = tail
        self.tail = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = self._response.readinto(buffer)
        if size:
            last = bytes(memoryview(buffer)[max(0, size - self._keep) : size])
            self.tail = (self.tail + last)[-self._keep :]
        return size
