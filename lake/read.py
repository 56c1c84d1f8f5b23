"""Read lake files back into Arrow tables of the tier's data schema."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from lake import extremes
from lake.layout import PartitionKey, data_schema, file_schema, value_columns
from lake.storage import LakeStorage


def read_measures(
    storage: LakeStorage,
    tier: str,
    path: str,
    metrics: tuple[str, str] | None = None,
    ts_us: tuple[int, int] | None = None,
) -> pa.Table:
    """metric, ts and the tier's measures of one file, min/max restored; no partition
    columns and no page-checksum verification (the query path's read, as DuckDB's is).

    Only the row groups whose statistics may hold a metric in ``metrics`` (lowest, highest)
    and a ts in ``ts_us`` ([start, end) in microseconds) are read: files are sorted by (metric,
    ts), so a day of a participant-month file is one or two row groups. The caller filters
    the rows themselves."""
    columns = ["metric", "ts", *value_columns(tier)]
    with storage.open(path) as handle:
        parquet = pq.ParquetFile(handle)
        groups = _row_groups(parquet.metadata, metrics, ts_us)
        if groups is None:
            table = parquet.read(columns=columns)
        else:
            table = parquet.read_row_groups(groups, columns=columns)
    return extremes.restored(table)


def _row_groups(
    metadata: pq.FileMetaData,
    metrics: tuple[str, str] | None,
    ts_us: tuple[int, int] | None,
) -> list[int] | None:
    """Row groups that may hold rows asked (None: all of them)."""
    if metadata.num_row_groups <= 1 or (metrics is None and ts_us is None):
        return None
    names = metadata.schema.names
    at_metric, at_ts = names.index("metric"), names.index("ts")
    lowest, highest = metrics if metrics is not None else ("", "\U0010ffff")
    # ts is stored as microseconds (TIMESTAMP(MICROS), lake.layout.TS_TYPE).
    start, end = ts_us if ts_us is not None else (-(2**63), 2**63 - 1)
    kept = []
    for index in range(metadata.num_row_groups):
        group = metadata.row_group(index)
        metric, ts = group.column(at_metric).statistics, group.column(at_ts).statistics
        known = metric is not None and metric.has_min_max
        if known and (metric.max < lowest or metric.min > highest):
            continue
        if ts is not None and ts.has_min_max and (ts.max_raw < start or ts.min_raw >= end):
            continue
        kept.append(index)
    return kept


def read_partition_file(
    storage: LakeStorage, tier: str, path: str, partition: PartitionKey
) -> pa.Table:
    """One file with its partition columns restored from the key (Delta keeps them in the path).

    ``ParquetFile`` rather than ``pq.read_table``: the latter would also infer hive columns
    from the path, with its own types.
    """
    with storage.open(path) as handle:
        return _with_partition(tier, handle, partition)


def read_partition_bytes(tier: str, data: bytes, partition: PartitionKey) -> pa.Table:
    """``read_partition_file`` of a file's bytes already read (to hash the same bytes)."""
    return _with_partition(tier, pa.BufferReader(data), partition)


def _with_partition(tier: str, source: pa.NativeFile, partition: PartitionKey) -> pa.Table:
    stored = file_schema(tier)
    # Page checksums (written since issue 11) are verified: a flipped byte raises here.
    parquet = pq.ParquetFile(source, page_checksum_verification=True)
    raw = parquet.read(columns=stored.names)
    rows = raw.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        name: raw.column(name).cast(stored.field(name).type) for name in stored.names
    }
    columns["user_id"] = pa.repeat(pa.scalar(partition[0], pa.int32()), rows)
    schema = data_schema(tier)
    table = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
    return extremes.restored(table)
