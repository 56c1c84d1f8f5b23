"""results.json -> report.md and PNG plots. `python -m benchmarks.report DIR` redraws them."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402

from engine.shapes import row_bytes  # noqa: E402
from engine.tiers import TIERS  # noqa: E402

PLOT_FILE = "latency_vs_span.png"
SECTIONS = (
    "## Targets",
    "## Main table",
    "## Winners",
    "## Engine stages",
    "## Span workloads",
    "## High-rate and recent workloads",
    "## Deep paging",
    "## Side by side",
    "## Concurrent analysts",
    "## Ingest and sync",
    "## Storage",
    "## Warm columnstore (TimescaleDB)",
    "## Memory",
    "## Explorer page",
    "## Plots",
    "## Not available",
)


# -- formatting ---------------------------------------------------------------------------


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    ms = seconds * 1e3
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_rate(n: float | None) -> str:
    if n is None:
        return "–"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}x"


def _on_connections(workers: int | None) -> str:
    """How many connections the rollup refresh ran on (not recorded before 2026-11-30)."""
    return f" (on {workers} connections)" if workers else ""


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


# -- lookups ------------------------------------------------------------------------------


def _median(case: dict[str, Any], key: str) -> float | None:
    r = case["results"].get(key)
    return r["median_s"] if r and r["status"] == "ok" else None


def _answered(case: dict[str, Any]) -> dict[str, float]:
    """The median of each backend that answered the case."""
    return {
        key: r["median_s"]
        for key, r in case["results"].items()
        if r["status"] == "ok" and r["median_s"] is not None
    }


def reference_key(case: dict[str, Any]) -> str:
    """Bare DuckDB over the tier the answer comes at: the practical limit."""
    return "lake_raw" if case["resolution"] == "raw" else "lake_rollups"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# Fewer rounds in common than this, and a ratio falls back to the two backends' medians.
PAIRED_ROUNDS = 3


def _by_round(case: dict[str, Any], key: str) -> dict[int, float]:
    r = case["results"].get(key)
    if not r or r["status"] != "ok":
        return {}
    rounds = r.get("rounds") or []  # results written before rounds were recorded have none
    return {n: t for n, t in zip(rounds, r["times_s"], strict=False) if n is not None}


def ratio_in_case(case: dict[str, Any] | None, key: str, other: str) -> float | None:
    """`key` over `other` in one case: their medians over the rounds both ran. A short
    backend runs extra rounds once the heavy ones are done, so a faster one gets more of
    those quieter rounds: bare DuckDB's participant-year got 17-18 runs against /data
    Arrow's 11-13, and itself took 16.2-18.6 ms right after psycopg's fetch against
    12.8 ms after another bare run. Their plain medians came from different conditions."""
    if case is None:
        return None
    mine, theirs = _by_round(case, key), _by_round(case, other)
    both = mine.keys() & theirs.keys()
    if len(both) < PAIRED_ROUNDS:
        return _ratio(_median(case, key), _median(case, other))
    return _ratio(
        statistics.median(mine[n] for n in both), statistics.median(theirs[n] for n in both)
    )


def find_case(results: dict[str, Any], **match: Any) -> dict[str, Any] | None:
    for case in results.get("cases", []):
        if all(case.get(k) == v for k, v in match.items()):
            return case
    return None


def _spans(results: dict[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for c in results.get("cases", []):
        if c["group"] == "span":
            seen[c["span"]] = None
    return list(seen)


# -- targets ------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's target ratios, as measured (reported, never asserted)."""
    out: list[dict[str, Any]] = []
    spans = _spans(results)
    span = "1 year" if "1 year" in spans else (spans[-1] if spans else None)
    note = "" if span == "1 year" else f"preset has no 1-year span: measured at {span}"

    def add(target: str, value: float | None, shown: str, ok: bool | None, where: str) -> None:
        verdict = "n/a" if ok is None else ("met" if ok else "not met")
        out.append(
            {
                "target": target,
                "measured": shown,
                "value": value,
                "verdict": verdict,
                "where": where,
            }
        )

    one = find_case(results, group="span", span=span, users="1", requested="raw")
    where = (f"span {span}, 1 participant, raw" + (f" ({note})" if note else "")) if one else "–"
    r = ratio_in_case(one, "engine", "lake_raw")
    add(
        "engine, 1 participant x 1 metric x 1 year raw <= 1.3x bare DuckDB",
        r,
        fmt_ratio(r),
        None if r is None else r <= 1.3,
        where,
    )
    r = ratio_in_case(one, "engine", "limit")
    add(
        "engine, 1 participant x 1 metric x 1 year raw <= 1.3x the limit "
        "(one sorted file per participant)",
        r,
        fmt_ratio(r),
        None if r is None else r <= 1.3,
        where,
    )
    r = ratio_in_case(one, "warm_raw", "engine")
    add(
        "same query >= 5x faster than warm raw psycopg",
        r,
        "–" if r is None else f"{r:.2f}x faster",
        None if r is None else r >= 5,
        where,
    )
    r = ratio_in_case(one, "http_arrow", "lake_raw")
    add(
        "/data arrow page_size=0 <= 1.5x bare DuckDB (main table)",
        r,
        fmt_ratio(r),
        None if r is None else r <= 1.5,
        where,
    )
    _pair_targets(results, add)
    big = None
    for c in results.get("cases", []):
        if c["group"] == "span" and c["span"] == span and c["requested"] == "raw":
            big = c  # the last one: every participant
    if big is not None and big is not one:
        r = ratio_in_case(big, "http_arrow", "lake_raw")
        add(
            "/data arrow page_size=0 <= 2x bare DuckDB (every participant)",
            r,
            fmt_ratio(r),
            None if r is None else r <= 2,
            f"span {span}, {big['users']} participants, raw",
        )
    ten = None
    for c in results.get("cases", []):
        auto = c["group"] == "span" and c["span"] == span and c["requested"] == "auto"
        if auto and c["users"] in ("10", "all (10)"):
            ten = c
    fallback = ""
    if ten is None:
        for c in results.get("cases", []):
            if c["group"] == "span" and c["span"] == span and c["requested"] == "auto":
                ten = c  # the widest the preset has
        fallback = " (preset has fewer than 10 participants)"
    value = _median(ten, "engine") if ten else None
    add(
        "10 participants x 1 year auto (daily) <= 20 ms in the engine",
        value,
        fmt_s(value),
        None if value is None else value <= 0.020,
        f"span {span}, {ten['users']} participants, auto ({ten['resolution']}){fallback}"
        if ten
        else "–",
    )
    pages = [c for c in results.get("cases", []) if c["group"] == "deep paging"]
    rows = results.get("paging_answer_rows")
    for key, label in (
        ("engine", "engine"),
        ("http_json", "/data JSON"),
        ("http_arrow", "/data Arrow"),
    ):
        if len(pages) == 2:
            r = _ratio(_median(pages[1], key), _median(pages[0], key))
            where = f"page {pages[1]['page_number']:,} vs 1, page_size {pages[1]['page_size']:,}"
            where += f", answer {rows:,} rows" if rows else ""
            add(
                f"{label}: page 1,000 vs page 1 of a 10M-row result <= 2x",
                r,
                fmt_ratio(r),
                None if r is None else r <= 2,
                where,
            )
        else:
            add(
                f"{label}: page 1,000 vs page 1 of a 10M-row result <= 2x",
                None,
                "–",
                None,
                "the answer has a single page",
            )
    rendering = results.get("json_rendering") or {}
    rate = rendering.get("rows_per_s")
    _million_a_second(
        add,
        "JSON pages >= 1M rows/s rendered",
        rate,
        "rows/s",
        f"server side, every JSON page of the queries: {rendering['rows']:,} rows"
        if rate is not None
        else rendering.get("note", "not measured"),
    )
    _within_target(results, add)
    rollups = (results.get("ingest_sync") or {}).get("rollups") or {}
    rate = rollups.get("raw_rows_per_s")
    _million_a_second(
        add,
        "rollup refresh >= 1M raw rows/s on per-minute data",
        rate,
        "raw rows/s",
        f"the ingest file's {rollups['rows']['data_1m']:,} minutes"
        f"{_on_connections(rollups.get('workers'))}"
        if rate is not None
        else "not measured",
    )
    explorer = results.get("explorer") or {}
    if explorer.get("status") == "ok":
        value = explorer["median_ms"] / 1000
        days = explorer["days"]
        add(
            "explorer page: first chart drawn, 1 participant x 1 year <= 500 ms",
            value,
            fmt_s(value),
            value <= 0.5,
            f"headless Chromium, {days} days"
            + ("" if days >= 365 else " (the preset's longest lake span)"),
        )
    else:
        add(
            "explorer page: first chart drawn, 1 participant x 1 year <= 500 ms",
            None,
            "–",
            None,
            explorer.get("note", "not measured"),
        )
    return out


