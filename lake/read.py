"""Read lake files back into Arrow tables of the tier's data schema."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from lake import extremes
from lake.layout import PartitionKey, data_schema, file_schema, value_columns
from lake.storage import LakeStorage


def read_measures(storage: LakeStorage, tier: str, path: str) -> pa.Table:
    """metric, ts and the tier's measures of one file, min/max restored; no partition
    columns and no page-checksum verification (the query path's read, as DuckDB's is)."""
    with storage.open(path) as handle:
        table = pq.ParquetFile(handle).read(columns=["metric", "ts", *value_columns(tier)])
    return extremes.restored(table)


def read_partition_file(
    storage: LakeStorage, tier: str, path: str, partition: PartitionKey
) -> pa.Table:
    """One file with its partition columns restored from the key (Delta keeps them in the path).

    ``ParquetFile`` rather than ``pq.read_table``: the latter would also infer hive columns
    from the path, with its own types.
    """
    stored = file_schema(tier)
    # Page checksums (written since issue 11) are verified: a flipped byte raises here.
    with storage.open(path) as handle:
        parquet = pq.ParquetFile(handle, page_checksum_verification=True)
        raw = parquet.read(columns=stored.names)
    rows = raw.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        name: raw.column(name).cast(stored.field(name).type) for name in stored.names
    }
    columns["user_id"] = pa.repeat(pa.scalar(partition[0], pa.int32()), rows)
    schema = data_schema(tier)
    table = pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)
    return extremes.restored(table)
