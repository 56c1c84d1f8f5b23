"""The parsed file list of one table version, indexed for pruning by user and day range."""

from __future__ import annotations

import bisect
import functools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa

from lake.deltalog import LogDelta
from lake.layout import PartitionKey, partition_columns, partition_days, partition_from_values


@dataclass(frozen=True)
class LakeFile:
    """One parquet file of a table version; ``first_day``..``last_day`` bound its rows' dates."""

    path: str
    user_id: int
    first_day: date
    last_day: date
    rows: int
    size_bytes: int


@dataclass(frozen=True)
class LakeFiles:
    """An exact file list of a pinned table version (``version`` None: no table yet)."""

    tier: str
    version: int | None
    files: tuple[LakeFile, ...]

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


@dataclass(frozen=True)
class Entry:
    """A file as the Delta log names it (needed to remove it in a later commit)."""

    relative_path: str
    partition: PartitionKey
    file: LakeFile


@dataclass(frozen=True)
class _UserIndex:
    # A user's partitions are disjoint day ranges, so `firsts` and `lasts` are both sorted and
    # a day-range query is two bisections.
    keys: tuple[PartitionKey, ...]
    firsts: tuple[date, ...]
    lasts: tuple[date, ...]
    groups: tuple[tuple[LakeFile, ...], ...]


def _file_order(lake_file: LakeFile) -> tuple[date, str]:
    return (lake_file.first_day, lake_file.path)


def _index_user(
    tier: str, keys: Iterable[PartitionKey], by_partition: Mapping[PartitionKey, list[Entry]]
) -> _UserIndex:
    ranked = sorted((*partition_days(tier, key), key) for key in keys)
    groups = []
    for _, _, key in ranked:
        group = [entry.file for entry in by_partition[key]]
        if len(group) > 1:
            group.sort(key=_file_order)
        groups.append(tuple(group))
    return _UserIndex(
        keys=tuple(k for _, _, k in ranked),
        firsts=tuple(first for first, _, _ in ranked),
        lasts=tuple(last for _, last, _ in ranked),
        groups=tuple(groups),
    )


@dataclass(frozen=True)
class _UserView:
    """One user's files: what the lazily built parts of a Snapshot are made of."""

    entries: tuple[Entry, ...]
    by_partition: dict[PartitionKey, list[Entry]]
    index: _UserIndex

    @classmethod
    def of(cls, tier: str, entries: tuple[Entry, ...]) -> _UserView:
        by_partition: dict[PartitionKey, list[Entry]] = {}
        for entry in entries:
            by_partition.setdefault(entry.partition, []).append(entry)
        return cls(entries, by_partition, _index_user(tier, by_partition, by_partition))


class _AddColumns:
    """The add actions of a loaded table version as plain columns, grouped by user.

    Making these costs a few milliseconds for 12,000 files, where an Entry per file costs
    ~15 us each (issue 12: opening a tier at cohort scale <= 100 ms). A user's Entries are
    made from them when that user is first asked for."""

    def __init__(self, tier: str, table_dir: str, actions: pa.Table) -> None:
        user_col, label_col = partition_columns(tier)
        self.parse = _EntryParser(tier, table_dir)
        self.paths: list[str] = actions.column("path").to_pylist()
        self.sizes: list[int] = actions.column("size_bytes").to_pylist()
        self.records = _column(actions, "num_records")
        self.labels = _column(actions, f"partition.{label_col}")
        # Day numbers, not dates: converting a date32 column to Python dates is the slow part.
        self.lows = _day_numbers(actions, "min.date")
        self.highs = _day_numbers(actions, "max.date")
        users = _user_numbers(actions, f"partition.{user_col}")
        order = np.argsort(users, kind="stable")  # keeps the log's order within a user
        ranked = users[order]
        cuts = np.flatnonzero(ranked[1:] != ranked[:-1]) + 1
        starts = [0, *cuts.tolist()]
        self.rows_of: dict[int, list[int]] = (
            {
                int(ranked[start]): rows.tolist()
                for start, rows in zip(starts, np.split(order, cuts), strict=True)
            }
            if len(order)
            else {}
        )
        self.total_bytes = sum(self.sizes)
        self._user_of_path: dict[str, int] | None = None

    def entries(self, user_id: int) -> tuple[Entry, ...]:
        parse = self.parse
        return tuple(
            parse(
                self.paths[row],
                self.sizes[row],
                self.records[row],
                user_id,
                self.labels[row],
                _day(self.lows[row]),
                _day(self.highs[row]),
            )
            for row in self.rows_of.get(user_id, ())
        )

    def bytes_of(self, user_id: int) -> int:
        return sum(self.sizes[row] for row in self.rows_of.get(user_id, ()))

    def user_of(self, relative: str) -> int | None:
        """The user of a file of this version (to apply a later remove action)."""
        if self._user_of_path is None:
            # Benign race: two threads would build equal dicts.
            self._user_of_path = {
                self.paths[row]: user for user, rows in self.rows_of.items() for row in rows
            }
        return self._user_of_path.get(relative)


class _PartitionMap(Mapping[PartitionKey, list[Entry]]):
    """``Snapshot.by_partition``: a lookup indexes only the key's user; iterating, all."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def __getitem__(self, key: PartitionKey) -> list[Entry]:
        view = self._snapshot._view(key[0])
        if view is None:
            raise KeyError(key)
        return view.by_partition[key]

    def __iter__(self) -> Iterator[PartitionKey]:
        for user_id in self._snapshot.user_ids:
            view = self._snapshot._view(user_id)
            if view is not None:
                yield from view.by_partition

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Snapshot:
    """Files of one (tier, version), by path, by partition and by user. Immutable.

    Loaded from a table, it keeps the add actions as columns (``_AddColumns``) and indexes a
    user's files when that user is first asked for (a one-participant query indexes one
    participant); ``files`` and ``by_path`` index every user, once. Moved forward by later
    commits (``advance``), it shares those columns and holds the touched users' files apart.
    The lazily built parts are caches of pure functions of immutable data: two threads
    filling one at once fill it with equal values, so no lock is needed.
    """

    def __init__(
        self,
        tier: str,
        version: int,
        base: _AddColumns | None,
        changed: Mapping[int, tuple[Entry, ...]],
        changed_paths: Mapping[str, int],
        views: Mapping[int, _UserView] | None = None,
    ) -> None:
        self.tier = tier
        self.version = version
        self._base = base
        # Users whose files differ from `base` (an empty tuple: none left), and the user of
        # each of their files' paths.
        self._changed = changed
        self._changed_paths = changed_paths
        kept = set() if base is None else set(base.rows_of) - set(changed)
        self.user_ids: list[int] = sorted(kept | {u for u, e in changed.items() if e})
        self.by_partition: Mapping[PartitionKey, list[Entry]] = _PartitionMap(self)
        self._views: dict[int, _UserView] = dict(views or {})
        self._files: tuple[LakeFile, ...] | None = None
        self._by_path: dict[str, Entry] | None = None

    @classmethod
    def build(cls, tier: str, version: int, entries: Iterable[Entry]) -> Snapshot:
        by_user: dict[int, list[Entry]] = {}
        for entry in entries:
            by_user.setdefault(entry.partition[0], []).append(entry)
        changed = {u: tuple(e) for u, e in by_user.items()}
        paths = {e.relative_path: u for u, es in changed.items() for e in es}
        return cls(tier, version, None, changed, paths)

    @classmethod
    def from_add_actions(
        cls, tier: str, version: int, table_dir: str, actions: pa.Table
    ) -> Snapshot:
        """Build from ``DeltaTable.get_add_actions(flatten=True)``."""
        return cls(tier, version, _AddColumns(tier, table_dir, actions), {}, {})

    # -- per user, on demand ----------------------------------------------------------------

    def _entries_of(self, user_id: int) -> tuple[Entry, ...]:
        changed = self._changed.get(user_id)
        if changed is not None:
            return changed
        return () if self._base is None else self._base.entries(user_id)

    def _view(self, user_id: int) -> _UserView | None:
        view = self._views.get(user_id)
        if view is None:
            entries = self._entries_of(user_id)
            if not entries:
                return None
            view = self._views.setdefault(user_id, _UserView.of(self.tier, entries))
        return view

    def _user_of(self, relative: str) -> int | None:
        user_id = self._changed_paths.get(relative)
        if user_id is None and self._base is not None:
            user_id = self._base.user_of(relative)
        return user_id

    @property
    def indexed_users(self) -> int:
        """How many users' files have been indexed so far (what was asked for)."""
        return len(self._views)

    # -- whole-table views (maintenance, not the request path) -------------------------------

    @property
    def files(self) -> tuple[LakeFile, ...]:
        """Every file, by user then day."""
        if self._files is None:
            views = [self._view(u) for u in self.user_ids]
            self._files = tuple(
                f
                for view in views
                if view is not None
                for group in view.index.groups
                for f in group
            )
        return self._files

    @functools.cached_property
    def _day_span(self) -> tuple[date, date]:
        """First and last day of any file (of ``files``)."""
        every = self.files
        return min(f.first_day for f in every), max(f.last_day for f in every)

    @property
    def by_path(self) -> Mapping[str, Entry]:
        if self._by_path is None:
            self._by_path = {
                e.relative_path: e
                for u in self.user_ids
                for e in (self._view(u) or _NO_VIEW).entries
            }
        return self._by_path

    @property
    def total_bytes(self) -> int:
        total = 0 if self._base is None else self._base.total_bytes
        for user_id, entries in self._changed.items():
            if self._base is not None:
                total -= self._base.bytes_of(user_id)
            total += sum(e.file.size_bytes for e in entries)
        return total

    def added_since(self, before: Snapshot | None) -> list[Entry]:
        """Entries of this version that ``before`` (an older version) does not hold."""
        if before is None:
            return list(self.by_path.values())
        if before._base is not self._base:
            known = before.by_path
            return [e for relative, e in self.by_path.items() if relative not in known]
        # Both moved forward from one load: only the users either changed can differ.
        added: list[Entry] = []
        for user_id in sorted(set(self._changed) | set(before._changed)):
            old = {e.relative_path for e in before._entries_of(user_id)}
            added.extend(e for e in self._entries_of(user_id) if e.relative_path not in old)
        return added

    def advance(self, table_dir: str, delta: LogDelta) -> Snapshot:
        """The snapshot after applying ``delta``; only the touched users are re-indexed."""
        parse = self._base.parse if self._base is not None else _EntryParser(self.tier, table_dir)
        removed: dict[int, set[str]] = {}
        for relative in delta.removed:
            user_id = self._user_of(relative)
            if user_id is not None:
                removed.setdefault(user_id, set()).add(relative)
        added: dict[int, dict[str, Entry]] = {}
        for relative, add in delta.added.items():
            entry = parse.add_action(relative, add)
            added.setdefault(entry.partition[0], {})[relative] = entry
        changed = dict(self._changed)
        paths = dict(self._changed_paths)
        for user_id in removed.keys() | added.keys():
            before = self._entries_of(user_id)
            gone = removed.get(user_id, set())
            new = added.get(user_id, {})
            # An add of a path already listed replaces that file (as a Delta log replay does).
            entries = (
                *(e for e in before if e.relative_path not in gone and e.relative_path not in new),
                *new.values(),
            )
            for entry in before:
                paths.pop(entry.relative_path, None)
            paths.update((e.relative_path, user_id) for e in entries)
            changed[user_id] = entries
        # The untouched users' indexes stay valid: a query after a commit does not rebuild
        # them. dict() copies at once, while other threads may be adding views.
        kept = {u: v for u, v in dict(self._views).items() if u not in removed and u not in added}
        return Snapshot(self.tier, delta.version, self._base, changed, paths, kept)

    def select(
        self, user_ids: Sequence[int] | None, first_day: date, last_day: date
    ) -> tuple[LakeFile, ...]:
        """Files of those users (None: all) whose days overlap [first_day, last_day]."""
        if first_day > last_day:
            return ()
        if user_ids is None:
            every = self.files
            if every and first_day <= self._day_span[0] and last_day >= self._day_span[1]:
                return every  # the whole table (a cohort-wide scan): no filtering
        selected: list[LakeFile] = []
        for user_id in self.user_ids if user_ids is None else sorted(set(user_ids)):
            view = self._view(user_id)
            if view is None:
                continue
            index = view.index
            low = bisect.bisect_left(index.lasts, first_day)
            high = bisect.bisect_right(index.firsts, last_day)
            for group in index.groups[low:high]:
                selected.extend(
                    f for f in group if f.first_day <= last_day and f.last_day >= first_day
                )
        return tuple(selected)


