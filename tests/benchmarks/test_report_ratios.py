"""A ratio of two backends compares the rounds both ran (benchmarks/report.py)."""

from __future__ import annotations

import statistics
from typing import Any

from pytest import approx

from benchmarks.report import ratio_in_case, targets


def _ok(times_ms: list[float], rounds: list[int | None] | None) -> dict[str, Any]:
    times = [t / 1000 for t in times_ms]
    median = statistics.median(times)
    out: dict[str, Any] = {"status": "ok", "times_s": times, "median_s": median, "rows": 1}
    if rounds is not None:
        out["rounds"] = rounds
    return out


def _year(arrow: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    case = {"group": "span", "span": "1 year", "users": "1", "requested": "raw"}
    return {**case, "resolution": "raw", "results": {"http_arrow": arrow, "lake_raw": bare}}


# /data Arrow ran rounds 0-4 among the heavy backends; bare DuckDB went on alone for rounds
# 5-9, quieter and faster: its plain median (12.5 ms) is not what /data Arrow met.
ARROW = [20.0] * 5
BARE = [15.0] * 5 + [10.0] * 5


def test_a_ratio_is_of_the_rounds_both_ran() -> None:
    case = _year(_ok(ARROW, list(range(5))), _ok(BARE, list(range(10))))
    assert ratio_in_case(case, "http_arrow", "lake_raw") == approx(20 / 15)


def test_the_main_table_target_uses_the_rounds_both_ran() -> None:
    results = {
        "backends": {"http_arrow": {"label": "/data Arrow"}, "lake_raw": {"label": "bare"}},
        "cases": [_year(_ok(ARROW, list(range(5))), _ok(BARE, list(range(10))))],
    }
    line = next(t for t in targets(results) if "(main table)" in t["target"])
    assert line["value"] == approx(20 / 15) and line["verdict"] == "met"


def test_without_rounds_in_common_a_ratio_is_of_the_medians() -> None:
    """Results written before rounds were recorded, and a backend whose one run was its
    warm-up (round None), fall back to the plain medians."""
    unrecorded = _year(_ok(ARROW, None), _ok(BARE, None))
    assert ratio_in_case(unrecorded, "http_arrow", "lake_raw") == approx(20 / 12.5)
    warmup_only = _year(_ok([20.0], [None]), _ok(BARE, list(range(10))))
    assert ratio_in_case(warmup_only, "http_arrow", "lake_raw") == approx(20 / 12.5)
    assert ratio_in_case(None, "http_arrow", "lake_raw") is None