Add = Callable[[str, float | None, str, bool | None, str], None]

# Within this factor of the fastest other backend, on every workload of the main, high-rate,
# recent and paging tables (issue 13, point 1).
WITHIN = 1.25
# Each side-by-side pair's bound (issue 13, points 2 and 0).
PAIR_BOUNDS = {("http_arrow", "lake_raw"): 1.5, ("engine", "limit"): 1.3}


def _million_a_second(add: Add, target: str, rate: float | None, unit: str, where: str) -> None:
    """A rate target of at least 1M a second (None: not measured)."""
    shown = "–" if rate is None else f"{fmt_rate(rate)} {unit}"
    add(target, rate, shown, None if rate is None else rate >= 1e6, where)


def _pair_targets(results: dict[str, Any], add: Add) -> None:
    labels = _labels(results)
    for pair in results.get("side_by_side", []):
        bound = PAIR_BOUNDS.get((pair["measured"], pair["reference"]))
        if bound is None:
            continue
        target = f"{labels[pair['measured']]} <= {bound}x {labels[pair['reference']]}, side by side"
        if pair["status"] != "ok":
            add(target, None, "–", None, pair.get("note", pair["status"]))
            continue
        ratio = pair["ratio"]
        add(
            target,
            ratio,
            fmt_ratio(ratio),
            ratio <= bound,
            f"{pair['case']}: the two alone, alternating, {pair['rounds']} rounds",
        )


def _engine_vs_fastest(results: dict[str, Any]) -> list[tuple[str, float, str]]:
    """Each workload's engine over the fastest other backend (by median), over the rounds
    both ran: (case, ratio, it)."""
    out = []
    for case in results.get("cases", []):
        medians = _answered(case)
        engine = medians.pop("engine", None)
        others = {key: median for key, median in medians.items() if median}
        if engine is None or not others:
            continue
        fastest = min(others, key=others.__getitem__)
        ratio = ratio_in_case(case, "engine", fastest)
        if ratio is not None:
            out.append((_case_title(case), ratio, fastest))
    return out


def _within_target(results: dict[str, Any], add: Add) -> None:
    ratios = _engine_vs_fastest(results)
    target = f"engine within {WITHIN}x of the fastest backend on every workload"
    if not ratios:
        add(target, None, "–", None, "no workload measured")
        return
    over = sorted((r for r in ratios if r[1] > WITHIN), key=lambda r: -r[1])
    labels = _labels(results)
    worst = "; ".join(f"{title}: {ratio:.2f}x {labels[key]}" for title, ratio, key in over[:3])
    add(
        target,
        len(ratios) - len(over),
        f"{len(ratios) - len(over)} of {len(ratios)}",
        not over,
        f"over: {worst}" + (f" and {len(over) - 3} more" if len(over) > 3 else "")
        if over
        else "every workload of the main, high-rate, recent and paging tables",
    )


# -- sections -----------------------------------------------------------------------------


def side_by_side_section(results: dict[str, Any]) -> list[str]:
    pairs = results.get("side_by_side") or []
    if not pairs:
        return ["Not measured (no single-participant raw span).", ""]
    labels = _labels(results)
    rows = []
    for pair in pairs:
        measured, reference = labels[pair["measured"]], labels[pair["reference"]]
        if pair["status"] != "ok":
            rows.append([measured, reference, "–", "–", "–", "–", pair.get("note", "")])
            continue
        medians = pair["median_s"]
        rows.append(
            [
                measured,
                reference,
                pair["case"],
                fmt_s(medians["measured"]),
                fmt_s(medians["reference"]),
                fmt_ratio(pair["ratio"]),
                f"{pair['rounds']} rounds",
            ]
        )
    return [
        "Two backends on one case and nothing else: a warm-up each, then alternating "
        "(A B, B A, ...), medians over the rounds. The main table runs every backend "
        "interleaved with all the others, so its ratios also carry what the neighbours "
        "left behind (a 2-second fetch just before, a server busy with JSON pages).",
        "",
        *_table(
            ["measured", "against", "case", "measured median", "its median", "ratio", "runs"],
            rows,
        ),
    ]


def explorer_section(results: dict[str, Any]) -> list[str]:
    explorer = results.get("explorer") or {"status": "not available", "note": "not measured"}
    if explorer["status"] != "ok":
        return [f"Not measured: {explorer['status']} ({explorer.get('note', '')}).", ""]
    view = explorer["view"]
    return [
        "The page at `/` in headless Chromium, a fresh browser context per run (nothing "
        "cached), the key already in the tab: from navigation start to the first chart drawn "
        "(the page and uPlot loading, /catalog, /data, drawing), by the page's own clock.",
        "",
        *_table(
            [
                "view",
                "resolution",
                "points",
                "first run",
                "median of the rest",
                "of which /data, /catalog (in parallel), drawing",
                "runs",
            ],
            [
                [
                    f"participant {view['user_id']}, {view['metric']}, {view['start']} .. "
                    f"{view['end']} ({explorer['days']} days)",
                    str(explorer["resolution"]),
                    ", ".join(str(p) for p in explorer["points"]),
                    f"{explorer['first_ms']:.0f} ms",
                    f"{explorer['median_ms']:.0f} ms",
                    f"{explorer['data_ms']:.0f} ms, {explorer['catalog_ms']:.0f} ms, "
                    f"{explorer['draw_ms']:.0f} ms",
                    ", ".join(f"{t:.0f}" for t in explorer["runs_ms"]),
                ]
            ],
        ),
    ]


def _labels(results: dict[str, Any]) -> dict[str, str]:
    return {k: v["label"] for k, v in results["backends"].items()}


def _case_title(case: dict[str, Any]) -> str:
    res = case["requested"] if case["requested"] == "raw" else f"auto → {case['resolution']}"
    page = (
        f", page {case['page_number']:,} of size {case['page_size']:,}" if case["page_size"] else ""
    )
    return f"{case['span']} x {case['users']} participant(s) x {res}{page}"


def case_table(results: dict[str, Any], case: dict[str, Any]) -> list[str]:
    labels = _labels(results)
    ref = reference_key(case)
    rows = []
    for key, r in case["results"].items():
        if r["status"] != "ok":
            rows.append([labels[key], r["status"], "", "", "", "", "", "", "", r["note"]])
            continue
        med = r["median_s"]
        rows.append(
            [
                labels[key],
                fmt_s(med),
                fmt_s(r["p95_s"]),
                str(r["runs"]),
                f"{r['rows']:,}" if r["rows"] is not None else "–",
                fmt_rate(r["rows_per_s"]),
                fmt_ratio(ratio_in_case(case, key, ref)),
                fmt_ratio(ratio_in_case(case, key, "limit")),
                fmt_ratio(ratio_in_case(case, key, "warm_raw")),
                r["note"],
            ]
        )
    lines = [f"#### {_case_title(case)}", ""]
    lines += _table(
        [
            "backend",
            "median",
            "p95",
            "runs",
            "rows",
            "rows/s",
            "÷ bare DuckDB",
            "÷ limit",
            "÷ warm raw",
            "note",
        ],
        rows,
    )
    if case.get("server_peak_rss_bytes"):
        lines += [
            f"Serving process peak RSS during this workload: "
            f"{fmt_bytes(case['server_peak_rss_bytes'])}.",
            "",
        ]
    return lines


def main_table(results: dict[str, Any]) -> list[str]:
    """Medians of every span workload, one column per backend."""
    labels = _labels(results)
    keys = list(results["backends"])
    rows = []
    for case in results.get("cases", []):
        if case["group"] != "span":
            continue
        res = case["requested"] if case["requested"] == "raw" else f"auto ({case['resolution']})"
        rows.append(
            [
                case["span"],
                case["users"],
                res,
                f"{_rows_of(case):,}" if _rows_of(case) is not None else "–",
                *[_cell(case, k) for k in keys],
            ]
        )
    return _table(["span", "participants", "resolution", "rows", *[labels[k] for k in keys]], rows)


def _rows_of(case: dict[str, Any]) -> int | None:
    for r in case["results"].values():
        if r["status"] == "ok" and r["rows"] is not None:
            return int(r["rows"])
    return None


def _cell(case: dict[str, Any], key: str) -> str:
    r = case["results"].get(key)
    if r is None:
        return "–"
    if r["status"] == "ok":
        return fmt_s(r["median_s"])
    return {"n/a": "n/a", "not available": "not avail.", "error": "error"}.get(r["status"], "?")


def winners(results: dict[str, Any]) -> list[str]:
    labels = _labels(results)
    rows = []
    for case in results.get("cases", []):
        timed = sorted((median, key) for key, median in _answered(case).items())
        if not timed:
            continue
        best_t, best = timed[0]
        slower = ratio_in_case(case, timed[1][1], best) if len(timed) > 1 else None
        second = "–" if slower is None else f"{labels[timed[1][1]]} ({slower:.1f}x slower)"
        vs_best = ratio_in_case(case, "engine", best)
        vs_engine = "–" if vs_best is None or best == "engine" else f"{vs_best:.2f}x"
        vs_limit = fmt_ratio(ratio_in_case(case, "engine", "limit"))
        rows.append(
            [
                case["group"],
                _case_title(case),
                labels[best],
                fmt_s(best_t),
                second,
                vs_engine,
                vs_limit,
            ]
        )
    header = ["workload", "case", "fastest", "median", "runner-up", "engine ÷ fastest"]
    return _table([*header, "engine ÷ limit"], rows)


STAGES = ("catalog", "plan", "check_files", "locate_page", "lake_scan", "warm_fetch", "merge")


def stages_section(results: dict[str, Any]) -> list[str]:
    """Where the engine's time goes, per workload (medians of its runs, engine.timings)."""
    rows = []
    for case in results.get("cases", []):
        r = case["results"].get("engine") or {}
        stages = r.get("stages")
        if r.get("status") != "ok" or not stages:
            continue
        ms = stages["ms"]
        total = (r["median_s"] or 0) * 1e3
        other = total - sum(ms.get(name, 0.0) for name in STAGES)
        rows.append(
            [
                case["group"],
                _case_title(case),
                f"{total:.2f}",
                *[f"{ms[name]:.2f}" if name in ms else "–" for name in STAGES],
                f"{max(other, 0.0):.2f}",
                f"{stages['counts'].get('warm_statements', 0):g}",
            ]
        )
    if not rows:
        return ["The engine did not run.", ""]
    lines = [
        "Median milliseconds per stage of the engine's runs (the stage timings `/plan` shows "
        "for catalog and plan): catalog load, planning, lake file checks, locating a deep "
        "page, DuckDB (set-up, scan, batches), warm-store fetch, merging; `other` is the rest "
        "of the end-to-end median (parsing the request, admission, Python). `warm stmts`: "
        "statements sent to the warm store per request, independent of machine load.",
        "",
    ]
    return lines + _table(
        ["workload", "case", "total", *STAGES, "other", "warm stmts"],
        rows,
    )


