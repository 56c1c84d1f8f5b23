"""Produce ahead of the consumer on a worker thread: the sync reads its next batch from
PostgreSQL while the current one is written to the lake, the bench generates while it
ingests (numpy, PostgreSQL and Delta release the GIL)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def prefetched(
    items: Iterable[T], depth: int = 1, name: str = "prefetch"
) -> Generator[T, None, None]:
    """`items`, iterated on a worker thread up to `depth` items ahead, in order. An error of
    the worker is raised to the consumer; closing the generator stops the worker after the
    item it is producing."""
    slot: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[str, Any]) -> None:
        while not stop.is_set():
            try:
                slot.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                put(("value", item))
        except BaseException as exc:  # handed to the consumer, re-raised there
            put(("error", exc))
        put(("done", None))

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slot.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        worker.join()
