"""The app served by uvicorn as `stratum serve` serves it, on a real socket, in a thread."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from litestar import Litestar

from api import serving
from api.app import Service

HOST = "127.0.0.1"


@contextmanager
def served(app: Litestar) -> Iterator[int]:
    """Serve `app` on a free loopback port (yielded) until the block ends."""
    service: Service = app.state.service
    listener = socket.socket()
    listener.bind((HOST, 0))
    port = int(listener.getsockname()[1])
    config = serving.config(
        app,
        service.settings.server,
        HOST,
        port,
        log_config=None,  # keep pytest's logging as it is
        timeout_graceful_shutdown=5,  # a test that failed may leave a stream open
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "the server to start")
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll `condition` until it holds; fail naming `what` if it never does."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def request_headers(
    port: int, target: str, source: str = HOST, receive_buffer: int = 4096
) -> tuple[socket.socket, bytes]:
    """Send GET `target` on a new connection (from `source`) and read the answer's status
    line and headers only; the socket's small receive buffer lets a stalled reader stall
    the server soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(30)
    sock.bind((source, 0))
    sock.connect((HOST, port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)  # one byte at a time: not a byte of the body is read
        if not data:
            raise AssertionError(f"connection closed before the headers: {head!r}")
        head += data
    return sock, head


def read_rest(sock: socket.socket) -> bytes:
    """Everything the server still sends, until it closes (or resets) the connection."""
    parts = []
    try:
        while data := sock.recv(1 << 20):
            parts.append(data)
    except ConnectionResetError:
        pass
    return b"".join(parts)


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a client that went away does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