def concurrency_section(results: dict[str, Any]) -> list[str]:
    conc = results.get("concurrency")
    if not conc:
        return ["Not run.", ""]
    labels = _labels(results)
    rows = []
    for key, r in conc["results"].items():
        if r.get("status") != "ok":
            rows.append([labels[key], r.get("status", "?"), "", "", "", "", "", r.get("note", "")])
            continue
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        rows.append(
            [
                labels[key],
                f"{r['threads']} threads, {r['requests']} requests",
                f"{r['throughput_rps']:.1f} req/s" if r["throughput_rps"] else "–",
                fmt_s(r["median_s"]),
                fmt_s(r["p95_s"]),
                fmt_s(r["wall_s"]),
                fmt_bytes(r.get("server_peak_rss_bytes")),
                statuses,
            ]
        )
    lines = [
        "Each analyst (a thread) cycles through this mix, one page "
        f"({results.get('paging_page_size', 'default size')}) per request:",
        "",
    ]
    lines += [f"- {m}" for m in conc["mix"]] + [""]
    lines += _table(
        ["backend", "load", "throughput", "median", "p95", "wall", "server peak RSS", "outcomes"],
        rows,
    )
    return lines


def ingest_section(results: dict[str, Any]) -> list[str]:
    data = results.get("ingest_sync") or {}
    lines = []
    rows = []
    if "ingest" in data:
        i = data["ingest"]
        rows.append(
            [
                "ingest (Parquet file → raw_data, COPY)",
                f"{i['rows']:,}",
                fmt_s(i["seconds"]),
                fmt_rate(i["rows_per_s"]),
            ]
        )
    if "rollups" in data:
        r = data["rollups"]
        rows.append(
            [
                "rollup refresh (1m, 1h, 1d)",
                f"{sum(r['rows'].values()):,} written",
                fmt_s(r["seconds"]),
                fmt_rate(r["raw_rows_per_s"]) + " raw rows/s",
            ]
        )
    sync = data.get("sync") or {}
    if sync.get("ok"):
        rows.append(
            [
                "lake sync (warm → Delta, verified)",
                f"{sync['rows']:,}",
                fmt_s(sync["seconds"]),
                fmt_rate(sync["rows_per_s"]),
            ]
        )
    elif sync:
        rows.append(["lake sync", "–", "–", sync.get("note") or "not available"])
    lines.append(
        f"A scratch database ingests `{data.get('file', '?')}` "
        f"({data.get('file_rows', 0):,} rows, {fmt_bytes(data.get('file_bytes'))}), "
        f"refreshes its rollups{_on_connections(data.get('rollups', {}).get('workers'))} and "
        "syncs it to a scratch lake."
    )
    lines.append("")
    lines += _table(["step", "rows", "time", "rows/s"], rows)
    build = (results.get("dataset") or {}).get("build") or {}
    if build:
        ing = build.get("ingest", {})
        when = "reused from an earlier run" if results["dataset"]["reused"] else "this run"
        lines.append(
            f"Building the dataset ({when}, {build.get('built_at', '?')}) took "
            f"{fmt_s(build.get('seconds'))} in all: generate + ingest {ing.get('rows', 0):,} "
            f"rows {fmt_s(ing.get('seconds'))}, rollup refresh "
            f"{fmt_s(build.get('rollups', {}).get('seconds'))}, lake sync "
            f"{fmt_s(build.get('sync', {}).get('seconds'))}. The three run as a pipeline over "
            "participants (one ingest transaction each), so they overlap and compete for the "
            "same cores: the scratch figures above are the clean throughputs."
        )
        lines.append("")
    return lines


def storage_section(results: dict[str, Any]) -> list[str]:
    data = results.get("storage") or {}
    warm, lake = data.get("warm", {}), data.get("lake", {})
    rows = []
    for tier in TIERS.values():
        w, lk = warm.get(tier.warm_table, {}), lake.get(tier.lake_table, {})
        w_per = w["bytes"] / w["rows"] if w.get("rows") else None
        l_per = lk["bytes"] / lk["rows"] if lk.get("rows") else None
        rows.append(
            [
                f"{tier.warm_table} / {tier.lake_table}",
                fmt_bytes(w.get("bytes")),
                f"{w.get('rows', 0):,}",
                "–" if w_per is None else f"{w_per:.1f}",
                fmt_bytes(lk.get("bytes")),
                f"{lk.get('rows', 0):,}",
                "–" if l_per is None else f"{l_per:.2f}",
                fmt_ratio(_ratio(w_per, l_per)),
            ]
        )
    lines = [
        "Warm store: `pg_total_relation_size` (heap + indexes + TOAST; `hypertable_size` "
        "under TimescaleDB). Lake: bytes of the files in each tier's latest version. The "
        "warm store keeps every day (no tiering in the bench); the lake holds all but the "
        "grace days, so compare bytes per row.",
        "",
    ]
    lines += _table(
        [
            "table / tier",
            "warm bytes",
            "warm rows",
            "warm B/row",
            "lake bytes",
            "lake rows",
            "lake B/row",
            "warm ÷ lake per row",
        ],
        rows,
    )
    return lines + limit_build_note(results)


def limit_build_note(results: dict[str, Any]) -> list[str]:
    build = results.get("limit_build")
    if not build:
        return []
    tiers = [
        f"{tier} {fmt_bytes(b['bytes'])} ({b['rows']:,} rows, {fmt_s(b['seconds'])})"
        for tier, b in build.items()
        if isinstance(b, dict)
    ]
    when = "reused from an earlier run" if build.get("reused") else "built this run"
    return [
        f"The limit backend's files (one per participant and tier, {when}, "
        f"{build.get('built_at', '?')}): {'; '.join(tiers)}; {fmt_s(build.get('seconds'))} "
        "to write from the lake.",
        "",
    ]


