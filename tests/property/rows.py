"""Raw rows for property tests: (user_id, metric, seconds after a base instant, value)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa

Row = tuple[int, str, int, float]


def raw_table(rows: list[Row], base: datetime) -> pa.Table:
    """The rows as an ingestable Arrow table (ts, user_id, metric, value)."""
    return pa.table(
        {
            "ts": pa.array(
                [base + timedelta(seconds=s) for _, _, s, _ in rows], pa.timestamp("us", tz="UTC")
            ),
            "user_id": pa.array([u for u, _, _, _ in rows], pa.int32()),
            "metric": [m for _, m, _, _ in rows],
            "value": [v for _, _, _, v in rows],
        }
    )
