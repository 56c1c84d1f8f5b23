"""One writer per tier: an advisory file lock next to the tables."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_THREAD_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_GUARD = threading.Lock()


@contextmanager
def writer_lock(root: Path, tier: str) -> Iterator[None]:
    """Hold the exclusive writer lock of ``<root>/<tier>`` (blocks until free).

    flock is released by the kernel when the holder dies, even by SIGKILL, so a crashed
    writer never blocks the next one. The lock file lives beside the table folders, where
    vacuum does not look.
    """
    with _GUARD:
        local = _THREAD_LOCKS.setdefault((str(root), tier), threading.Lock())
    with local:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / f".{tier}.writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock
