"""One writer per tier: an advisory file lock next to the tables (local lakes), a thread lock
(object storage, where the Delta commit itself is the arbiter between processes)."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lake.storage import LakeStorage

_THREAD_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_GUARD = threading.Lock()


@contextmanager
def writer_lock(storage: LakeStorage, tier: str) -> Iterator[None]:
    """Hold the exclusive writer lock of ``<root>/<tier>`` (blocks until free).

    flock is released by the kernel when the holder dies, even by SIGKILL, so a crashed
    writer never blocks the next one. The lock file lives beside the table folders, where
    vacuum does not look. On object storage there is no such lock across processes: each
    commit is a put-if-absent of the next log entry, so of two writers one commits and the
    other's commit fails (its files stay orphans for vacuum); nothing committed is lost.
    """
    with _GUARD:
        local = _THREAD_LOCKS.setdefault((storage.root, tier), threading.Lock())
    with local:
        if not storage.is_local:
            yield
            return
        root = Path(storage.root)
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / f".{tier}.writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock
