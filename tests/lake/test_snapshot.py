"""The Snapshot indexes a participant's files when first asked (issue 12: opening a tier at
cohort scale <= 100 ms); whatever is asked first, it answers as an index of every file."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lake import Lake, LakeFile
from lake.layout import data_schema, partition_columns, partition_days
from lake.snapshot import Snapshot
from tests.lake.builders import ALL_TIME, days_from, tier_rows

USERS = (1, 2, 3, 4)
SPANS = [
    (date(2000, 1, 1), date(2100, 1, 1)),
    (date(2024, 1, 30), date(2024, 2, 2)),
    (date(2024, 2, 1), date(2024, 2, 1)),
    (date(2024, 3, 1), date(2024, 3, 31)),
]


def expected_files(lake: Lake, tier: str, version: int) -> dict[str, LakeFile]:
    """Every file of a version, straight from delta-rs's add actions, one at a time."""
    table_dir = lake.table_dir(tier)
    actions = DeltaTable(table_dir, version=version).get_add_actions(flatten=True)
    user_col, label_col = partition_columns(tier)
    files = {}
    for add in pa.table(actions).to_pylist():
        user_id, label = int(add[f"partition.{user_col}"]), add[f"partition.{label_col}"]
        first, last = partition_days(tier, (user_id, label))
        if add.get("min.date") is not None:
            first, last = max(first, add["min.date"]), min(last, add["max.date"])
        files[add["path"]] = LakeFile(
            f"{table_dir}/{add['path']}",
            user_id,
            first,
            last,
            add["num_records"],
            add["size_bytes"],
        )
    return files


def selected(
    files: dict[str, LakeFile], users: list[int] | None, first: date, last: date
) -> tuple[LakeFile, ...]:
    chosen = [
        f
        for f in files.values()
        if (users is None or f.user_id in users) and f.first_day <= last and f.last_day >= first
    ]
    return tuple(sorted(chosen, key=lambda f: (f.user_id, f.first_day, f.path)))


def check(snapshot: Snapshot, files: dict[str, LakeFile], tier: str, order: str) -> None:
    """``snapshot`` answers as ``files``; ``order``: what is asked first of a fresh one."""
    asks = {
        "one user": lambda: snapshot.select([2], *SPANS[1]),
        "a partition": lambda: snapshot.by_partition.get((3, "2024-02"), ()),
        "everything": lambda: snapshot.files,
        "by path": lambda: snapshot.by_path,
    }
    asks[order]()
    assert snapshot.total_bytes == sum(f.size_bytes for f in files.values())
    for users in (None, [2], [3, 1], [4, 9]):
        for span in SPANS:
            assert snapshot.select(users, *span) == selected(files, users, *span), (users, span)
    assert {p: e.file for p, e in snapshot.by_path.items()} == files
    assert snapshot.files == selected(files, None, date.min, date.max)
    by_partition: dict[tuple[int, str], set[str]] = {}
    for relative, f in files.items():
        label = relative.split("/")[1].split("=")[1]
        by_partition.setdefault((f.user_id, label), set()).add(relative)
    assert {k: {e.relative_path for e in v} for k, v in snapshot.by_partition.items()} == (
        by_partition
    )
    for key, relatives in by_partition.items():
        assert {e.relative_path for e in snapshot.by_partition.get(key, ())} == relatives
        assert all(e.partition == key for e in snapshot.by_partition[key])
    assert snapshot.by_partition.get((9, "2024-02"), ()) == ()
    assert (2, "1999-01") not in snapshot.by_partition
    assert snapshot.user_ids == sorted({f.user_id for f in files.values()})
    del tier


@pytest.mark.parametrize("tier", ["raw", "agg_1h"])
def test_lazy_index_equals_every_file_at_every_version(tmp_path: Path, tier: str) -> None:
    lake = Lake(tmp_path / "lake")
    # Kept Lakes, one loaded at each version: each then reads only the new commits.
    watchers: list[Lake] = []
    orders = ["one user", "a partition", "everything", "by path"]
    checked: list[int] = []

    def check_version() -> None:
        version = lake.version(tier)
        assert version is not None and version not in checked
        files = expected_files(lake, tier, version)
        assert any(f.user_id == 2 for f in files.values())
        table = DeltaTable(lake.table_dir(tier), version=version)
        actions = pa.table(table.get_add_actions(flatten=True))
        fresh = Snapshot.from_add_actions(tier, version, lake.table_dir(tier), actions)
        check(fresh, files, tier, orders[len(checked) % len(orders)])
        watchers.append(Lake(lake.root))
        for number, watcher in enumerate(watchers):
            assert watcher.version(tier) == version
            moved = watcher._snapshot(tier, None)
            assert moved is not None and moved is not fresh
            check(moved, files, tier, orders[(len(checked) + number + 1) % len(orders)])
            assert watcher.snapshot_loads == 1  # later versions came from the JSON commits
        checked.append(version)

    days = days_from(date(2024, 1, 30), 5)  # across a month boundary
    pairs = [(u, d) for u in USERS for d in days]
    lake.replace_days(tier, tier_rows(tier, pairs[:12]), pairs[:12])
    check_version()
    lake.replace_days(tier, tier_rows(tier, pairs[12:], seed=1), pairs[12:])
    check_version()
    march = [(u, date(2024, 3, 10) + timedelta(days=n)) for u in (1, 2) for n in (0, 1, 3)]
    lake.replace_days(tier, tier_rows(tier, march), march)
    check_version()
    replaced = [(2, days[2])]  # inside a file: rewritten around it
    lake.replace_days(tier, tier_rows(tier, replaced, seed=5), replaced)
    check_version()
    lake.replace_days(tier, data_schema(tier).empty_table(), [(4, d) for d in days])
    check_version()
    if lake.compact(tier).files_added:  # the coarse tiers keep one file per partition
        check_version()
    lake.replace_days(tier, tier_rows(tier, [(3, days[0])], seed=7), [(3, days[0])])
    check_version()


