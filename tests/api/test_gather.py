"""Streamed bodies are pulled from their worker thread a few chunks per trip (api/app.py
_gather): up to GATHER_BYTES, or what comes within GATHER_S, and at least one chunk."""

from __future__ import annotations

import time
from collections.abc import Iterator

from api.app import GATHER_BYTES, GATHER_S, _gather


def test_chunks_are_gathered_up_to_the_byte_bound_and_none_is_lost() -> None:
    size = GATHER_BYTES // 3 + 1  # three of them reach the bound
    chunks = iter([bytes([i]) * size for i in range(8)])
    trips = []
    while gathered := _gather(chunks):
        trips.append(gathered)
    assert [len(trip) for trip in trips] == [3, 3, 2]
    assert b"".join(b"".join(trip) for trip in trips) == b"".join(
        bytes([i]) * size for i in range(8)
    )
    assert _gather(chunks) == []  # an ended stream stays ended


def test_a_slow_producer_is_not_held_back() -> None:
    def slow() -> Iterator[bytes]:
        for i in range(3):
            time.sleep(GATHER_S * 2)
            yield bytes([i])

    chunks = slow()
    assert [_gather(chunks) for _ in range(4)] == [[b"\x00"], [b"\x01"], [b"\x02"], []]


def test_a_large_chunk_travels_alone() -> None:
    chunks = iter([b"x" * GATHER_BYTES, b"y"])
    assert _gather(chunks) == [b"x" * GATHER_BYTES]
    assert _gather(chunks) == [b"y"]
