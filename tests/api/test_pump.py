"""A streamed body's chunks are made ahead in the pool (api/pump.py ChunkPump): in order,
at most AHEAD_BYTES ahead of the send, without holding a thread while nobody reads, and
the source is closed by aclose however the stream ends."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from api.pump import ChunkPump


class Source:
    """Chunks of `size` bytes, counted as they are made; `closed` once its generator is."""

    def __init__(self, count: int, size: int = 4, fail_at: int | None = None) -> None:
        self.count, self.size, self.fail_at = count, size, fail_at
        self.made = 0
        self.closed = False
        self.gate: threading.Event | None = None  # when set up, each chunk waits for it
        self.waiting = threading.Event()  # a chunk is waiting for the gate

    def chunks(self) -> Iterator[bytes]:
        try:
            for i in range(self.count):
                if self.gate is not None:
                    self.waiting.set()
                    self.gate.wait(5)
                if i == self.fail_at:
                    raise ValueError(f"chunk {i} cannot be made")
                self.made += 1
                yield bytes([i % 256]) * self.size
        finally:
            self.closed = True


def idle(pump: ChunkPump) -> None:
    """Wait until the pump has no run in the pool (it stopped ahead, or its source ended)."""
    deadline = time.monotonic() + 5
    while pump._run is not None:
        assert time.monotonic() < deadline, "the pump's run never stopped"
        time.sleep(0.001)


async def read_all(pump: ChunkPump) -> list[bytes]:
    try:
        return [chunk async for chunk in pump.body()]
    finally:
        await pump.aclose()


def test_every_chunk_comes_in_order_over_many_runs() -> None:
    source = Source(count=50)
    pump = ChunkPump(source.chunks(), ahead_bytes=10)  # a run stops every 3 chunks
    chunks = asyncio.run(read_all(pump))
    assert chunks == [bytes([i]) * 4 for i in range(50)]
    assert source.closed


def test_chunks_are_made_before_anyone_reads_but_only_so_far_ahead() -> None:
    source = Source(count=50)
    pump = ChunkPump(source.chunks(), ahead_bytes=10)
    idle(pump)  # no thread is held while nobody reads
    assert source.made == 3  # 12 bytes: the first run past 10 stops
    asyncio.run(read_all(pump))
    assert source.made == 50


def test_a_failure_ends_the_body_with_it_after_the_chunks_before() -> None:
    source = Source(count=10, fail_at=4)
    pump = ChunkPump(source.chunks())
    got: list[bytes] = []

    async def read() -> None:
        try:
            async for chunk in pump.body():
                got.append(chunk)
        finally:
            await pump.aclose()

    with pytest.raises(ValueError, match="chunk 4 cannot be made"):
        asyncio.run(read())
    assert got == [bytes([i]) * 4 for i in range(4)]
    assert source.closed


def test_closing_an_unread_pump_closes_its_source() -> None:
    source = Source(count=50)
    pump = ChunkPump(source.chunks(), ahead_bytes=10)
    idle(pump)  # (a generator never started has no `finally` to run)
    asyncio.run(pump.aclose())  # the client went away before the first chunk was sent
    assert source.closed
    assert source.made == 3


def test_closing_waits_for_the_chunk_being_made_then_closes_the_source() -> None:
    source = Source(count=50)
    source.gate = threading.Event()
    pump = ChunkPump(source.chunks())  # its run waits in the source for the gate
    assert source.waiting.wait(5)

    async def close_while_making() -> None:
        closing = asyncio.ensure_future(pump.aclose())
        await asyncio.sleep(0.05)
        assert not closing.done()  # a generator cannot be closed while it runs
        assert source.gate is not None
        source.gate.set()
        await closing

    asyncio.run(close_while_making())
    assert source.closed
    assert source.made == 1  # the chunk under way, and no other


@pytest.mark.parametrize("read_whole", [True, False])
def test_on_close_runs_once_the_source_is_closed_however_the_body_ends(read_whole: bool) -> None:
    """`on_close` (the answer's memory reservation) runs after the source is closed, not
    when the source ends: the chunks made ahead count until the body is over."""
    source = Source(count=5)
    calls: list[bool] = []
    pump = ChunkPump(source.chunks(), on_close=lambda: calls.append(source.closed))
    idle(pump)
    assert source.made == 5 and source.closed  # made ahead to its end...
    assert calls == []  # ...yet not released while the chunks wait to be sent
    if read_whole:
        assert len(asyncio.run(read_all(pump))) == 5
    else:
        asyncio.run(pump.aclose())
    assert calls == [True]
