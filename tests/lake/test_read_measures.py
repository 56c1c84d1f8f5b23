"""read_measures reads only the row groups that may hold the metrics and instants asked."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lake.layout import TS_TYPE, file_schema
from lake.read import read_measures
from lake.storage import LakeStorage

START_US = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1_000_000)
MINUTE_US = 60_000_000


def _month_file(path: Path) -> pa.Table:
    """Three metrics x 10,000 minutes, sorted by (metric, ts) as the lake writes them, in
    row groups of 2,000 rows (15 groups)."""
    metrics, minutes = ["heart_rate", "spo2", "steps"], 10_000
    ts = np.tile(START_US + np.arange(minutes, dtype=np.int64) * MINUTE_US, len(metrics))
    table = pa.table(
        {
            "date": pa.array((ts // 86_400_000_000).astype(np.int32), pa.int32()).cast(pa.date32()),
            "metric": pa.array(np.repeat(metrics, minutes)),
            "ts": pa.array(ts, TS_TYPE),
            "value": pa.array(np.arange(len(ts), dtype=np.float64)),
        },
        schema=file_schema("raw").insert(0, pa.field("date", pa.date32(), nullable=False)),
    )
    pq.write_table(table, path, row_group_size=2_000)
    return table


def test_a_day_of_one_metric_reads_its_row_groups_only(tmp_path: Path) -> None:
    path = tmp_path / "month.parquet"
    whole = _month_file(path)
    storage = LakeStorage(tmp_path)
    lo, hi = START_US + 2_000 * MINUTE_US, START_US + 3_440 * MINUTE_US  # a day, mid-file

    def asked(rows: pa.Table) -> pa.Table:
        keep = pc.and_(
            pc.equal(rows["metric"], "spo2"),
            pc.and_(
                pc.greater_equal(rows["ts"].cast(pa.int64()), lo),
                pc.less(rows["ts"].cast(pa.int64()), hi),
            ),
        )
        return rows.filter(keep).select(["metric", "ts", "value"])

    read = read_measures(storage, "raw", str(path), ("spo2", "spo2"), (lo, hi))
    assert asked(read).equals(asked(whole)) and asked(read).num_rows == 1_440
    # spo2's minutes 2,000 .. 3,439 are rows 12,000 .. 13,439: row group 6 alone.
    assert read.num_rows == 2_000
    everything = read_measures(storage, "raw", str(path))
    assert everything.num_rows == whole.num_rows