def test_a_one_participant_query_indexes_that_participant_only(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    pairs = [(u, d) for u in USERS for d in days_from(date(2024, 1, 30), 3)]
    lake.replace_days("raw", tier_rows("raw", pairs), pairs)
    version = lake.version("raw")
    assert version is not None
    table = DeltaTable(lake.table_dir("raw"))
    actions = pa.table(table.get_add_actions(flatten=True))
    snapshot = Snapshot.from_add_actions("raw", version, lake.table_dir("raw"), actions)

    assert snapshot.indexed_users == 0
    assert len(snapshot.select([2], date(2024, 1, 1), date(2024, 12, 31))) == 2  # two months
    assert snapshot.indexed_users == 1
    assert snapshot.by_partition.get((2, "2024-02"), ())
    assert snapshot.indexed_users == 1
    assert snapshot.total_bytes > 0
    assert snapshot.indexed_users == 1
    assert len(snapshot.files) == 2 * len(USERS)
    assert snapshot.indexed_users == len(USERS)


def test_added_files_of_a_kept_lake_are_those_of_the_commit(tmp_path: Path) -> None:
    writer = Lake(tmp_path / "lake")
    pairs = [(u, d) for u in USERS for d in days_from(date(2024, 1, 30), 3)]
    first = writer.replace_days("raw", tier_rows("raw", pairs), pairs)
    assert {f.user_id for _, f in writer.added_files("raw", first)} == set(USERS)
    lake = Lake(writer.root)  # loads the table afresh, then follows its own commits
    lake.version("raw")
    late = [(3, date(2024, 1, 31))]
    version = lake.replace_days("raw", tier_rows("raw", late, seed=2), late)
    added = lake.added_files("raw", version)
    # The file holding Jan 30-31 is rewritten with the new Jan 31.
    assert [(f.user_id, f.first_day, f.last_day) for _, f in added] == [
        (3, date(2024, 1, 30), date(2024, 1, 31))
    ]
    # Only the participant the commit touched was indexed (a sync asks this after each
    # commit: indexing every participant twice would cost it ~0.3 s at cohort scale).
    for number in (version - 1, version):
        assert lake._snapshot("raw", number).indexed_users <= 1  # type: ignore[union-attr]
    assert dict(added).keys() <= dict(lake.entries("raw")).keys()
    assert added == Lake(lake.root).added_files("raw", version)


def test_threads_indexing_one_fresh_snapshot_at_once_see_every_file(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    users = range(1, 41)
    pairs = [(u, d) for u in users for d in days_from(date(2024, 1, 30), 3)]
    lake.replace_days("agg_1d", tier_rows("agg_1d", pairs), pairs)
    version = lake.version("agg_1d")
    assert version is not None
    files = expected_files(lake, "agg_1d", version)
    actions = pa.table(DeltaTable(lake.table_dir("agg_1d")).get_add_actions(flatten=True))
    snapshot = Snapshot.from_add_actions("agg_1d", version, lake.table_dir("agg_1d"), actions)
    span = (date(2024, 1, 1), date(2024, 12, 31))

    def ask(shift: int) -> tuple[dict[int, tuple[LakeFile, ...]], tuple[LakeFile, ...]]:
        order = [*users[shift:], *users[:shift]]  # each thread indexes in its own order
        return {u: snapshot.select([u], *span) for u in order}, snapshot.files

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(0, 40, 5)))

    assert snapshot.indexed_users == len(users)
    for by_user, every in answers:
        assert by_user == {u: selected(files, [u], *span) for u in users}
        assert every == selected(files, None, date.min, date.max)


def test_a_commit_keeps_the_untouched_participants_indexes(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    pairs = [(u, d) for u in USERS for d in days_from(date(2024, 1, 30), 3)]
    lake.replace_days("raw", tier_rows("raw", pairs), pairs)
    reader = Lake(lake.root)  # a server's kept Lake
    every = reader.files("raw", list(USERS), *ALL_TIME)
    loaded = reader._snapshot("raw", None)
    assert loaded is not None and loaded.indexed_users == len(USERS)

    late = [(3, date(2024, 1, 31))]
    version = lake.replace_days("raw", tier_rows("raw", late, seed=2), late)

    moved = reader._snapshot("raw", None)
    assert moved is not None and moved.version == version
    # A cohort-wide query after each sync commit must not index every participant again.
    assert moved.indexed_users == len(USERS) - 1
    after = reader.files("raw", list(USERS), *ALL_TIME)
    assert [f for f in after.files if f.user_id != 3] == [f for f in every.files if f.user_id != 3]
    assert after == Lake(lake.root).files("raw", list(USERS), *ALL_TIME)
