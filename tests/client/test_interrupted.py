"""A stream that stops before its end is an error, never a short answer: the server aborts
the connection when it fails after its 200 (api/app.py), and the client must notice both a
chunked body cut off and an Arrow stream without its end marker. A raw socket server sends
those answers byte for byte (stratum serve cannot be made to fail mid-stream on demand)."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from stratum_client import Client, StratumError

BATCH = pa.record_batch({"user_id": pa.array([1, 1], pa.int32()), "value": pa.array([60.0, 61.0])})


def arrow_stream(batches: int) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, BATCH.schema) as writer:
        for _ in range(batches):
            writer.write_batch(BATCH)
    return sink.getvalue()


def chunked(body: bytes, *, last_chunk: bool) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.apache.arrow.stream\r\n"
    head += b"transfer-encoding: chunked\r\n\r\n"
    chunk = f"{len(body):x}\r\n".encode() + body + b"\r\n"
    return head + chunk + (b"0\r\n\r\n" if last_chunk else b"")


def close_delimited(body: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.apache.arrow.stream\r\n"
    return head + b"connection: close\r\n\r\n" + body


@pytest.fixture
def answer_with() -> Iterator[tuple[str, list[bytes]]]:
    """A server on a socket answering each request with the next bytes of the list, then
    closing the connection."""
    answers: list[bytes] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                conn.sendall(answers.pop(0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", answers
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() the thread waits in
    listener.close()
    thread.join(timeout=10)


def test_a_whole_stream_is_read(answer_with: tuple[str, list[bytes]]) -> None:
    url, answers = answer_with
    answers.append(chunked(arrow_stream(3), last_chunk=True))
    with Client(url) as client:
        table = client.read_arrow(1, "heart_rate", "2024-01-01", "2024-01-02")
    assert table.num_rows == 6


@pytest.mark.parametrize(
    "answer",
    [
        # the chunked body ends without its last (empty) chunk: the server aborted
        chunked(arrow_stream(3), last_chunk=False),
        # cut inside a batch
        close_delimited(arrow_stream(3)[:-40]),
        # cut between two batches: pyarrow alone would return the first batches as all
        close_delimited(arrow_stream(3)[:-8]),
        # nothing at all after the headers
        close_delimited(b""),
    ],
    ids=["no-last-chunk", "inside-a-batch", "between-batches", "empty"],
)
def test_a_cut_stream_is_an_error_not_a_short_answer(
    answer_with: tuple[str, list[bytes]], answer: bytes
) -> None:
    url, answers = answer_with
    answers.append(answer)
    with Client(url) as client, pytest.raises(StratumError) as raised:
        client.read_arrow(1, "heart_rate", "2024-01-01", "2024-01-02")
    assert raised.value.status is None and raised.value.code == "stream_interrupted"


def test_a_connection_the_server_closed_while_idle_is_replaced(
    answer_with: tuple[str, list[bytes]],
) -> None:
    """The server closes each connection after its answer (as one does at its keep-alive
    timeout) without saying so: the next request finds it closed and is sent again, once,
    on a new connection."""
    url, answers = answer_with
    answers += [
        chunked(arrow_stream(1), last_chunk=True),
        chunked(arrow_stream(2), last_chunk=True),
    ]
    with Client(url) as client:
        first = client.read_arrow(1, "heart_rate", "2024-01-01", "2024-01-02")
        second = client.read_arrow(1, "heart_rate", "2024-01-01", "2024-01-02")
    assert (first.num_rows, second.num_rows) == (2, 4)
