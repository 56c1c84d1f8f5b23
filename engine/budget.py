"""Admission control: concurrent queries share the memory budget instead of crashing.

DuckDB enforces its own share of the budget (memory_limit, spilling to disk beyond it);
this accountant covers the rest: Arrow batches in flight and pages being rendered. A query
reserves its estimate before it starts and releases it when its stream ends; one that
does not fit after a short wait is refused (503 + Retry-After at the API).

A lane is kept for small queries (a page, a short span): a large one (a long stream, a big
page) is admitted only while it leaves the lane free, so large answers, including streams
whose readers have stalled until the send timeout drops them, cannot hold the whole budget
and make every quick question wait behind them.
"""

from __future__ import annotations

import os
import threading
import time

from engine.allocator import give_back_freed_memory
from engine.errors import BudgetExhausted

QUERY_OVERHEAD_BYTES = 16 * 2**20  # a query's fixed cost: plans, buffers, the interpreter
# One chunk of an answer being rendered and sent: its text pieces, the joined chunk, the
# server's copy (api/render.py renders at most ~131k rows, a few MB of text, at a time).
RENDER_BYTES = 16 * 2**20
# A page of fewer rows than a chunk renders at most its rows: its batches put together in one
# (api/render.py renders chunks, not the answer's small batches), text pieces, joined copy,
# server's copy.
RENDERED_ROW_BYTES = 384
# DuckDB's share of what the budget leaves once the process's own footprint is set aside.
DUCKDB_SHARE = 0.5
MIN_SHARE_BYTES = 32 * 2**20
# The lane for small queries: room for one small query (fixed costs and a page of a few
# thousand rows), at most a quarter of the budget. A query whose reservation fits in the lane
# is small. Small queries take seconds at most, so one at a time keeps them moving; a larger
# lane would cut the largest page a small server admits (1M-row JSON pages need ~100 MiB).
LANE_SHARE = 0.25
LANE_MAX_BYTES = 24 * 2**20
# Freed memory stays resident in the allocator until it is given back (engine/allocator.py).
# Once answers holding this many bytes of rows have ended, it is given back before the next
# large query starts, and when the last query ends. Counted in rows answered, not in bytes
# reserved: every stream reserves tens of MiB, and a short one must not pay the give-back
# (~0.25 ms when there is little to return, a few ms after a burst).
GIVE_BACK_AFTER_BYTES = 32 * 2**20
# ... but only while the process holds more than this share of its whole memory budget.
# Below it, freed memory costs nothing the budget protects, and keeping it spares the next
# large answer faulting its pages in afresh: one participant-year raw as Arrow over HTTP
# faulted ~1,500 pages a request with every give-back, ~90 without.
KEEP_RESIDENT_SHARE = 0.5


def resident_bytes() -> int:
    """This process's resident memory now (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def split_budget(budget_bytes: int, baseline_bytes: int) -> tuple[int, int]:
    """(DuckDB memory_limit, admission budget) for a process already holding baseline_bytes.

    The budget bounds the whole serving process, interpreter and libraries included, so
    their footprint at start-up is set aside first; DuckDB and the queries' Arrow buffers
    share the rest.
    """
    free = max(budget_bytes - baseline_bytes, 2 * MIN_SHARE_BYTES)
    duckdb_bytes = max(MIN_SHARE_BYTES, int(free * DUCKDB_SHARE))
    return duckdb_bytes, max(MIN_SHARE_BYTES, free - duckdb_bytes)


class MemoryBudget:
    """`budget_bytes`: what admitted queries may reserve. `keep_resident_bytes`: freed
    memory is given back only while the process holds more than this (0: always, when due)."""

    def __init__(
        self, budget_bytes: int, wait_s: float = 2.0, keep_resident_bytes: int = 0
    ) -> None:
        self.budget_bytes = budget_bytes
        self.wait_s = wait_s
        self.keep_resident_bytes = keep_resident_bytes
        self._in_use = 0
        self._peak = 0
        self._admitted = 0
        self._refused = 0
        self._answered = 0  # bytes of rows answered since memory was last given back
        self._late_frees = False  # given back when idle: once more before the next large query
        self._cond = threading.Condition()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def lane_bytes(self) -> int:
        """What large queries must leave free for small ones."""
        return min(int(self.budget_bytes * LANE_SHARE), LANE_MAX_BYTES)

    @property
    def largest_bytes(self) -> int:
        """The most one query is given while others run: all but the lane."""
        return self.budget_bytes - self.lane_bytes

    def stats(self) -> dict[str, int]:
        return {
            "budget_bytes": self.budget_bytes,
            "in_use_bytes": self._in_use,
            "peak_bytes": self._peak,
            "admitted": self._admitted,
            "refused": self._refused,
        }

    def reserve(self, nbytes: int) -> int:
        """Reserve `nbytes` (capped to the whole budget) or raise BudgetExhausted. A small
        reservation may take the lane; a large one must leave it free; one larger than
        `largest_bytes` (a big page on a small server) is admitted only alone."""
        deadline = time.monotonic() + self.wait_s
        if nbytes > self.lane_bytes:
            self._give_back_if_due()  # what ended answers freed, before this one allocates
        with self._cond:
            nbytes = min(max(nbytes, 1), self.budget_bytes)
            if nbytes <= self.lane_bytes:
                keep_free = 0
            elif nbytes <= self.largest_bytes:
                keep_free = self.lane_bytes
            else:
                keep_free = self.budget_bytes - nbytes  # room only when nothing else runs
            while self._in_use + nbytes + keep_free > self.budget_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._refused += 1
                    raise BudgetExhausted(
                        f"memory budget in use ({self._in_use:,} of {self.budget_bytes:,} "
                        f"bytes); this query needs {nbytes:,}. Retry shortly."
                    )
                self._cond.wait(remaining)
            self._in_use += nbytes
            self._admitted += 1
            self._peak = max(self._peak, self._in_use)
            return nbytes

    def resize(self, budget_bytes: int) -> None:
        """A new size (queries admitted already keep what they reserved)."""
        with self._cond:
            self.budget_bytes = budget_bytes
            self._cond.notify_all()

    def release(self, nbytes: int, answered_bytes: int = 0) -> None:
        """Return a reservation; `answered_bytes`: the bytes of the rows its answer held."""
        with self._cond:
            self._in_use -= nbytes
            self._answered += answered_bytes
            idle_and_due = self._in_use == 0 and self._answered >= GIVE_BACK_AFTER_BYTES
            if idle_and_due:
                # An answer's last buffers are often dropped just after this: the next
                # large query gives those back too.
                self._answered = 0
                self._late_frees = True
            self._cond.notify_all()
        if idle_and_due:
            self._give_back()

    def _give_back_if_due(self) -> None:
        with self._cond:
            due = self._answered >= GIVE_BACK_AFTER_BYTES or self._late_frees
            if due:
                self._answered = 0
                self._late_frees = False
        if due:  # outside the lock: it may take a few ms, and releases need not wait
            self._give_back()

    def _give_back(self) -> None:
        if self.keep_resident_bytes == 0 or resident_bytes() > self.keep_resident_bytes:
            give_back_freed_memory()
