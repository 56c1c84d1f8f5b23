"""The `cohort` bench's report: the issue's targets, the lake's files, a plot (PNG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.cohort_build import METRICS, WARM_DAYS

SCAN_BUDGET = "1GiB"
TARGETS_MS = {"daily_all": 1000.0, "hourly_one": 50.0, "catalog_plan": 5.0, "open_tier": 100.0}


def _verdict(measured: float | None, target: float) -> str:
    if measured is None:
        return "not measured"
    return "met" if measured <= target else "not met"


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows of the issue's cohort targets."""
    rows: list[tuple[str, str, str]] = []
    one, medium = results["one_year_raw"], results.get("medium_one_year_raw")
    if medium:
        ratio = one["latency_ms"] / medium["latency_ms"]
        rows.append(
            (
                "1 participant x 1 metric x 1 year raw: cohort <= 1.2x medium",
                f"{one['latency_ms']:.0f} ms vs {medium['latency_ms']:.0f} ms = {ratio:.2f}x",
                _verdict(ratio, 1.2),
            )
        )
    else:
        rows.append(
            (
                "1 participant x 1 metric x 1 year raw: cohort <= 1.2x medium",
                f"{one['latency_ms']:.0f} ms (medium not built: --medium)",
                "not measured",
            )
        )
    rows.append(
        (
            "catalog + planning, one participant, p50 <= 5 ms",
            f"{one['catalog_plan_ms']:.2f} ms",
            _verdict(one["catalog_plan_ms"], TARGETS_MS["catalog_plan"]),
        )
    )
    spans = results["spans"]
    rows.append(
        (
            f"every participant ({results['shape']['users']}) x 2 years daily means <= 1 s",
            f"{spans['daily_all_ms']:.0f} ms",
            _verdict(spans["daily_all_ms"], TARGETS_MS["daily_all"]),
        )
    )
    rows.append(
        (
            "1 participant x all metrics x 2 years hourly <= 50 ms",
            f"{spans['hourly_one_ms']:.1f} ms",
            _verdict(spans["hourly_one_ms"], TARGETS_MS["hourly_one"]),
        )
    )
    lake = results["lake"]
    per_row = lake["lake_bytes_per_raw_row"]
    rows.append(
        (
            "lake <= 3 bytes per raw row (all tiers)",
            "n/a"
            if per_row is None
            else f"{per_row:.2f} B (raw tier {lake['raw_bytes_per_row']:.2f} B)",
            _verdict(per_row, 3.0),
        )
    )
    slowest = max(lake["tiers"].items(), key=lambda kv: kv[1]["open_ms"])
    rows.append(
        (
            "opening a tier (new process) <= 100 ms",
            f"{slowest[1]['open_ms']:.0f} ms ({slowest[0]}, {slowest[1]['files']:,} files)",
            _verdict(slowest[1]["open_ms"], TARGETS_MS["open_tier"]),
        )
    )
    scan = results.get("scan")
    if scan:
        peak = scan["peak_rss_bytes"] / 2**30
        rows.append(
            (
                f"full raw scan under STRATUM_MEMORY_BUDGET={SCAN_BUDGET}: peak RSS <= budget",
                f"{peak:.2f} GiB, {scan['rows']:,} rows at {scan['rows_per_s'] / 1e6:.2f}M rows/s",
                _verdict(peak, 1.0),
            )
        )
    return rows


def write_report(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    shape, build_record = results["shape"], results["build"]
    lines = [
        "# stratum bench — `cohort`",
        "",
        f"{shape['users']} participants x {shape['days']} days, {', '.join(METRICS)} once a "
        f"minute; every day but the last {WARM_DAYS} loaded by `stratum backfill`, the last "
        f"{WARM_DAYS} warm. Measured {results['measured_at']}.",
        "",
        f"Build: {build_record['seconds'] / 60:.1f} min in {build_record['runs']} "
        f"run(s) ({build_record['backfill_seconds'] / 60:.1f} min of backfill); lake "
        f"{build_record['lake_bytes'] / 2**30:.2f} GiB, warm store "
        f"{build_record['database_bytes'] / 2**30:.2f} GiB.",
        "",
        "## Targets",
        "",
        "From issue 12; reported, never asserted.",
        "",
        "| target | measured | verdict |",
        "| --- | --- | --- |",
        *(f"| {t} | {m} | {v} |" for t, m, v in targets(results)),
        "",
        "## The lake",
        "",
        "| tier | files | median file | bytes | rows | open (new process) |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {tier} | {t['files']:,} | {t['median_file_bytes'] / 1024:.0f} KiB | "
            f"{t['bytes'] / 2**20:,.0f} MiB | {t['rows']:,} | {t['open_ms']:.0f} ms |"
            for tier, t in results["lake"]["tiers"].items()
        ),
        "",
        "![latency against target](cohort_targets.png)",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    _plot(results, out / "cohort_targets.png")
    return path


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = {
        "catalog + plan\n(1 participant)": (
            results["one_year_raw"]["catalog_plan_ms"],
            TARGETS_MS["catalog_plan"],
        ),
        "2 years hourly\n(1 participant)": (
            results["spans"]["hourly_one_ms"],
            TARGETS_MS["hourly_one"],
        ),
        "2 years daily\n(everyone)": (results["spans"]["daily_all_ms"], TARGETS_MS["daily_all"]),
        "open a tier\n(slowest)": (
            max(t["open_ms"] for t in results["lake"]["tiers"].values()),
            TARGETS_MS["open_tier"],
        ),
    }
    names = list(measured)
    ratios = [m / t for m, t in measured.values()]
    figure, axes = plt.subplots(figsize=(7, 3.5))
    axes.bar(names, ratios, color=["tab:green" if r <= 1 else "tab:red" for r in ratios])
    axes.axhline(1.0, color="black", linewidth=1)
    axes.set_ylabel("measured / target")
    axes.set_title(
        f"cohort: {results['shape']['users']} participants x {results['shape']['days']} days"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