def columnstore_section(results: dict[str, Any]) -> list[str]:
    data = results.get("columnstore") or {}
    if data.get("status") != "ok":
        return [f"Not measured: {data.get('note', 'no result')}.", ""]
    row, col, ratio = data["rowstore"], data["columnstore"], data["ratios"]
    lines = [
        f"{data['users']} participant(s) x {data['days']} days at native rates "
        f"({data['rows']:,} raw rows) in two scratch databases: one in the row store, one "
        f"with the chunks older than 2 days before the last day compressed ({col['chunks']} "
        f"chunks in {fmt_s(col['compress_s'])}). Then the same steps on each.",
        "",
    ]
    lines += _table(
        ["measure", "row store", "columnstore", "ratio"],
        [
            [
                "warm bytes per raw row (all four tables)",
                f"{row['bytes_per_raw_row']:.1f}",
                f"{col['bytes_per_raw_row']:.1f}",
                fmt_ratio(ratio["bytes_per_raw_row"]),
            ],
            [
                "of which compressed chunks, per raw row they hold",
                "–",
                f"{col['compressed_bytes_per_raw_row']:.2f}",
                "",
            ],
            [
                "ingest (before compression)",
                fmt_rate(row["ingest_rows_per_s"]),
                fmt_rate(col["ingest_rows_per_s"]),
                "",
            ],
            [
                "rollup refresh (raw rows/s, before compression)",
                fmt_rate(row["refresh_raw_rows_per_s"]),
                fmt_rate(col["refresh_raw_rows_per_s"]),
                "",
            ],
            [
                "raw read, one participant x 2 (compressed) days",
                fmt_s(row["read_s"]),
                fmt_s(col["read_s"]),
                fmt_ratio(ratio["read_s"]),
            ],
            [
                f"late re-delivery of a participant-day ({row['late_rows']:,} rows)",
                fmt_s(row["late_ingest_s"]),
                fmt_s(col["late_ingest_s"]),
                fmt_ratio(ratio["late_ingest_s"]),
            ],
            [
                "its rollup refresh",
                fmt_s(row["late_refresh_s"]),
                fmt_s(col["late_refresh_s"]),
                fmt_ratio(ratio["late_refresh_s"]),
            ],
            [
                "lake sync of every day",
                fmt_s(row["sync_s"]),
                fmt_s(col["sync_s"]),
                fmt_ratio(ratio["sync_s"]),
            ],
        ],
    )
    lines.append(
        "At the defaults the warm store holds 30 days, the last 2 in the row store: "
        f"about {data['steady_state_bytes_per_raw_row']:.1f} bytes per raw row."
    )
    lines.append("")
    return lines


def memory_section(results: dict[str, Any]) -> list[str]:
    lines = []
    peak = results.get("server_peak_rss_bytes")
    lines.append(
        f"Serving process (uvicorn, default budget) peak RSS over the whole run "
        f"(VmHWM): {fmt_bytes(peak)}. Per-workload peaks (VmRSS sampled every 20 ms) "
        "are under each workload's table. The bench process itself (engine in "
        f"process, bare DuckDB, psycopg fetchall) peaked at "
        f"{fmt_bytes(results.get('bench_process_peak_rss_bytes'))}."
    )
    lines.append("")
    budget = results.get("budget") or {}
    lines.append("### Budget proof")
    lines.append("")
    if budget.get("status") != "ok":
        lines += [f"{budget.get('status', 'not run')}: {budget.get('note', '')}", ""]
        return lines
    scan, conc = budget["full_scan"], budget["concurrent"]
    verdict = "PASS" if budget["passed"] else "FAIL"
    in_memory = scan["rows"] * row_bytes("raw")
    lines.append(
        f"A server started with `STRATUM_MEMORY_BUDGET={budget['budget']}` over a lake of "
        f"{fmt_bytes(budget.get('lake_bytes'))} on disk "
        f"({(budget.get('lake_bytes') or 0) / budget['budget_bytes']:.1f}x the budget; Parquet "
        f"keeps raw rows in a few bytes each). The full-lake scan's answer is "
        f"{fmt_bytes(in_memory)} as Arrow rows ({row_bytes('raw')} B each), "
        f"{in_memory / budget['budget_bytes']:.1f}x the budget: it must stream (the engine "
        "reads such an answer series by series in file order, without a sort)."
    )
    lines.append("")
    rows = [
        ["idle", "–", "–", "–", fmt_bytes(budget["idle_rss_bytes"])],
        [
            f"full-lake scan: {scan['users']} participants x {scan['metrics']} metrics x "
            f"{scan['days']} days raw, Arrow stream",
            f"{scan['rows']:,}",
            fmt_s(scan["seconds"]),
            scan["status"],
            fmt_bytes(scan["peak_rss_bytes"]),
        ],
        [
            f"{conc['threads']} concurrent {scan['days']}-day raw queries (every main participant, "
            "heart rate, Arrow stream)",
            f"{conc['rows']:,}",
            fmt_s(conc["wall_s"]),
            ", ".join(f"{k}: {v}" for k, v in sorted(conc["statuses"].items()))
            + (f" ({conc['retried_503']} retried after a 503)" if conc.get("retried_503") else ""),
            fmt_bytes(conc["server_peak_rss_bytes"]),
        ],
    ]
    pages = budget.get("json_pages")
    if pages:
        rows.append(
            [
                f"{pages['threads']} concurrent 1M-row JSON pages (every participant and "
                "metric, raw)",
                f"{pages['rows']:,}",
                fmt_s(pages["wall_s"]),
                ", ".join(f"{k}: {v}" for k, v in sorted(pages["statuses"].items()))
                + (
                    f" ({pages['retried_503']} retried after a 503)"
                    if pages.get("retried_503")
                    else ""
                ),
                fmt_bytes(pages["server_peak_rss_bytes"]),
            ]
        )
    lines += _table(["step", "rows", "time", "outcome", "peak RSS"], rows)
    lines.append(
        f"Peak RSS of the serving process (VmHWM): **{fmt_bytes(budget['peak_rss_bytes'])}** "
        f"against a budget of {fmt_bytes(budget['budget_bytes'])}: **{verdict}** "
        f"(server {'alive' if budget.get('server_alive') else 'DIED'} at the end). RSS counts "
        "the interpreter and libraries too (the idle row), so this is stricter than the "
        "budget's own accounting. A 503 is the budget refusing a query it cannot admit, as "
        "designed, rather than the process growing; the analysts then wait the Retry-After "
        "and ask again."
    )
    lines.append("")
    return lines


