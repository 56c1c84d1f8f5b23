"""A rollup's min or max equal to its sum is not stored: readers take it from sum.

A bucket of one sample has sum = min = max. Data sampled once a minute makes every agg_1m
bucket such a one, and their min and max columns were two thirds of the tier's bytes (3.4
bytes per raw row, against 1.3 for the raw tier). The writer stores min and max as null
wherever they hold the very bits of sum (whatever the count: steps of 0 and 5 have max = sum
too); every reader takes them back from sum (`restored` for Arrow tables, `sql` in DuckDB's
projection), so the rows readers see are the rows written, bit for bit, and files written
before hold nothing to restore.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

EXTREMES = ("min", "max")


def _bits(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.asarray(column.fill_null(0.0).to_numpy(zero_copy_only=False)).view(np.int64)


def stored(part: pa.Table) -> pa.Table:
    """The table as written: min and max null where they equal sum, bit for bit (so -0.0
    stays apart from 0.0, and NaN is kept); rollup tiers only."""
    if "sum" not in part.column_names or not part.num_rows:
        return part
    total = _bits(part.column("sum"))
    for name in EXTREMES:
        column = part.column(name)
        same = pa.array((_bits(column) == total) & ~np.asarray(column.is_null()))
        index = part.schema.get_field_index(name)
        kept = pc.if_else(same, pa.scalar(None, pa.float64()), column)
        part = part.set_column(index, part.schema.field(name), kept)
    return part


def restored(table: pa.Table) -> pa.Table:
    """The rows as they were given to the writer: a null min or max is the bucket's sum."""
    if "sum" not in table.column_names:
        return table
    for name in EXTREMES:
        index = table.schema.get_field_index(name)
        column = pc.coalesce(table.column(name), table.column("sum"))
        table = table.set_column(index, table.schema.field(name), column)
    return table


def sql(name: str) -> str:
    """DuckDB's expression for a stored column of a tier (names from the tier schema)."""
    return f'COALESCE("{name}", "sum")' if name in EXTREMES else f'"{name}"'
