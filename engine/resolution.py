"""The `auto` resolution: the finest tier whose points fit max_points."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from engine.registry import METRICS
from engine.tiers import RESOLUTIONS, TIERS, Resolution


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
