"""One-shot rewrite of a fine tier written before issue 12 (`stratum maintain --relayout`).

Such a table is partitioned by (user_id, date): one file per participant-day, `date` in the
path only. Delta cannot change a table's partition columns in place for readers pinned to
its versions, so the rows are copied into a new table of the current layout (one file per
participant-month) under ``<root>/.relayout/<tier>``, checked day by day against the old
files' rows (count and checksum), and only then swapped in by two renames; the old table is
kept under ``<root>/.relayout-old/<tier>`` for the operator to delete. Local lakes only, with
no other process using the lake meanwhile (readers would see the table vanish between the
renames). A run killed before the swap leaves the old table in place and its staging copy,
which the next run starts afresh.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from lake import extremes
from lake.checksum import DayKey, DayStat, day_checksums
from lake.layout import OLD_FINE_COLUMNS, data_schema, replaces_days
from lake.locking import writer_lock
from lake.storage import LakeStorage
from lake.store import Lake

BATCH_ROWS = 4_000_000  # rows per commit of the copy: whole participant-months


@dataclass(frozen=True)
class RelayoutResult:
    tier: str
    files_before: int
    files_after: int
    rows: int
    version: int | None  # the new table's version (None: nothing to do)


def old_layout(table_dir: str) -> bool:
    """Whether the table in ``table_dir`` is partitioned by (user_id, date)."""
    if not (Path(table_dir) / "_delta_log").is_dir():
        return False
    columns = DeltaTable(table_dir).metadata().partition_columns
    return tuple(columns) == OLD_FINE_COLUMNS


def _old_files(table_dir: str) -> list[tuple[int, date, str]]:
    """(user, day, absolute path) of every file of the old table's latest version."""
    actions = pa.table(DeltaTable(table_dir).get_add_actions(flatten=True))
    return sorted(
        (int(user), date.fromisoformat(str(day)), f"{table_dir}/{unquote(path)}")
        for path, user, day in zip(
            actions.column("path").to_pylist(),
            actions.column("partition.user_id").to_pylist(),
            actions.column("partition.date").to_pylist(),
            strict=True,
        )
    )


def _read_old(tier: str, user_id: int, day: date, path: str) -> pa.Table:
    """One old file with its partition columns from the path (page checksums verified)."""
    schema = data_schema(tier)
    stored = [name for name in schema.names if name not in ("user_id", "date")]
    table = pq.ParquetFile(path, page_checksum_verification=True).read(columns=stored)
    columns = {name: table.column(name).cast(schema.field(name).type) for name in stored}
    columns["user_id"] = pa.repeat(pa.scalar(user_id, pa.int32()), table.num_rows)
    columns["date"] = pa.repeat(pa.scalar(day, pa.date32()), table.num_rows)
    rows = pa.Table.from_arrays([columns[n] for n in schema.names], schema=schema)
    return extremes.restored(rows)


def _batches(
    tier: str, files: list[tuple[int, date, str]]
) -> Iterator[tuple[pa.Table, list[DayKey]]]:
    """The old rows in batches of whole participant-months, with their days."""
    parts: list[pa.Table] = []
    days: list[DayKey] = []
    rows = 0
    for index, (user_id, day, path) in enumerate(files):
        part = _read_old(tier, user_id, day, path)
        parts.append(part)
        days.append((user_id, day))
        rows += part.num_rows
        following = files[index + 1] if index + 1 < len(files) else None
        month_ends = following is None or (following[0], following[1].month, following[1].year) != (
            user_id,
            day.month,
            day.year,
        )
        if month_ends and (rows >= BATCH_ROWS or following is None):
            yield pa.concat_tables(parts), days
            parts, days, rows = [], [], 0


def copy_to_staging(tier: str, table_dir: str, staging_root: Path) -> tuple[int, int, int]:
    """Copy the old table's rows into a current-layout table under ``staging_root``, verified
    day by day; return (old files, new files, rows). Raises if a day reads back different."""
    if staging_root.exists():
        shutil.rmtree(staging_root)  # a killed run's copy: start afresh
    staging = Lake(staging_root)
    files = _old_files(table_dir)
    rows = 0
    for table, days in _batches(tier, files):
        expected: dict[DayKey, DayStat] = day_checksums(tier, table)
        version = staging.replace_days(tier, table, days)
        back = staging.day_stats(tier, days, version=version)
        wrong = [d for d in days if back[d] != expected.get(d, (0, 0))]
        if wrong:
            raise OSError(f"{tier}: relayout copy of {wrong[:3]} did not read back equal")
        rows += table.num_rows
    staging.compact(tier)  # months with gaps between their days were written as several runs
    return len(files), len(staging.entries(tier)), rows


def relayout(storage: LakeStorage, tier: str) -> RelayoutResult:
    """Rewrite the tier's table in the current layout if it has the old one (see module)."""
    if not replaces_days(tier):
        raise ValueError(f"{tier}: only raw and agg_1m ever had the old day layout")
    if not storage.is_local:
        raise ValueError(
            f"relayout works on a local lake only, not {storage.root}: copy the lake to a "
            "folder, relayout it there and copy it back"
        )
    root = Path(storage.root)
    table_dir = str(root / tier)
    staging_root = root / ".relayout"
    kept = root / ".relayout-old" / tier
    with writer_lock(storage, tier):
        if not Path(table_dir).exists() and (staging_root / tier).exists() and kept.exists():
            (staging_root / tier).rename(table_dir)  # a run killed between its two renames
        if not old_layout(table_dir):
            return RelayoutResult(tier, 0, 0, 0, None)
        if kept.exists():
            raise FileExistsError(f"{kept} exists: move or delete the previous relayout's copy")
        before, after, rows = copy_to_staging(tier, table_dir, staging_root)
        kept.parent.mkdir(parents=True, exist_ok=True)
        Path(table_dir).rename(kept)
        (staging_root / tier).rename(table_dir)
        shutil.rmtree(staging_root)
        return RelayoutResult(tier, before, after, rows, DeltaTable(table_dir).version())
