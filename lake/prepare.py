"""Validate an Arrow table of a tier and cut it into partitions sorted by (metric, ts).

Exports usually arrive grouped by user and day, so the table is scanned once in cache-sized
batches to find its partition runs: slicing is then zero-copy, and only partitions that are
not already in (metric, ts) order get sorted, each on its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake.layout import (
    PartitionKey,
    check_tier,
    data_schema,
    derived_column,
    file_schema,
    partition_from_ordinal,
    partition_ordinals,
)

Partition = tuple[PartitionKey, pa.Table]

_MICROS_PER_DAY = 86_400_000_000
_BATCH_ROWS = 2**16
_USER_SHIFT = 2**32
_ORDINAL_OFFSET = 2**31  # keeps (user, label) packing monotone for labels before 1970
_MAX_RUNS_PER_ROW = 1 / 256  # more runs than this: rows are interleaved, sort globally


def conform(tier: str, data: pa.Table) -> pa.Table:
    """Select and cast ``data`` to the tier's data schema; raise ValueError on bad input."""
    schema = data_schema(check_tier(tier))
    derived = derived_column(tier)
    allowed = {*schema.names, derived}
    extra = sorted(set(data.column_names) - allowed)
    missing = [name for name in schema.names if name not in data.column_names]
    if extra or missing:
        raise ValueError(f"{tier}: columns missing {missing}, unexpected {extra}")
    columns = []
    for field in schema:
        column = data.column(field.name)
        if not field.nullable and column.null_count:
            raise ValueError(f"{tier}: column {field.name!r} has NULLs")
        columns.append(column.cast(field.type))
    table = pa.Table.from_arrays(columns, schema=schema)
    if derived in data.column_names:
        unit = "datetime64[M]" if derived == "month" else "datetime64[Y]"
        days = table.column("date").cast(pa.int32()).to_numpy().astype("datetime64[D]")
        expected = pa.array(days.astype(unit).astype(str))
        matches = pc.all(pc.equal(data.column(derived).cast(pa.string()), expected)).as_py()
        if table.num_rows and not matches:  # all() of no rows is null
            raise ValueError(f"{tier}: column {derived!r} does not match 'date'")
    return table


def _packed_keys(tier: str, batch: pa.RecordBatch) -> np.ndarray:
    """One int64 per row, ordered like the partition key; checks `date` against `ts`."""
    days = batch.column("date").cast(pa.int32()).to_numpy().astype(np.int64)
    micros = batch.column("ts").cast(pa.int64()).to_numpy()
    # Pruning by time range trusts `date`, so it must be the UTC day of `ts`.
    if not np.array_equal(micros // _MICROS_PER_DAY, days):
        raise ValueError(f"{tier}: column 'date' must be the UTC date of 'ts' on every row")
    users = batch.column("user_id").to_numpy().astype(np.int64)
    return users * _USER_SHIFT + (partition_ordinals(tier, days) + _ORDINAL_OFFSET)


def _runs(tier: str, table: pa.Table, limit: int | None = None) -> list[tuple[int, int, int]]:
    """Maximal runs of equal partition, as (packed key, start, stop), in table order.

    Stops early and returns [] once there are more than ``limit`` runs.
    """
    runs: list[tuple[int, int, int]] = []
    offset = 0
    for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
        packed = _packed_keys(tier, batch)
        cuts = np.flatnonzero(np.diff(packed)) + 1
        if limit is not None and len(runs) + len(cuts) > limit:
            return []
        bounds = [0, *cuts.tolist(), len(packed)]
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            key = int(packed[start])
            if runs and runs[-1][0] == key and runs[-1][2] == offset + start:
                runs[-1] = (key, runs[-1][1], offset + stop)
            else:
                runs.append((key, offset + start, offset + stop))
        offset += len(packed)
    return runs


def _unpack(tier: str, packed: int) -> PartitionKey:
    user_id, rest = divmod(packed, _USER_SHIFT)
    return partition_from_ordinal(tier, user_id, rest - _ORDINAL_OFFSET)


def _grouped(tier: str, table: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    runs = _runs(tier, table, limit=max(1024, int(table.num_rows * _MAX_RUNS_PER_ROW)))
    if not runs and table.num_rows:
        # Rows of many partitions interleave: one stable sort on the packed key groups them.
        table = table.combine_chunks()
        packed = np.concatenate([_packed_keys(tier, b) for b in table.to_batches()])
        table = table.take(pa.array(np.argsort(packed, kind="stable")))
        runs = _runs(tier, table)
    slices: dict[int, list[pa.Table]] = {}
    for key, start, stop in runs:
        slices.setdefault(key, []).append(table.slice(start, stop - start))
    for key in sorted(slices):
        parts = slices[key]
        yield key, parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def split_partitions(tier: str, data: pa.Table) -> list[Partition]:
    """Validated partitions of ``data`` (file schema: partition columns dropped), not yet
    sorted within; pass each through ``sort_rows`` before writing."""
    table = conform(tier, data)
    columns = file_schema(tier).names
    return [(_unpack(tier, key), part.select(columns)) for key, part in _grouped(tier, table)]


def sort_rows(part: pa.Table) -> pa.Table:
    """Rows ordered by (metric, ts); returned as is when already in order."""
    if part.num_rows < 2:
        return part
    ts_step = np.diff(part.column("ts").cast(pa.int64()).to_numpy())
    metrics = pc.dictionary_encode(part.column("metric").combine_chunks())
    if len(metrics.dictionary) == 1:
        in_order = bool(np.all(ts_step >= 0))
    else:
        order = pc.sort_indices(metrics.dictionary).to_numpy()
        rank_of_code = np.empty(len(order), dtype=np.int64)
        rank_of_code[order] = np.arange(len(order))
        rank_step = np.diff(rank_of_code[metrics.indices.to_numpy(zero_copy_only=False)])
        in_order = bool(np.all((rank_step > 0) | ((rank_step == 0) & (ts_step >= 0))))
    if in_order:
        return part
    indices = pc.sort_indices(part, [("metric", "ascending"), ("ts", "ascending")])
    return part.take(indices)
