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

_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


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


def give_back_freed_memory() -> None:
    """Return the allocator's free pages to the system (a few ms after a burst, µs after)."""
    pa.default_memory_pool().release_unused()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