def not_available(results: dict[str, Any]) -> list[str]:
    labels = _labels(results)
    rows = [[labels[k], v["note"]] for k, v in results["backends"].items() if not v["available"]]
    errors = []
    for case in results.get("cases", []):
        for key, r in case["results"].items():
            if r["status"] == "error":
                errors.append([labels[key], f"{case['id']}: {r['note']}"])
    if results.get("server_note"):
        rows.append(["HTTP server", results["server_note"]])
    sync = ((results.get("dataset") or {}).get("sync_note")) or ""
    if sync:
        rows.append(["lake", sync])
    if not rows and not errors:
        return ["Every backend ran.", ""]
    return _table(["backend", "reason"], rows + errors)


# -- plots --------------------------------------------------------------------------------


def plot_latency(results: dict[str, Any], out_dir: Path) -> Path | None:
    cases = [c for c in results.get("cases", []) if c["group"] == "span"]
    if not cases:
        return None
    users_axis = list(dict.fromkeys(c["users"] for c in cases))
    resolutions = ["raw", "auto"]
    labels = _labels(results)
    colors = {key: f"C{i}" for i, key in enumerate(results["backends"])}  # same in every panel
    ticks = sorted({(c["span_days"], c["span"]) for c in cases})
    fig, axes = plt.subplots(
        len(resolutions),
        len(users_axis),
        squeeze=False,
        figsize=(4.2 * len(users_axis), 3.6 * len(resolutions)),
    )
    drawn: dict[str, Any] = {}
    for row, requested in enumerate(resolutions):
        for col, users in enumerate(users_axis):
            ax = axes[row][col]
            chosen = [c for c in cases if c["users"] == users and c["requested"] == requested]
            for key in results["backends"]:
                points = [(c["span_days"], _median(c, key)) for c in chosen]
                xs = [x for x, y in points if y is not None]
                ys = [y * 1e3 for _, y in points if y is not None]
                if xs:
                    (line,) = ax.plot(xs, ys, marker="o", color=colors[key], label=labels[key])
                    drawn.setdefault(key, line)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks([d for d, _ in ticks], [name for _, name in ticks])
            ax.minorticks_off()
            ax.set_title(f"{users} participant(s), {requested}", fontsize=10)
            ax.set_xlabel("span")
            ax.set_ylabel("median latency (ms)")
            ax.grid(True, which="major", alpha=0.3)
    keys = [k for k in results["backends"] if k in drawn]
    fig.legend(
        [drawn[k] for k in keys],
        [labels[k] for k in keys],
        loc="lower center",
        ncol=min(4, max(1, len(keys))),
        fontsize=8,
    )
    fig.suptitle(f"stratum bench — {results['scale']}: latency against span", fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.96))
    path = out_dir / PLOT_FILE
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the report ---------------------------------------------------------------------------


