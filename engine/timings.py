"""Where one request's time goes, stage by stage (issue 13): shown by /plan, read by the bench.

Stages: `catalog` (the warm-store statements that load it), `plan` (pure routing), `check_files`
(lake files verified before first use), `locate_page` (a deep page's start, from the day
counts), `warm_fetch` (warm-store statements and their Arrow results), `lake_scan` (DuckDB:
set-up, scan and batches), `merge` (merging and slicing the segments' streams). Counts:
`warm_statements`, statements sent to the warm store, whose round trips dominate short spans on
a busy machine and, unlike milliseconds, do not depend on load; `guess_dropped`, a lake read
begun on the cached catalog that the fresh catalog did not confirm (engine/run.py; while such a
read runs, the `catalog` stage runs on another thread, so the stages add up to more than the
request took); `direct_refused`, a one-statement
answer (engine/direct.py) the warm store declined, so the general path answered after it. A
one-statement answer has no `catalog` stage: its statement's time is `warm_fetch`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class StageTimes:
    """Milliseconds per stage and counts of one request; filled as the request runs."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + seconds * 1e3

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def merge(self, other: StageTimes) -> None:
        """Add `other`'s milliseconds and counts (stages another thread ran for the request)."""
        for stage, ms in other.ms.items():
            self.ms[stage] = self.ms.get(stage, 0.0) + ms
        for name, n in other.counts.items():
            self.count(name, n)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def timed(self, stream: Iterator[T], stage: str, inner: tuple[str, ...] = ()) -> Iterator[T]:
        """`stream`, with the time spent producing each item added to `stage`, less the time
        the `inner` stages (the streams it reads) took meanwhile."""
        while True:
            started = time.perf_counter()
            before = sum(self.ms.get(name, 0.0) for name in inner)
            try:
                item = next(stream)
            except StopIteration:
                self._add_exclusive(stage, started, before, inner)
                return
            self._add_exclusive(stage, started, before, inner)
            yield item

    def _add_exclusive(
        self, stage: str, started: float, before: float, inner: tuple[str, ...]
    ) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1e3
        inner_ms = sum(self.ms.get(name, 0.0) for name in inner) - before
        self.ms[stage] = self.ms.get(stage, 0.0) + max(0.0, elapsed_ms - inner_ms)

    def describe(self) -> dict[str, Any]:
        return {
            "ms": {k: round(v, 3) for k, v in self.ms.items()},
            "counts": dict(self.counts),
        }
