"""Row counts and order-independent checksums per (user_id, day).

The same function runs over the source rows before export and over the rows read back from
the lake, so it is defined on Arrow values only: no database hash whose definition may change
between versions. Each row hashes (metric, ts, measures) with splitmix64 rounds over the exact
bits (floats by their IEEE-754 bit pattern, so -0.0 != 0.0 and NaN payloads count); a day's
checksum is the wrapping sum of its row hashes, reduced mod 2**63. Sums are additive, which
lets callers merge partial results with ``merge_checksums``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake.layout import TS_TYPE, check_tier, value_columns

DayKey = tuple[int, date]
DayStat = tuple[int, int]

CHECKSUM_MODULUS = 2**63
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_NULL_SALT = np.uint64(0x6A09E667F3BCC908)  # marks a NULL measure, distinct from any value
_LOW32 = np.uint64(0xFFFFFFFF)
_BATCH_ROWS = 2**15


def _mix(x: np.ndarray, scratch: np.ndarray) -> None:
    """splitmix64 finalizer, in place (numpy uint64 arrays wrap silently)."""
    np.add(x, _GOLDEN, out=x)
    for shift, factor in ((30, _M1), (27, _M2)):
        np.right_shift(x, np.uint64(shift), out=scratch)
        np.bitwise_xor(x, scratch, out=x)
        np.multiply(x, factor, out=x)
    np.right_shift(x, np.uint64(31), out=scratch)
    np.bitwise_xor(x, scratch, out=x)


def _string_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class _MetricHashes:
    """mix(hash(metric)) per distinct metric string, computed once per string."""

    def __init__(self) -> None:
        self.known: dict[str, int] = {}

    def __call__(self, column: pa.Array) -> np.ndarray:
        encoded = pc.dictionary_encode(column.cast(pa.string()))
        names = encoded.dictionary.to_pylist()
        for name in names:
            if name not in self.known:
                seed = np.array([_string_hash(name)], dtype=np.uint64)
                _mix(seed, np.empty_like(seed))
                self.known[name] = int(seed[0])
        table = np.array([self.known[name] for name in names], dtype=np.uint64)
        return table[encoded.indices.to_numpy(zero_copy_only=False)]


def _bits(column: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw 64-bit patterns of a numeric column and its null mask (None if no nulls)."""
    target = pa.float64() if pa.types.is_floating(column.type) else pa.int64()
    filled = pc.fill_null(column.cast(target), 0)
    values = np.asarray(filled.to_numpy(zero_copy_only=False)).view(np.uint64)
    nulls = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else None
    return values, nulls


def _require(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise ValueError(f"checksum input lacks column {name!r}")
    return table.column(name)


def row_hashes(tier: str, table: pa.Table) -> np.ndarray:
    """64-bit hash of (metric, ts, measures) per row:
    h = mix(hash(metric)); h = mix(h ^ ts); then h = mix(h ^ bits) per measure."""
    measures = value_columns(check_tier(tier))
    for name in ("metric", "ts", *measures):
        _require(table, name)
    columns = table.select(["metric", "ts", *measures])
    result = np.empty(table.num_rows, dtype=np.uint64)
    metric_hashes = _MetricHashes()
    offset = 0
    # Cache-sized batches: the mixing rounds then run on data that stays in L2.
    for batch in columns.to_batches(max_chunksize=_BATCH_ROWS):
        hashes = result[offset : offset + batch.num_rows]
        scratch = np.empty_like(hashes)
        hashes[:] = metric_hashes(batch.column(0))
        ts = batch.column(1).cast(TS_TYPE).cast(pa.int64())
        np.bitwise_xor(hashes, ts.to_numpy().view(np.uint64), out=hashes)
        _mix(hashes, scratch)
        for index in range(2, batch.num_columns):
            values, nulls = _bits(batch.column(index))
            np.bitwise_xor(hashes, values, out=hashes)
            _mix(hashes, scratch)
            if nulls is not None:
                salted = hashes[nulls] + _NULL_SALT
                _mix(salted, np.empty_like(salted))
                hashes[nulls] = salted
        offset += batch.num_rows
    return result


def day_checksums(tier: str, table: pa.Table) -> dict[DayKey, DayStat]:
    """(rows, checksum) per (user_id, day) of an Arrow table of that tier.

    The checksum is a Python int in [0, 2**63), independent of row order and of chunking.
    """
    if table.num_rows == 0:
        return {}
    users = _require(table, "user_id").cast(pa.int32())
    days = _require(table, "date").cast(pa.date32())
    if users.null_count or days.null_count:
        raise ValueError("checksum input has NULL user_id or date")
    hashes = row_hashes(tier, table)
    # Split each hash in 32-bit halves: their per-day sums cannot overflow uint64
    # (fewer than 2**32 rows a day), and recombine exactly into the sum mod 2**64.
    grouped = (
        pa.table(
            {
                "user_id": users,
                "date": days,
                "high": pa.array(hashes >> np.uint64(32)),
                "low": pa.array(hashes & _LOW32),
            }
        )
        .group_by(["user_id", "date"])
        .aggregate([("high", "sum"), ("low", "sum"), ("high", "count")])
    )
    result: dict[DayKey, DayStat] = {}
    for user_id, day, high, low, rows in zip(
        grouped.column("user_id").to_pylist(),
        grouped.column("date").to_pylist(),
        grouped.column("high_sum").to_pylist(),
        grouped.column("low_sum").to_pylist(),
        grouped.column("high_count").to_pylist(),
        strict=True,
    ):
        result[(user_id, day)] = (rows, (high * 2**32 + low) % CHECKSUM_MODULUS)
    return result


def merge_checksums(parts: Iterable[Mapping[DayKey, DayStat]]) -> dict[DayKey, DayStat]:
    """Combine results computed over disjoint row sets (e.g. several files of one day)."""
    merged: dict[DayKey, DayStat] = {}
    for part in parts:
        for key, (rows, checksum) in part.items():
            old_rows, old_checksum = merged.get(key, (0, 0))
            merged[key] = (old_rows + rows, (old_checksum + checksum) % CHECKSUM_MODULUS)
    return merged