def render(results: dict[str, Any], plot: Path | None) -> str:
    ds, machine = results["dataset"], results.get("machine", {})
    lines = [f"# stratum bench — `{results['scale']}`", ""]
    lines.append(
        f"{results['preset']}. Started {results['started_at']}, took "
        f"{results['total_s'] / 60:.1f} min (target < {results['target_minutes']:.0f} "
        "min)."
    )
    lines.append("")
    lines.append(
        f"Machine: {machine.get('cpus')} CPUs, {fmt_bytes(machine.get('ram_bytes'))} RAM, "
        f"Python {machine.get('python')}, PostgreSQL {machine.get('postgresql')}"
        f"{' + TimescaleDB ' + machine['timescaledb'] if machine.get('timescaledb') else ''}, "
        f"DuckDB {machine.get('duckdb')}, commit {machine.get('commit') or '?'}."
    )
    lines.append("")
    lines.append(
        f"Dataset: {ds['main_users']} participants x {ds['days']} days ({ds['start']} .. "
        f"{ds['end']}) plus {ds['high_rate_users']} at native rates; the lake holds every day "
        f"before {ds['lake_end'][:10]}, the last {ds['warm_days']} day(s) are warm only. "
        f"{'Reused' if ds['reused'] else 'Built this run'} in `{ds['home']}`."
    )
    lines.append("")
    lines.append(
        "Method: each workload warms every backend up once, then runs them interleaved, "
        "each round in an order of its own (A B C, C A B, B C A …: the backend after the "
        "heaviest is not always the same) until each has at least the minimum runs and has "
        "spent the time "
        "budget, or the maximum runs; a backend whose runs are short goes on to more runs "
        "within a small time budget of its own, so that short workloads' medians "
        "hold still. A backend's median is over all its runs; a ratio of two backends is "
        "of their medians over the rounds both ran (the extra rounds come after the heavy "
        "backends are done, so they are quieter, and a faster backend gets more of them). "
        "p95 is nearest-rank: with few runs it is the slowest. "
        "`÷ bare DuckDB` divides by DuckDB over the lake's exact file list of the answer's tier "
        "; `÷ limit` by DuckDB over the same rows compacted into one file per participant "
        "(sorted by metric, ts; what a scan of these rows costs at best, whatever the lake's "
        "file layout); `÷ warm raw` by psycopg `fetchall()` over raw_data (the "
        "original design). Below 1 is faster. Bare DuckDB times exclude listing the files; "
        "every other backend's time is end to end. The HTTP backends read with the standard "
        "library's http.client over a kept-alive connection (httpx took 1.6-2.6x longer to "
        "read a 13.6 MB chunked body on loopback: it would time the client library, not the "
        "server); the Arrow backend reads the stream message by message as it arrives."
    )
    lines.append("")
    lines.append("Backends:")
    lines.append("")
    for key, b in results["backends"].items():
        state = "" if b["available"] else f" — **not available**: {b['note']}"
        lines.append(f"- **{b['label']}** (`{key}`): {b['description']}{state}")
    lines.append("")

    lines += ["## Targets", ""]
    lines.append("From the issue; reported, never asserted.")
    lines.append("")
    lines += _table(
        ["target", "measured", "verdict", "where"],
        [[t["target"], t["measured"], t["verdict"], t["where"]] for t in targets(results)],
    )
    lines += [
        "## Main table",
        "",
        "Median latency of each span workload (whole answer; "
        "heart rate; spans end where the lake ends).",
        "",
    ]
    lines += main_table(results)
    lines += ["## Winners", ""] + winners(results)
    lines += ["## Engine stages", ""] + stages_section(results)
    lines += ["## Span workloads", ""]
    for case in results.get("cases", []):
        if case["group"] == "span":
            lines += case_table(results, case)
    lines += ["## High-rate and recent workloads", ""]
    lines.append(
        "High rate: a participant with heart rate at 1 Hz. Recent: the last day, only "
        "in the warm store (the grace period), so the lake backends do not apply."
    )
    lines.append("")
    for case in results.get("cases", []):
        if case["group"] in ("high rate", "recent"):
            lines += case_table(results, case)
    lines += ["## Deep paging", ""]
    rows = results.get("paging_answer_rows")
    lines.append(
        f"The answer: every participant x {', '.join(('heart_rate', 'respiratory_rate', 'steps'))} "
        f"x the whole lake span, raw: {rows:,} rows. Bare backends use ORDER BY + "
        "LIMIT/OFFSET."
    )
    lines.append("")
    for case in results.get("cases", []):
        if case["group"] == "deep paging":
            lines += case_table(results, case)
    lines += ["## Side by side", ""] + side_by_side_section(results)
    lines += ["## Concurrent analysts", ""] + concurrency_section(results)
    lines += ["## Ingest and sync", ""] + ingest_section(results)
    lines += ["## Storage", ""] + storage_section(results)
    lines += ["## Warm columnstore (TimescaleDB)", ""] + columnstore_section(results)
    lines += ["## Memory", ""] + memory_section(results)
    lines += ["## Explorer page", ""] + explorer_section(results)
    lines += ["## Plots", ""]
    lines += [f"![latency against span]({plot.name})", ""] if plot else ["No span workloads.", ""]
    lines += ["## Not available", ""] + not_available(results)
    stages = results.get("stages_s", {})
    lines.append("Time per stage: " + ", ".join(f"{k} {v:.0f}s" for k, v in stages.items()) + ".")
    lines.append("")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out_dir: Path) -> Path:
    plot = plot_latency(results, out_dir)
    path = out_dir / "report.md"
    path.write_text(render(results, plot))
    return path


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    print(write_report(json.loads((folder / "results.json").read_text()), folder))
