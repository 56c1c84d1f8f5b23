"""The HTTP backends' instrument: whole bodies, errors with their status, idle reconnects."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from benchmarks.backends import HttpStatusError, Loopback


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API serves

    def do_GET(self) -> None:
        if self.path.startswith("/busy"):
            body = b'{"error": "busy"}'
            self.send_response(503)
            self.send_header("Retry-After", "2")
        else:
            body = self.path.encode() + b"|" + self.headers["Authorization"].encode()
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path.startswith("/close"):  # the connection dies with the answer
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def base_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_reads_the_whole_body_with_the_key(base_url: str) -> None:
    client = Loopback(base_url, "k1")
    try:
        headers, body = client.get("/data", {"user_id": ["1", "2"], "tz": ["Asia/Kolkata"]})
        assert body == b"/data?user_id=1&user_id=2&tz=Asia%2FKolkata|Bearer k1"
        assert headers["content-length"] == str(len(body))
    finally:
        client.close()


def test_an_error_status_raises_with_its_headers(base_url: str) -> None:
    client = Loopback(base_url, "k1")
    try:
        with pytest.raises(HttpStatusError) as raised:
            client.get("/busy", {})
        assert raised.value.status == 503 and raised.value.headers["retry-after"] == "2"
    finally:
        client.close()


def test_a_connection_closed_by_the_server_is_opened_again(base_url: str) -> None:
    client = Loopback(base_url, "k1")
    try:
        for _ in range(3):
            _, body = client.get("/close", {})
            assert body.startswith(b"/close?")
    finally:
        client.close()


def test_a_body_is_read_as_it_arrives_and_drained(base_url: str) -> None:
    client = Loopback(base_url, "k1")
    try:
        for _ in range(2):  # the connection serves the next request after a partial read
            headers, first = client.read("/data", {}, lambda body: body.read(5))
            assert first == b"/data" and headers["content-length"].isdigit()
    finally:
        client.close()