_NO_VIEW = _UserView((), {}, _UserIndex((), (), (), ()))
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


@functools.lru_cache(maxsize=65536)
def _date_of(day_number: int) -> date:
    return date.fromordinal(_EPOCH_ORDINAL + day_number)


def _day(day_number: int | None) -> date | None:
    return None if day_number is None else _date_of(day_number)


def _day_numbers(actions: pa.Table, name: str) -> list[int | None]:
    if name not in actions.column_names:
        return [None] * actions.num_rows
    return actions.column(name).cast(pa.int32()).to_pylist()


def _user_numbers(actions: pa.Table, name: str) -> np.ndarray:
    """The user ids of the add actions (partition values may come as text)."""
    if name not in actions.column_names or actions.column(name).null_count:
        raise ValueError(f"{name}: add actions without a user_id partition value")
    return actions.column(name).cast(pa.int64()).to_numpy()


def _column(actions: pa.Table, name: str) -> list[Any]:
    if name in actions.column_names:
        return actions.column(name).to_pylist()
    return [None] * actions.num_rows


class _EntryParser:
    """Turns one add action (from delta-rs or from a JSON commit) into an Entry."""

    def __init__(self, tier: str, table_dir: str) -> None:
        self.tier = tier
        self.prefix = f"{table_dir}/"
        self.columns = partition_columns(tier)
        self.keys: dict[tuple[object, object], tuple[PartitionKey, date, date]] = {}

    def __call__(
        self,
        relative: str,
        size: int,
        rows: int | None,
        user: object,
        label: object,
        low: object,
        high: object,
    ) -> Entry:
        known = self.keys.get((user, label))
        if known is None:
            user_col, label_col = self.columns
            values = {
                user_col: None if user is None else str(user),
                label_col: None if label is None else str(label),
            }
            key = partition_from_values(self.tier, values)
            # Interned: every file of a month partition shares one key and one bound pair.
            known = self.keys[(user, label)] = (key, *partition_days(self.tier, key))
        key, first, last = known
        # Coarse tiers keep `date` inside their files: its stats bound a file tighter than
        # its month/year partition does.
        if isinstance(low, date) and isinstance(high, date):
            first, last = max(first, low), min(last, high)
        lake_file = LakeFile(
            path=self.prefix + (unquote(relative) if "%" in relative else relative),
            user_id=key[0],
            first_day=first,
            last_day=last,
            rows=-1 if rows is None else int(rows),
            size_bytes=int(size),
        )
        return Entry(relative, key, lake_file)

    def add_action(self, relative: str, add: Mapping[str, Any]) -> Entry:
        values = add.get("partitionValues") or {}
        stats = json.loads(add["stats"]) if add.get("stats") else {}
        low = stats.get("minValues", {}).get("date")
        high = stats.get("maxValues", {}).get("date")
        return self(
            relative,
            add["size"],
            stats.get("numRecords"),
            values.get(self.columns[0]),
            values.get(self.columns[1]),
            None if low is None else date.fromisoformat(low),
            None if high is None else date.fromisoformat(high),
        )
