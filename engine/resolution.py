"""Resolutions (tiers) and the `auto` choice: the finest tier whose points fit max_points."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from engine.registry import METRICS

Resolution = Literal["raw", "1m", "1h", "1d"]
RESOLUTIONS: tuple[Resolution, ...] = ("raw", "1m", "1h", "1d")


@dataclass(frozen=True)
class Tier:
    resolution: Resolution
    bucket_s: int  # 0 for raw: its spacing is each metric's native interval
    warm_table: str  # table in the warm store
    lake_tier: str  # Delta table in the lake
    bucket_unit: str  # date_trunc unit computing this tier from raw ('' for raw)


TIERS: dict[Resolution, Tier] = {
    "raw": Tier("raw", 0, "raw_data", "raw", ""),
    "1m": Tier("1m", 60, "data_1m", "agg_1m", "minute"),
    "1h": Tier("1h", 3600, "data_1h", "agg_1h", "hour"),
    "1d": Tier("1d", 86400, "data_1d", "agg_1d", "day"),
}


def expected_points(resolution: Resolution, metric: str, span_s: float) -> float:
    """Points one series of `metric` has over `span_s` seconds at `resolution`, at most."""
    spacing = max(TIERS[resolution].bucket_s, METRICS[metric].native_interval_s)
    return span_s / spacing


def choose_resolution(
    metrics: Sequence[str], start: datetime, end: datetime, max_points: int
) -> Resolution:
    """The finest resolution at which every metric's series fits within max_points.

    One resolution serves the whole answer (rows of one shape); 1d is the floor even when
    a multi-decade span would exceed max_points.
    """
    span_s = (end - start).total_seconds()
    for resolution in RESOLUTIONS:
        if all(expected_points(resolution, m, span_s) <= max_points for m in metrics):
            return resolution
    return "1d"
