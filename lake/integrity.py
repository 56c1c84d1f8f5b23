"""Is a lake file still the one that was committed? Content hashes, and a per-process cache.

Sync records each file's size and content hash when it commits it (the warm store keeps
them, see sync/migrations/005). A reader checks a file against that record before it first
serves it, and remembers the result by (path, size, mtime): later queries pay one stat. A
file without a record (written before records were kept, or while the record cannot be
read) is read whole with its Parquet page checksums verified, which finds truncation and
most flipped bytes, though not another valid file copied over it.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import date, timedelta

import pyarrow as pa
import pyarrow.parquet as pq

from lake.checksum import DayKey, DayStat, day_checksums
from lake.layout import PartitionKey
from lake.read import read_partition_bytes
from lake.snapshot import LakeFile
from lake.storage import LakeStorage

HASH_NAME = "sha256"


def file_days(lake_file: LakeFile) -> list[tuple[int, date]]:
    """The (user_id, day)s a file may hold."""
    days = (lake_file.last_day - lake_file.first_day).days + 1
    return [(lake_file.user_id, lake_file.first_day + timedelta(days=i)) for i in range(days)]


def file_digest(storage: LakeStorage, path: str) -> str:
    """Hex content hash of a file."""
    return storage.digest(path, HASH_NAME)


def read_hashed(
    storage: LakeStorage, tier: str, path: str, partition: PartitionKey
) -> tuple[str, dict[DayKey, DayStat]]:
    """A file's content hash and its (rows, checksum) per (user_id, day), both of the same
    bytes, read once: a hash recorded from here vouches for exactly the rows checked.
    Raises (pa.ArrowException, OSError) when the file cannot be read whole."""
    with storage.open(path) as handle:
        data = handle.read()
    digest = hashlib.new(HASH_NAME, data).hexdigest()
    return digest, day_checksums(tier, read_partition_bytes(tier, data, partition))


def check_structure(storage: LakeStorage, path: str) -> str | None:
    """Why a Parquet file does not read back whole (every page, checksums verified); None
    when it does."""
    try:
        with storage.open(path) as handle:
            pq.ParquetFile(handle, page_checksum_verification=True).read()
    except (pa.ArrowException, OSError) as exc:
        return f"unreadable: {exc}"
    return None


def _reason(exc: OSError) -> str:
    return f"cannot read: {exc.strerror or exc}"


def check_size(storage: LakeStorage, path: str, size: int | None) -> str | None:
    """Why the file at ``path`` is missing or not of the recorded ``size`` (None: not
    recorded); None when it is there, of that size. One stat: no read."""
    try:
        stat = storage.stat(path)
    except OSError as exc:
        return _reason(exc)
    if stat is None:
        return "file is missing"
    found = stat[0]
    if size is not None and found != size:
        return f"size is {found} bytes, {size} recorded at commit"
    return None


def check_file(storage: LakeStorage, path: str, size: int | None, digest: str | None) -> str | None:
    """Why the file at ``path`` is not the one recorded (``size``, ``digest``; None: not
    recorded); None when it is."""
    problem = check_size(storage, path, size)
    if problem is not None:
        return problem
    if digest is None:
        return check_structure(storage, path)
    try:
        actual = file_digest(storage, path)
    except FileNotFoundError:
        return "file is missing"
    except OSError as exc:
        return _reason(exc)
    if actual != digest:
        return "content differs from the hash recorded at commit"
    return None


def _identity(storage: LakeStorage, path: str) -> tuple[str, int, int] | None:
    try:
        stat = storage.stat(path)
    except OSError:
        return None
    return None if stat is None else (path, *stat)


class VerifiedFiles:
    """Files this process found intact, by (path, size, mtime): a file is hashed once, and
    again only after it changed on disk. Thread-safe; bounded by the files of the lake.
    On object storage the stat is one HEAD request, and an overwritten object gets a new
    mtime, so the same rule holds."""

    def __init__(self, storage: LakeStorage) -> None:
        self._storage = storage
        self._lock = threading.Lock()
        self._good: set[tuple[str, int, int]] = set()

    def known_good(self, path: str) -> bool:
        identity = _identity(self._storage, path)
        with self._lock:
            return identity is not None and identity in self._good

    def remember(self, path: str) -> None:
        identity = _identity(self._storage, path)
        if identity is not None:
            with self._lock:
                self._good.add(identity)

    def forget(self, path: str) -> None:
        with self._lock:
            self._good = {i for i in self._good if i[0] != path}
