"""The metric registry: the only source of metric identifiers that ever reach SQL.

Pure data, no imports of ours, so the write side (sync) can share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    native_interval_s: int  # how often a device reports it; drives auto resolution
    rollup: Literal["mean", "sum"]  # natural summary: mean for gauges, sum for counts
    description: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("heart_rate", "bpm", 1, "mean", "Heart rate, optical, 1 Hz"),
        Metric("steps", "count", 60, "sum", "Steps per minute"),
        Metric("spo2", "%", 60, "mean", "Blood oxygen saturation, at night"),
        Metric("hrv", "ms", 300, "mean", "Heart rate variability (RMSSD), at night"),
        Metric("respiratory_rate", "breaths/min", 60, "mean", "Respiratory rate"),
        Metric("skin_temperature", "degC", 60, "mean", "Skin temperature"),
        Metric("sleep_stage", "stage", 30, "mean", "Sleep stage 0=awake 1=light 2=deep 3=REM"),
    )
}


def metric_names() -> list[str]:
    return sorted(METRICS)
