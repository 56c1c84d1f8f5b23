"""Compaction of crowded partitions and vacuum of unreferenced files."""

from __future__ import annotations

import os
import time
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lake import Lake, maintenance
from lake.integrity import file_digest
from tests.lake.builders import (
    ALL_TIME,
    JAN1,
    days_from,
    read_all,
    read_files,
    tier_rows,
    with_partition_column,
)


def test_compact_merges_partitions_holding_several_files(lake: Lake) -> None:
    pairs = [(1, d) for d in days_from(JAN1, 2)]
    lake.replace_days("raw", tier_rows("raw", pairs, metrics=("hr",)), pairs)
    # A second file in one partition, as another Delta writer (delta-rs itself) would add it.
    extra = with_partition_column("raw", tier_rows("raw", pairs[:1], metrics=("spo2",)))
    write_deltalake(
        lake.table_dir("raw"), extra, mode="append", storage_options=lake.storage.storage_options
    )
    before = lake.files("raw", None, *ALL_TIME)
    stats_before = lake.day_stats("raw", pairs)
    assert len(before.files) == 2

    result = lake.compact("raw")

    after = lake.files("raw", None, *ALL_TIME)
    assert (result.partitions, result.files_removed, result.files_added) == (1, 2, 1)
    assert before.version is not None
    assert result.version == after.version == before.version + 1
    assert len(after.files) == 1
    assert lake.day_stats("raw", pairs) == stats_before
    assert all(lake.storage.exists(p) for p in before.paths)  # the old version stays readable
    assert read_files(lake, before).num_rows == read_all(lake, "raw").num_rows
    assert lake.compact("raw").version == after.version  # nothing left to do: no commit


def _crowded_partition(lake: Lake) -> list[tuple[int, date]]:
    pairs = [(1, d) for d in days_from(JAN1, 2)]
    lake.replace_days("raw", tier_rows("raw", pairs, metrics=("hr",)), pairs)
    extra = with_partition_column("raw", tier_rows("raw", pairs[:1], metrics=("spo2",)))
    write_deltalake(
        lake.table_dir("raw"), extra, mode="append", storage_options=lake.storage.storage_options
    )
    return pairs


def test_compacted_files_come_with_the_hash_and_day_checksums_of_their_bytes(lake: Lake) -> None:
    pairs = _crowded_partition(lake)
    expected = lake.day_stats("raw", pairs)

    result = lake.compact("raw")

    (written,) = result.added
    (compacted,) = lake.files("raw", None, *ALL_TIME).files
    assert written.relative_path == lake.relative_path("raw", compacted)
    assert written.size == compacted.size_bytes
    assert written.sha256 == file_digest(lake.storage, compacted.path)
    assert dict(written.days) == expected


def test_a_compacted_copy_that_reads_back_other_rows_is_not_committed(
    lake: Lake, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pairs = _crowded_partition(lake)
    before = lake.files("raw", None, *ALL_TIME)
    stats_before = lake.day_stats("raw", pairs)

    def one_value_off(part: pa.Table) -> pa.Table:  # a writer fault: one measure changed
        values = part.column("value").to_pylist()
        values[0] += 1.0
        return part.set_column(part.schema.get_field_index("value"), "value", pa.array(values))

    monkeypatch.setattr(maintenance, "sort_rows", one_value_off)
    result = lake.compact("raw")

    assert (result.partitions, result.files_removed, result.files_added) == (0, 0, 0)
    assert result.version == before.version  # nothing committed
    assert lake.files("raw", None, *ALL_TIME) == before
    assert lake.day_stats("raw", pairs) == stats_before
    assert "reads back other rows" in caplog.text


def test_compact_of_missing_table_does_nothing(lake: Lake) -> None:
    assert lake.compact("agg_1h").version is None


def _age(path: Path, hours: float) -> None:
    moment = time.time() - hours * 3600
    os.utime(path, (moment, moment))


def test_vacuum_respects_retention_and_the_current_version(local_lake: Lake) -> None:
    lake = local_lake  # ages files with utime: on disk only
    pairs = [(1, d) for d in days_from(JAN1, 2)]
    v1 = lake.replace_days("raw", tier_rows("raw", pairs, seed=1), pairs)
    pinned = lake.files("raw", None, *ALL_TIME)
    lake.replace_days("raw", tier_rows("raw", pairs[:1], seed=2), pairs[:1])
    current = lake.files("raw", None, *ALL_TIME)
    for path in current.paths:
        _age(Path(path), 5)  # old but referenced: must survive any retention
    partition = Path(lake.table_dir("raw")) / "user_id=1" / "month=2024-01"
    old_orphan, new_orphan = partition / "old-orphan.parquet", partition / "new-orphan.parquet"
    old_orphan.write_bytes(b"left by a killed writer")
    new_orphan.write_bytes(b"being written right now")
    _age(old_orphan, 3)

    kept = lake.vacuum(retention_hours=1)

    assert kept.files_deleted["raw"] == 1 and not old_orphan.exists()
    assert new_orphan.exists()
    assert all(Path(p).exists() for p in pinned.paths)  # removed less than an hour ago
    rows_v1 = read_files(lake, lake.files("raw", None, *ALL_TIME, version=v1)).num_rows
    assert rows_v1 == read_files(lake, pinned).num_rows

    swept = lake.vacuum(retention_hours=0)

    assert swept.total_deleted == 2  # the replaced file and the young orphan
    assert not new_orphan.exists()
    assert all(Path(p).exists() for p in lake.files("raw", None, *ALL_TIME).paths)
    assert read_all(lake, "raw").num_rows == current.rows
