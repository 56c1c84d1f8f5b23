"""prefetched(): items made on a worker thread, in order, errors and closing handed over."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sync.prefetch import prefetched


def test_items_arrive_in_order() -> None:
    assert list(prefetched(iter(range(1000)), depth=3)) == list(range(1000))


def test_an_error_of_the_producer_reaches_the_consumer_after_the_items_before_it() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("boom")

    got = prefetched(failing())
    assert next(got) == 1
    with pytest.raises(ValueError, match="boom"):
        next(got)


def test_closing_stops_the_producer() -> None:
    produced: list[int] = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            produced.append(n)
            yield n
            n += 1

    got = prefetched(endless(), depth=2)
    assert next(got) == 0
    got.close()  # returns once the worker has stopped
    stopped_at = len(produced)
    assert stopped_at <= 2 + 2  # the queue's depth, the one handed out, the one in hand
    assert produced == list(range(stopped_at))
