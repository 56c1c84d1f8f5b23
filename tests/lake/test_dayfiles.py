"""Month partitions of the fine tiers: exact day replacement, compaction, pruning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from lake import Lake, day_checksums
from lake.layout import LayoutError, data_schema
from lake.relayout import relayout
from lake.writer import ROW_GROUP_ROWS
from tests.lake.builders import (
    ALL_TIME,
    JAN1,
    day_start,
    days_from,
    read_all,
    read_files,
    tier_rows,
)

JANUARY = days_from(JAN1, 31)
REPO = Path(__file__).parents[2]


def sync_day_by_day(lake: Lake, tier: str, source: pa.Table, days: list[date]) -> None:
    """One commit per day, as the nightly sync writes them: one file per user-day."""
    for day in days:
        users = pc.unique(source["user_id"]).to_pylist()
        lake.replace_days(
            tier, source.filter(pc.equal(source["date"], day)), [(u, day) for u in users]
        )


def same_rows(tier: str, left: pa.Table, right: pa.Table) -> bool:
    """Equal rows in any order (sorted_rows' to_pylist is too slow for a million rows)."""
    keys = [(name, "ascending") for name in ("user_id", "date", "metric", "ts")]
    names = data_schema(tier).names

    def canonical(table: pa.Table) -> pa.Table:
        return table.select(names).cast(data_schema(tier)).sort_by(keys).combine_chunks()

    return canonical(left).equals(canonical(right))


def on_days(table: pa.Table, days: set[date], keep: bool = True) -> pa.Table:
    hit = pc.is_in(table["date"], value_set=pa.array(sorted(days), pa.date32()))
    return table.filter(hit if keep else pc.invert(hit))


@pytest.mark.parametrize("tier", ["raw", "agg_1m"])
def test_replacing_one_day_of_a_compacted_month_changes_only_that_day(
    lake: Lake, tier: str
) -> None:
    pairs = [(u, d) for u in (1, 2) for d in JANUARY]
    source = tier_rows(tier, pairs, metrics=("hr", "spo2"))
    sync_day_by_day(lake, tier, source, JANUARY[:3])
    lake.replace_days(
        tier, on_days(source, set(JANUARY[3:])), [p for p in pairs if p[1] >= JANUARY[3]]
    )
    assert lake.compact(tier).files_added == 2  # one file per user-month
    compacted = lake.files(tier, None, *ALL_TIME)
    before = lake.day_stats(tier, pairs)
    late = tier_rows(tier, [(1, JANUARY[14])], metrics=("hr",), seed=7)

    version = lake.replace_days(tier, late, [(1, JANUARY[14])])

    after = lake.day_stats(tier, pairs)
    changed = {p for p in pairs if after[p] != before[p]}
    assert changed == {(1, JANUARY[14])}
    assert after[(1, JANUARY[14])] == day_checksums(tier, late)[(1, JANUARY[14])]
    expected = pa.concat_tables(
        [
            source.filter(
                pc.invert(
                    pc.and_(pc.equal(source["user_id"], 1), pc.equal(source["date"], JANUARY[14]))
                )
            ),
            late,
        ]
    )
    assert same_rows(tier, read_all(lake, tier), expected)  # bit for bit
    files = lake.files(tier, None, *ALL_TIME)
    assert len(files.files) == 2  # the month stays one file: kept days and the late day
    (user_two,) = [f for f in files.files if f.user_id == 2]
    assert user_two in compacted.files  # the other participant's file is untouched
    assert files.version == version
    # Readers pinned before the late day still read the compacted month as it was.
    assert same_rows(tier, read_files(lake, compacted), source)


def test_compaction_merges_settled_months_into_one_sorted_file(lake: Lake) -> None:
    february = days_from(date(2024, 2, 1), 3)
    days = JANUARY + february
    source = tier_rows("raw", [(1, d) for d in days], metrics=("steps", "hr"), step_seconds=20)
    sync_day_by_day(lake, "raw", source, days)
    assert len(lake.files("raw", None, *ALL_TIME).files) == 34

    # February is not settled yet: its days stay in their files.
    result = lake.compact("raw", settled_before=date(2024, 2, 3))

    assert (result.partitions, result.files_removed, result.files_added) == (1, 31, 1)
    # A checkpoint at the compaction's version: opening the table skips replaying its removes.
    assert lake.storage.exists(
        f"{lake.table_dir('raw')}/_delta_log/{result.version:020d}.checkpoint.parquet"
    )
    listed = lake.files("raw", None, *ALL_TIME).files
    assert [(f.first_day, f.last_day) for f in listed] == [
        (JAN1, JANUARY[-1]),
        *((d, d) for d in february),
    ]
    month = pq.ParquetFile(listed[0].path)
    content = month.read()
    assert content.equals(content.sort_by([("metric", "ascending"), ("ts", "ascending")]))
    assert month.metadata.num_row_groups == -(-content.num_rows // ROW_GROUP_ROWS)
    ts = content.schema.get_field_index("ts")
    for group in range(month.metadata.num_row_groups):
        statistics = month.metadata.row_group(group).column(ts).statistics
        assert statistics is not None and statistics.has_min_max  # DuckDB prunes days by these
    assert same_rows("raw", read_all(lake, "raw"), source)
    assert lake.compact("raw", settled_before=date(2024, 2, 3)).files_added == 0


def test_pruning_reads_only_files_overlapping_the_days(local_lake: Lake) -> None:
    lake = local_lake  # damages a file on disk
    pairs = [(1, d) for d in JANUARY[:6]]
    source = tier_rows("raw", pairs, metrics=("hr",))
    sync_day_by_day(lake, "raw", source, JANUARY[:6])

    listed = lake.files("raw", [1], day_start(JANUARY[2]), day_start(JANUARY[4])).files
    assert [(f.first_day, f.last_day) for f in listed] == [(JANUARY[2],) * 2, (JANUARY[3],) * 2]
    (victim,) = lake.files(
        "raw", [1], day_start(JANUARY[5]), day_start(JANUARY[5]) + timedelta(days=1)
    ).files
    Path(victim.path).write_bytes(b"not parquet")

    # Days in other files read (and verify) without touching the damaged one.
    expected = day_checksums("raw", source)
    assert lake.day_stats("raw", pairs[:5]) == {p: expected[p] for p in pairs[:5]}
    damaged: dict[tuple[int, date], str] = {}
    lake.day_stats("raw", pairs, damaged=damaged)
    assert set(damaged) == {pairs[5]}


COMPACTOR = """
import sys
from lake import Lake
Lake(sys.argv[1]).compact("raw")
print("done", flush=True)
"""


@pytest.mark.slow
def test_a_compaction_killed_at_any_instant_keeps_the_lake_whole(tmp_path: Path) -> None:
    users = range(1, 9)
    source = tier_rows("raw", [(u, d) for u in users for d in JANUARY[:8]], step_seconds=10)
    for trial, delay in enumerate([0.0, 0.2, 0.5, 1.0, 2.0]):
        root = tmp_path / f"lake{trial}"
        lake = Lake(root)
        for odd in (0, 1):  # every other day per commit: one file per user-day
            days = set(JANUARY[odd:8:2])
            lake.replace_days("raw", on_days(source, days), [(u, d) for u in users for d in days])
        pinned = lake.files("raw", None, *ALL_TIME)
        with subprocess.Popen(
            [sys.executable, "-c", COMPACTOR, str(root)], cwd=REPO, stdout=subprocess.PIPE
        ) as compactor:
            time.sleep(delay)
            os.kill(compactor.pid, signal.SIGKILL)
        fresh = Lake(root)
        assert same_rows("raw", read_all(fresh, "raw"), source)
        assert same_rows("raw", read_files(fresh, pinned), source)
        fresh.compact("raw")
        assert len(fresh.files("raw", None, *ALL_TIME).files) == len(users)
        assert same_rows("raw", read_all(fresh, "raw"), source)
        fresh.vacuum(retention_hours=0)  # orphans of the killed compaction go
        assert same_rows("raw", read_all(fresh, "raw"), source)


def test_a_table_of_the_old_day_layout_is_refused_not_misread(lake: Lake) -> None:
    pairs = [(1, JAN1)]
    write_deltalake(
        lake.table_dir("raw"),
        tier_rows("raw", pairs),
        partition_by=["user_id", "date"],
        storage_options=lake.storage.storage_options,
    )
    for action in (
        lambda: lake.files("raw", None, *ALL_TIME),
        lambda: lake.replace_days("raw", tier_rows("raw", pairs), pairs),
    ):
        with pytest.raises(LayoutError, match="stratum maintain --relayout"):
            action()


def test_relayout_rewrites_an_old_day_table_into_month_files(local_lake: Lake) -> None:
    lake = local_lake  # relayout renames folders: local lakes only
    pairs = [
        (u, d) for u in (1, 2) for d in days_from(date(2024, 1, 30), 4) if d != date(2024, 2, 1)
    ]
    source = tier_rows("agg_1m", pairs)
    write_deltalake(lake.table_dir("agg_1m"), source, partition_by=["user_id", "date"])

    done = relayout(lake.storage, "agg_1m")

    assert (done.files_before, done.files_after, done.rows) == (6, 4, source.num_rows)
    fresh = Lake(lake.root)
    assert fresh.day_stats("agg_1m", pairs) == day_checksums("agg_1m", source)
    assert same_rows("agg_1m", read_all(fresh, "agg_1m"), source)
    spans = sorted(
        (f.user_id, f.first_day, f.last_day) for f in fresh.files("agg_1m", None, *ALL_TIME).files
    )
    assert spans == [
        (u, first, last)
        for u in (1, 2)
        for first, last in ((date(2024, 1, 30), date(2024, 1, 31)), (date(2024, 2, 2),) * 2)
    ]
    assert relayout(fresh.storage, "agg_1m").version is None  # nothing left to do
    assert (Path(lake.root) / ".relayout-old" / "agg_1m" / "_delta_log").is_dir()
