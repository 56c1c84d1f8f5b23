"""The lake: one Delta table per tier, atomic partition replacement and cached file listing."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction

from lake.checksum import DayKey, DayStat, day_checksums, merge_checksums
from lake.dayfiles import days_by_partition, kept_rows, outside, plan_days, split_runs
from lake.deltalog import log_entry, read_commits
from lake.layout import (
    TIERS,
    PartitionKey,
    check_partitioning,
    check_tier,
    file_schema,
    partition_columns,
    partition_days,
    partition_of,
    replaces_days,
    tier_schema,
)
from lake.locking import writer_lock
from lake.maintenance import CompactResult, VacuumResult, compact_partitions
from lake.prepare import sort_rows, split_partitions
from lake.read import read_partition_file
from lake.snapshot import Entry, LakeFile, LakeFiles, Snapshot
from lake.storage import LakeStorage
from lake.writer import remove_action, write_file

# Table properties set at creation. A checkpoint every 50 commits keeps loading a table with
# thousands of commits to one parquet checkpoint plus at most 49 JSON files.
TABLE_CONFIGURATION = {"delta.checkpointInterval": "50"}
_PINNED_CACHE = 16  # parsed snapshots kept per Lake, for readers pinned at older versions
_IO_THREADS = min(4, os.cpu_count() or 1)
# Commit attempts of one replace_days on object storage, where concurrent writers can race.
_COMMIT_ATTEMPTS = 8


def _holding(
    snapshot: Snapshot, wanted: set[DayKey]
) -> Iterator[tuple[Entry, PartitionKey, list[DayKey]]]:
    """The snapshot's files whose days hold one in ``wanted``, with those days: a month
    partition of the fine tiers holds many files."""
    tier = snapshot.tier
    for key in sorted({partition_of(tier, u, d) for u, d in wanted}, key=str):
        for entry in snapshot.by_partition.get(key, ()):
            first, last = entry.file.first_day, entry.file.last_day
            days = [
                (key[0], first + timedelta(days=n))
                for n in range((last - first).days + 1)
                if (key[0], first + timedelta(days=n)) in wanted
            ]
            if days:
                yield entry, key, days


def _pairs(days: Iterable[tuple[int, date]]) -> set[DayKey]:
    pairs: set[DayKey] = set()
    for user_id, day in days:
        if isinstance(day, datetime) or not isinstance(day, date):
            raise TypeError(f"day must be a datetime.date, got {day!r}")
        pairs.add((int(user_id), day))
    return pairs


def _utc_day(moment: datetime, name: str) -> date:
    if moment.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {moment!r}")
    return moment.astimezone(UTC).date()


class Lake:
    """The historic store under ``root``: ``<root>/raw``, ``<root>/agg_1m``, ...

    ``root`` is a local folder or ``s3://bucket/prefix`` (``storage_options``: endpoint and
    credentials, see ``lake.storage``). Thread-safe. Writers (replace_days, compact, vacuum)
    serialize per tier through an advisory file lock, so several processes on one host may
    share a local root; on object storage the Delta commit arbitrates (see ``writer_lock``).
    """

    def __init__(self, root: str | Path, storage_options: Mapping[str, str] | None = None) -> None:
        self.storage = LakeStorage(root, storage_options)
        self.root = self.storage.root
        if "=" in self.root:
            # DuckDB's hive_partitioning parses every `key=value` folder of a path.
            raise ValueError(f"lake root must not contain '=': {self.root}")
        self._lock = threading.Lock()
        self._latest: dict[str, Snapshot] = {}
        self._snapshots: OrderedDict[tuple[str, int], Snapshot] = OrderedDict()
        # The writers' delta-rs tables, kept open and brought forward by the commits since
        # (update_incremental): opening one replays its whole log state, which grows with the
        # lake, for each commit. Used only under the tier's writer lock.
        self._writers: dict[str, DeltaTable] = {}
        # Whole-state loads (what a long-lived Lake avoids): snapshots built from a table's
        # full file list, and delta-rs opens of a table. Test and bench figures.
        self.snapshot_loads = 0
        self.table_opens = 0

    def table_dir(self, tier: str) -> str:
        return self.storage.join(check_tier(tier))

    def _table(self, tier: str, version: int | None = None) -> DeltaTable:
        self.table_opens += 1
        table = DeltaTable(
            self.table_dir(tier), version=version, storage_options=self.storage.storage_options
        )
        # A table of an older layout must never be read with this one's partition columns.
        check_partitioning(tier, table.metadata().partition_columns)
        return table

    def _exists(self, tier: str) -> bool:
        # Not DeltaTable.is_deltatable: its listing hangs against some S3 servers (moto).
        return self.storage.has_children(f"{self.table_dir(tier)}/_delta_log")

    # -- reading -------------------------------------------------------------------------

    def version(self, tier: str, recheck: bool = False) -> int | None:
        """Latest committed version of a tier's table, None if it does not exist yet.

        ``recheck``: also make sure the log still holds the version this Lake cached (one
        more stat); if it does not (commits lost, a log restored from a backup), forget what
        was cached of the table and read it again. Writers' safety checks ask for this."""
        if recheck:
            self._recheck(tier)
        snapshot = self._latest_snapshot(tier)
        return None if snapshot is None else snapshot.version

    def _recheck(self, tier: str) -> None:
        with self._lock:
            current = self._latest.get(tier)
            if current is None or self.storage.exists(
                log_entry(self.table_dir(tier), current.version)
            ):
                return
            del self._latest[tier]
            for key in [k for k in self._snapshots if k[0] == tier]:
                del self._snapshots[key]
            self._writers.pop(tier, None)

    def files(
        self,
        tier: str,
        user_ids: Sequence[int] | None,
        start: datetime,
        end: datetime,
        version: int | None = None,
    ) -> LakeFiles:
        """Files of a pinned version (latest if None) for those users (None: all) whose days
        overlap [start, end) (UTC, end exclusive)."""
        first_day = _utc_day(start, "start")
        last_day = _utc_day(end - timedelta(microseconds=1), "end")
        snapshot = self._snapshot(tier, version)
        if snapshot is None:
            return LakeFiles(tier, None, ())
        if end <= start:
            return LakeFiles(tier, snapshot.version, ())
        return LakeFiles(tier, snapshot.version, snapshot.select(user_ids, first_day, last_day))

    def day_stats(
        self,
        tier: str,
        pairs: Iterable[tuple[int, date]],
        version: int | None = None,
        damaged: dict[DayKey, str] | None = None,
    ) -> dict[DayKey, DayStat]:
        """(rows, checksum) per requested (user_id, day), read back from the lake files.

        Days without rows in the lake report (0, 0). A file that cannot be read raises, unless
        ``damaged`` is given: its days then go there (with the file and the reason) instead.
        """
        wanted = _pairs(pairs)
        snapshot = self._snapshot(tier, version)
        jobs = [] if snapshot is None else list(_holding(snapshot, wanted))

        def stats_of(job: tuple[Entry, PartitionKey, list[DayKey]]) -> dict[DayKey, DayStat]:
            entry, key, asked = job  # asked: the file's days among those wanted
            lake_file = entry.file
            try:
                table = read_partition_file(self.storage, tier, lake_file.path, key)
            except (pa.ArrowException, OSError) as exc:
                if damaged is None:
                    raise
                for day in asked:
                    damaged[day] = f"{lake_file.path}: {exc}"
                return {}
            # Checksum only the days asked: a day of a participant-month file is a thirtieth
            # of it, and summing every day cost more than reading the file (tiering reads one
            # day of each month file back: 4.9 of ~8 ms per file at cohort scale).
            if len(asked) <= (lake_file.last_day - lake_file.first_day).days:
                days = pa.array([day for _, day in asked], pa.date32())
                table = table.filter(pc.is_in(table["date"], value_set=days))
            return {k: v for k, v in day_checksums(tier, table).items() if k in wanted}

        with ThreadPoolExecutor(_IO_THREADS) as pool:
            merged = merge_checksums(pool.map(stats_of, jobs))
        lost = set(damaged or ())
        return {pair: merged.get(pair, (0, 0)) for pair in sorted(wanted) if pair not in lost}

    def day_files(self, tier: str, pairs: Iterable[DayKey]) -> dict[DayKey, tuple[str, LakeFile]]:
        """(path relative to the table folder, file) of the file holding each asked day in the
        latest version; a day no file holds, or several do, is left out."""
        wanted = _pairs(pairs)
        snapshot = self._latest_snapshot(tier)
        if snapshot is None:
            return {}
        holders: dict[DayKey, list[Entry]] = {}
        for entry, _, days in _holding(snapshot, wanted):
            for day in days:
                holders.setdefault(day, []).append(entry)
        return {
            day: (entries[0].relative_path, entries[0].file)
            for day, entries in holders.items()
            if len(entries) == 1
        }

    def entries(self, tier: str, version: int | None = None) -> list[tuple[str, LakeFile]]:
        """(path relative to the table folder, file) of every file of a version (latest if
        None); empty while the table does not exist."""
        snapshot = self._snapshot(tier, version)
        if snapshot is None:
            return []
        return [(e.relative_path, e.file) for e in snapshot.by_path.values()]

    def added_files(self, tier: str, version: int) -> list[tuple[str, LakeFile]]:
        """(relative path, file) of the files the commit of ``version`` added: what a writer
        records and verifies after its replace_days (a rewritten month included)."""
        current = self._snapshot(tier, version)
        if current is None:
            return []
        before = self._snapshot(tier, version - 1) if version > 0 else None
        return [(entry.relative_path, entry.file) for entry in current.added_since(before)]

    def relative_path(self, tier: str, lake_file: LakeFile) -> str:
        """A file's path relative to its table folder (how the catalog records it)."""
        return self.storage.relative(lake_file.path, self.table_dir(tier))

    def total_bytes(self, tier: str | None = None) -> int:
        """Bytes of the files in the latest version of one tier (None: all tiers)."""
        total = 0
        for name in TIERS if tier is None else (check_tier(tier),):
            snapshot = self._latest_snapshot(name)
            total += 0 if snapshot is None else snapshot.total_bytes
        return total

    # -- snapshot cache ------------------------------------------------------------------

    def _remember(self, snapshot: Snapshot) -> Snapshot:
        key = (snapshot.tier, snapshot.version)
        self._snapshots[key] = snapshot
        self._snapshots.move_to_end(key)
        while len(self._snapshots) > _PINNED_CACHE:
            self._snapshots.popitem(last=False)
        return snapshot

    def _latest_snapshot(self, tier: str) -> Snapshot | None:
        table_dir = self.table_dir(tier)
        with self._lock:
            current = self._latest.get(tier)
            if current is not None:
                # A commit is one atomically created JSON file: one stat tells whether the
                # cached snapshot is still the latest, and the new commits move it forward.
                if not self.storage.exists(log_entry(table_dir, current.version + 1)):
                    return current
                delta = read_commits(self.storage, table_dir, current.version)
                if delta is not None:
                    snapshot = self._snapshots.get((tier, delta.version))
                    snapshot = snapshot or current.advance(table_dir, delta)
                    self._latest[tier] = self._remember(snapshot)
                    return snapshot
            if not self._exists(tier):
                return None
            try:
                table = self._table(tier)
            except TableNotFoundError:  # being created right now
                return None
            snapshot = self._snapshots.get((tier, table.version())) or self._build(tier, table)
            self._latest[tier] = self._remember(snapshot)
            return snapshot

    def _snapshot(self, tier: str, version: int | None) -> Snapshot | None:
        latest = self._latest_snapshot(tier)
        if version is None:
            return latest
        if latest is None or not 0 <= version <= latest.version:
            newest = None if latest is None else latest.version
            raise ValueError(f"{tier}: version {version} does not exist (latest: {newest})")
        with self._lock:
            cached = self._snapshots.get((tier, version))
            if cached is not None:
                self._snapshots.move_to_end((tier, version))
                return cached
        # Load outside the lock: reconstructing an old version may take a moment.
        snapshot = self._build(tier, self._table(tier, version))
        with self._lock:
            return self._remember(snapshot)

    def _build(self, tier: str, table: DeltaTable) -> Snapshot:
        self.snapshot_loads += 1
        actions = pa.table(table.get_add_actions(flatten=True))
        return Snapshot.from_add_actions(tier, table.version(), self.table_dir(tier), actions)

    # -- writing -------------------------------------------------------------------------

    def _open_for_write(self, tier: str) -> DeltaTable:
        """The table at its latest version, created if missing (caller holds the writer lock)."""
        kept = self._writers.get(tier)
        # A log that lost the kept version's commit (or was replaced) is opened afresh.
        if kept is not None and self.storage.exists(
            log_entry(self.table_dir(tier), kept.version())
        ):
            try:
                kept.update_incremental()
                return kept
            except DeltaError:
                pass
        self._writers.pop(tier, None)
        table = self._open_or_create(tier)
        self._writers[tier] = table
        return table

    def _open_or_create(self, tier: str) -> DeltaTable:
        table_dir = self.table_dir(tier)
        if self._exists(tier):
            try:
                return self._table(tier)
            except TableNotFoundError:  # a creation was interrupted before its first commit
                pass
        self.storage.make_folder(table_dir)
        return DeltaTable.create(
            table_dir,
            storage_options=self.storage.storage_options,
            schema=tier_schema(tier),
            mode="ignore",
            partition_by=list(partition_columns(tier)),
            configuration=TABLE_CONFIGURATION,
        )

    def _writer_snapshot(self, tier: str, table: DeltaTable) -> Snapshot:
        """The snapshot of the writer's table version (normally the cached latest one)."""
        latest = self._latest_snapshot(tier)
        if latest is not None and latest.version == table.version():
            return latest
        snapshot = self._build(tier, table)
        with self._lock:
            return self._remember(snapshot)

    def _commit(
        self, tier: str, table: DeltaTable, actions: list[AddAction | RemoveAction], operation: str
    ) -> int:
        read_version = table.version()
        table.create_write_transaction(
            actions,
            "append",  # with explicit removes: the only mode that takes exact file actions
            tier_schema(tier),
            partition_by=list(partition_columns(tier)),
            # No retries: the file lock makes us the only writer; a conflict means someone
            # bypassed it, and rebasing our removes onto their commit could duplicate rows.
            commit_properties=CommitProperties(
                custom_metadata={"stratum.operation": operation}, max_commit_retries=0
            ),
            post_commithook_properties=PostCommitHookProperties(create_checkpoint=True),
        )
        # Without retries the commit can only have landed right after the version we read.
        return read_version + 1

    def replace_days(self, tier: str, data: pa.Table, days: Iterable[tuple[int, date]]) -> int:
        """Replace ``days`` with the rows of ``data``, in one Delta commit, and return the new
        version. Removed files stay on disk for older readers.

        raw and agg_1m: exactly those (user, day)s change; ``data`` holds their new rows and
        nothing else (see ``lake.dayfiles``). agg_1h and agg_1d: every partition holding one
        of ``days`` is replaced whole, so ``data`` holds the user's whole month/year.
        """
        check_tier(tier)
        pairs = _pairs(days)
        partitions = dict(split_partitions(tier, data))
        replaced = days_by_partition(tier, pairs)
        by_day = replaces_days(tier)
        strays = sorted(
            str(key)
            for key, part in partitions.items()
            if key not in replaced or (by_day and outside(part, replaced[key]).num_rows)
        )
        if strays:
            unit = "days" if by_day else "partitions"
            raise ValueError(f"{tier}: data has rows outside the replaced {unit}: {strays}")
        with writer_lock(self.storage, tier):
            table = self._open_for_write(tier)
            written: list[AddAction] | None = None
            for attempt in range(1, _COMMIT_ATTEMPTS + 1):
                snapshot = self._writer_snapshot(tier, table)
                now_ms = int(time.time() * 1000)
                if by_day:
                    actions = self._day_actions(tier, snapshot, partitions, replaced, now_ms)
                else:
                    if written is None:  # whole partitions: the files do not depend on the version
                        written = self._write_all(tier, list(partitions.items()))
                    removes = [
                        remove_action(tier, entry, now_ms)
                        for key in replaced
                        for entry in snapshot.by_partition.get(key, ())
                    ]
                    actions = [*written, *removes]
                if not actions:
                    return table.version()
                try:
                    return self._commit(tier, table, actions, "replace_days")
                except CommitFailedError:
                    if self.storage.is_local or attempt == _COMMIT_ATTEMPTS:
                        raise
                # Another process committed this version first (object storage has no lock
                # across processes): replace what the newer version holds instead, so the
                # later commit wins the days whole.
                table = self._open_for_write(tier)
            raise AssertionError("unreachable")

    def _write_all(self, tier: str, parts: list[tuple[PartitionKey, pa.Table]]) -> list[AddAction]:
        table_dir = self.table_dir(tier)

        def write(part: tuple[PartitionKey, pa.Table]) -> AddAction:
            return write_file(self.storage, table_dir, tier, part[0], sort_rows(part[1]))

        with ThreadPoolExecutor(_IO_THREADS) as pool:
            return list(pool.map(write, parts))

    def _day_actions(
        self,
        tier: str,
        snapshot: Snapshot | None,
        partitions: Mapping[PartitionKey, pa.Table],
        replaced: Mapping[PartitionKey, frozenset[date]],
        now_ms: int,
    ) -> list[AddAction | RemoveAction]:
        """Files to write and remove to replace exactly these days (see lake.dayfiles)."""
        columns = file_schema(tier).names
        parts: list[tuple[PartitionKey, pa.Table]] = []
        removes: list[AddAction | RemoveAction] = []
        for key, plan in plan_days(snapshot, replaced).items():
            new = partitions.get(key)
            if plan.rewritten:
                kept = kept_rows(self.storage, tier, key, plan.rewritten, replaced[key])
                merged = [t.select(columns) for t in kept] + ([] if new is None else [new])
                parts.append((key, pa.concat_tables(merged)))
            elif new is not None:
                parts.extend((key, run) for run in split_runs(new, replaced[key]))
            removes.extend(
                remove_action(tier, entry, now_ms) for entry in (*plan.removed, *plan.rewritten)
            )
        adds = self._write_all(tier, [(k, t) for k, t in parts if t.num_rows])
        return [*adds, *removes]

    def compact(self, tier: str, settled_before: date | None = None) -> CompactResult:
        """Merge every partition holding more than one file into one file sorted by (metric,
        ts), in one commit; ``settled_before``: only partitions whose days all lie before it.

        The fine tiers get one file per participant-month this way: a month still receiving
        days keeps one file per synced run (at most one per day) until it is settled, so late
        data into it costs no rewrite."""
        started = time.perf_counter()
        with writer_lock(self.storage, check_tier(tier)):
            if not self._exists(tier):
                return CompactResult(tier, None, 0, 0, 0, 0, 0, time.perf_counter() - started)
            table = self._open_for_write(tier)
            snapshot = self._writer_snapshot(tier, table)
            crowded = {
                key: entries
                for key, entries in snapshot.by_partition.items()
                if len(entries) > 1
                and (settled_before is None or partition_days(tier, key)[1] < settled_before)
            }
            if not crowded:
                return CompactResult(
                    tier, snapshot.version, 0, 0, 0, 0, 0, time.perf_counter() - started
                )
            damaged: list[tuple[str, LakeFile, str]] = []
            actions, added, bytes_before, bytes_after = compact_partitions(
                self.storage, tier, self.table_dir(tier), crowded, int(time.time() * 1000), damaged
            )
            removed = sum(isinstance(a, RemoveAction) for a in actions)
            version = table.version()
            if actions:
                version = self._commit(tier, table, actions, "compact")
                # A compaction removes many files at once: a checkpoint right away spares
                # every later open the replay of those removes (issue 12: <= 100 ms).
                self._open_for_write(tier).create_checkpoint()
            return CompactResult(
                tier,
                version,
                len(added),  # one file per partition compacted
                removed,
                len(added),
                bytes_before,
                bytes_after,
                time.perf_counter() - started,
                tuple(damaged),
                tuple(added),
            )

    def vacuum(self, retention_hours: int) -> VacuumResult:
        """Delete files no version younger than ``retention_hours`` references, in all tiers:
        files removed longer ago than that, and orphans (crashed writes) older than that."""
        if retention_hours < 0:
            raise ValueError("retention_hours must be >= 0")
        started = time.perf_counter()
        deleted: dict[str, int] = {}
        for tier in TIERS:
            with writer_lock(self.storage, tier):
                if not self._exists(tier):
                    continue
                table = self._open_for_write(tier)
                # full=True also reclaims never-committed files left by killed writers.
                paths = table.vacuum(
                    retention_hours=retention_hours,
                    dry_run=False,
                    enforce_retention_duration=False,
                    full=True,
                )
                deleted[tier] = len(paths)
        return VacuumResult(deleted, time.perf_counter() - started)
