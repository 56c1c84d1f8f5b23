"""The backfill's rollups: every tier's buckets equal the ones computed row by row from the raw
rows, whatever order the rows come in, and each table arrives in the lake's file order
(user, metric, ts), so the lake writer has nothing left to sort."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from engine.tiers import TIERS
from sync.backfill import rollups
from sync.readers import RAW_SCHEMA

# Both sides of 1970 (the floor of a negative instant) and of a UTC midnight.
ANCHORS = [datetime(1969, 12, 31, 23, 58, tzinfo=UTC), datetime(2024, 2, 29, 23, 30, tzinfo=UTC)]


def raw_rows(seed: int) -> list[tuple[datetime, int, str, float]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(400):
        ts = rng.choice(ANCHORS) + timedelta(seconds=rng.randrange(0, 2 * 86_400))
        rows.append(
            (
                ts,
                rng.choice([1, 2, 7]),
                rng.choice(["steps", "heart_rate", "spo2"]),
                float(rng.randrange(-50, 200)),
            )
        )
    # Sorted by key, one copy each: what read_archive hands over (last copy of a key kept).
    kept = {(u, m, ts): v for ts, u, m, v in rows}
    return [(ts, u, m, v) for (u, m, ts), v in sorted(kept.items())]


def expected(rows: list[tuple[datetime, int, str, float]], width_s: int) -> list[tuple]:
    buckets: dict[tuple, list[float]] = defaultdict(list)
    for ts, user, metric, value in rows:
        seconds = int((ts - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
        start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds - seconds % width_s)
        buckets[(user, metric, start)].append(value)
    return [
        (user, start.date(), metric, start, len(v), sum(v), min(v), max(v))
        for (user, metric, start), v in sorted(buckets.items())
    ]


def as_rows(table: pa.Table) -> list[tuple]:
    columns = ["user_id", "date", "metric", "ts", "count", "sum", "min", "max"]
    return [tuple(r.values()) for r in table.select(columns).to_pylist()]


def test_each_tier_equals_its_buckets_in_the_lake_order() -> None:
    for seed in range(5):
        rows = raw_rows(seed)
        table = pa.Table.from_pylist(
            [{"ts": t, "user_id": u, "metric": m, "value": v} for t, u, m, v in rows],
            schema=RAW_SCHEMA,
        )
        tables = rollups(table)
        for resolution in ("1m", "1h", "1d"):
            tier = TIERS[resolution]
            assert as_rows(tables[tier.lake_table]) == expected(rows, tier.bucket_s), resolution


def test_rows_out_of_key_order_give_the_same_buckets() -> None:
    rows = raw_rows(9)
    table = pa.Table.from_pylist(
        [{"ts": t, "user_id": u, "metric": m, "value": v} for t, u, m, v in rows],
        schema=RAW_SCHEMA,
    )
    shuffled = table.take(pa.array(random.Random(3).sample(range(len(rows)), len(rows))))
    for name, rolled in rollups(shuffled).items():
        if name != "raw":
            assert rolled.equals(rollups(table)[name]), name
