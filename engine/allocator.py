"""Giving freed memory back to the system, so that the memory budget bounds the process's RSS.

The budget accounts for what queries hold. glibc's allocator keeps what they free in its
arenas (one per allocating thread, up to eight per core) and returns only the top of each
heap to the system; the rest stays resident. After a burst of 1M-row JSON pages the medium
bench's server held 150-220 MiB freed but resident, and peaked at 642 MiB RSS under a
512 MiB budget whose admitted queries never reserved more than 119 MiB.

Two remedies, measured on that burst (30 pages, one admitted at a time): fewer arenas, and
`malloc_trim` once large answers have ended, which also releases free pages inside the
heaps. Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import Any

import pyarrow as pa

log = logging.getLogger(__name__)

# mallopt's parameter numbers in glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Allocations up to this size come from the arenas (glibc's largest mmap threshold on 64-bit).
MMAP_THRESHOLD_BYTES = 32 * 2**20
# Free memory at a heap's top beyond this is given back at once (malloc_trim gives back all).
TRIM_THRESHOLD_BYTES = 64 * 2**20


@functools.cache
def _glibc() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None  # musl and others: nothing to tune
    return libc


def limit_arenas(arenas: int) -> None:
    """At most `arenas` malloc arenas from now on (threads share them). Each arena keeps its
    own freed memory, so fewer of them keep less; one per core costs little contention."""
    libc = _glibc()
    if libc is not None and not libc.mallopt(_M_ARENA_MAX, max(arenas, 1)):
        log.warning("could not limit malloc arenas to %d", arenas)


def reuse_freed_chunks() -> None:
    """Serve allocations of up to 32 MiB from the arenas, and keep up to 64 MiB free at a
    heap's top, instead of mapping and unmapping them.

    glibc maps each allocation above its threshold (which follows the largest block freed)
    afresh, and gives a heap's top back once twice that is free. A streamed answer frees and
    allocates blocks of 1-4 MB a chunk at a time (an Arrow message, its framed copy, a JSON
    chunk's text), so every chunk came on new pages, faulted in one at a time. Side by side,
    one participant-year raw (16 MB) as Arrow over HTTP took 58-69 ms before, 47-59 after
    (uvicorn on uvloop both sides).

    What stays resident is given back by `give_back_freed_memory` on the budget's cadence:
    malloc_trim gives back whatever the threshold."""
    libc = _glibc()
    if libc is None:
        return
    if not libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.warning("could not set malloc's mmap threshold to %d", MMAP_THRESHOLD_BYTES)
    if not libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES):
        log.warning("could not set malloc's trim threshold to %d", TRIM_THRESHOLD_BYTES)


def give_back_freed_memory() -> None:
    """Return the allocator's free pages to the system (a few ms after a burst, µs after)."""
    pa.default_memory_pool().release_unused()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
