"""How `stratum serve` runs the app: uvicorn, with the timeouts a public server needs.

uvicorn waits for a client forever in two places: a response whose client stopped reading
waits in `drain()` (and the request keeps its memory reservation and concurrency slots),
and a connection that never completes its request's headers is never timed out (its
keep-alive timer starts only after a first response). The h11 protocol here adds both
timeouts:

- send: while the connection's write buffer is over its high-water mark, the client must
  accept at least SEND_PROGRESS_BYTES every STRATUM_SEND_TIMEOUT_S, or the connection is
  aborted. The app then sees a disconnect, and the request ends and releases what it holds
  (api/bodies.py closes its body deterministically).
- idle: a connection must send a whole request's headers within STRATUM_IDLE_TIMEOUT_S of
  opening or of its previous answer (uvicorn's keep-alive timeout is set to the same).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

from engine.settings import ServerSettings

log = logging.getLogger(__name__)

# asyncio's default write-buffer high-water mark: a client that cannot take this much in a
# whole send timeout is not slow, it has stopped.
SEND_PROGRESS_BYTES = 64 * 1024


# A body chunk at least this large is written as it is, after its framing.
_PASSTHROUGH_BYTES = 64 * 1024


class _PassthroughConnection(h11.Connection):
    """h11's connection, except that a large body chunk's framing and bytes are written to
    the transport as they are: h11's `send` joins them into one new copy of every chunk.
    One participant-year raw as Arrow over HTTP (16 MB), side by side: 57-60 ms with the
    join, 54-57 without (uvicorn on uvloop both sides)."""

    transport: asyncio.Transport | None = None

    def send(self, event: Any) -> bytes | None:  # type: ignore[override]  # h11 overloads it
        large = type(event) is h11.Data and len(event.data) >= _PASSTHROUGH_BYTES
        if self.transport is None or not large:
            return super().send(event)
        for piece in self.send_with_data_passthrough(event) or ():
            self.transport.write(piece)
        return b""  # uvicorn writes what send returns: nothing more


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a send timeout and an idle timeout (set by `protocol_for`)."""

    send_timeout_s: float = 10.0
    idle_timeout_s: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = self.config.h11_max_incomplete_event_size  # as uvicorn made its own
        self._passthrough = _PassthroughConnection(
            h11.SERVER,
            DEFAULT_MAX_INCOMPLETE_EVENT_SIZE if limit is None else limit,
        )
        self.conn = self._passthrough
        self._idle_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._buffered_at_check = 0

    # -- idle: the request's headers must come in time --------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._passthrough.transport = self.transport
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_running():
            self._cancel_idle()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._request_running():  # unless a pipelined request started already
            self._arm_idle()

    def _request_running(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_idle(self) -> None:
        self._cancel_idle()
        if not self.transport.is_closing():
            self._idle_timer = self.loop.call_later(self.idle_timeout_s, self._idle_expired)

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if not self._request_running() and not self.transport.is_closing():
            self.transport.close()

    # -- send: the client must keep reading ----------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._arm_send()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_send()

    def _arm_send(self) -> None:
        self._cancel_send()
        self._buffered_at_check = self.transport.get_write_buffer_size()
        self._send_timer = self.loop.call_later(self.send_timeout_s, self._send_check)

    def _cancel_send(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_check(self) -> None:
        self._send_timer = None
        if not self.flow.write_paused or self.transport.is_closing():
            return
        buffered = self.transport.get_write_buffer_size()
        if self._buffered_at_check - buffered >= SEND_PROGRESS_BYTES:
            self._arm_send()  # slow, but reading
            return
        log.warning(
            "client %s took no %d bytes in %ss: connection dropped (STRATUM_SEND_TIMEOUT_S)",
            self.client[0] if self.client else "?",
            SEND_PROGRESS_BYTES,
            self.send_timeout_s,
        )
        self.transport.abort()  # close() would wait for the buffer to drain: forever

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_idle()
        self._cancel_send()
        super().connection_lost(exc)


def protocol_for(server: ServerSettings) -> type[GuardedH11Protocol]:
    """The protocol class with this server's timeouts (uvicorn instantiates it per connection)."""
    return type(
        "StratumH11Protocol",
        (GuardedH11Protocol,),
        {
            "send_timeout_s": float(server.send_timeout_s),
            "idle_timeout_s": float(server.idle_timeout_s),
        },
    )


def uvicorn_options(server: ServerSettings) -> dict[str, Any]:
    """uvicorn.run / uvicorn.Config keyword arguments beyond app, host and port."""
    return {
        "http": protocol_for(server),
        "timeout_keep_alive": server.idle_timeout_s,
        "log_level": server.log_level,
        # uvicorn's own default comes from $FORWARDED_ALLOW_IPS: the setting decides instead.
        "proxy_headers": bool(server.forwarded_allow_ips),
        "forwarded_allow_ips": list(server.forwarded_allow_ips) or None,
    }


def config(app: Any, server: ServerSettings, host: str, port: int, **extra: Any) -> uvicorn.Config:
    """The uvicorn configuration `stratum serve` runs (tests serve the app the same way;
    `extra`: more uvicorn.Config arguments)."""
    return uvicorn.Config(app, host=host, port=port, **{**uvicorn_options(server), **extra})
