"""Timing: warm-up, interleaved repetitions, statistics."""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from benchmarks.backends import Backend, NotApplicable, Timed
from benchmarks.presets import Preset
from benchmarks.server import RssSampler
from benchmarks.workloads import Case


def elapsed_ms(action: Callable[[], object]) -> float:
    """Wall time of one call, in milliseconds."""
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def median_ms(action: Callable[[], object], repeats: int) -> float:
    """Median of `repeats` timed calls after one untimed warm-up call."""
    action()
    return statistics.median(elapsed_ms(action) for _ in range(repeats))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with few samples p95 is the slowest run)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Measurement:
    backend: str
    status: str  # ok | n/a | not available | error
    note: str = ""
    times_s: list[float] = field(default_factory=list)
    # The round each of times_s ran in (None: before the rounds, a warm-up counted): ratios
    # compare two backends over the rounds both ran (benchmarks.report.ratio_in_case).
    rounds: list[int | None] = field(default_factory=list)
    rows: int | None = None
    stages: dict[str, Any] | None = None  # the engine's per-stage medians (engine.timings)

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None

    @property
    def p95_s(self) -> float | None:
        return percentile(self.times_s, 95) if self.times_s else None

    @property
    def rows_per_s(self) -> float | None:
        median = self.median_s
        return self.rows / median if median and self.rows is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "status": self.status,
            "note": self.note,
            "runs": len(self.times_s),
            "times_s": [round(t, 6) for t in self.times_s],
            "rounds": self.rounds,
            "median_s": self.median_s,
            "p95_s": self.p95_s,
            "min_s": min(self.times_s) if self.times_s else None,
            "rows": self.rows,
            "rows_per_s": self.rows_per_s,
            "stages": self.stages,
        }


@dataclass
class CaseResult:
    case: Case
    results: dict[str, Measurement]
    server_peak_rss: int | None  # max VmRSS of the serving process while the case ran

    def to_json(self) -> dict[str, Any]:
        c = self.case
        return {
            "id": c.id,
            "group": c.group,
            "span": c.span,
            "span_days": c.span_days,
            "users": c.users_label,
            "user_ids": list(c.users),
            "metrics": list(c.metrics),
            "start": c.start.isoformat(),
            "end": c.end.isoformat(),
            "requested": c.requested,
            "resolution": c.resolution,
            "page_size": c.page_size,
            "page_number": c.page_number,
            "server_peak_rss_bytes": self.server_peak_rss,
            "results": {k: m.to_json() for k, m in self.results.items()},
        }


def round_orders(keys: list[str], seed: str) -> Iterator[list[str]]:
    """Each round's order of the backends, shuffled (the same for the same seed): whatever
    ran just before a backend leaves its caches cold, so with one fixed order the backend
    after the heaviest neighbour paid for it in every run. Right after a DuckDB scan of the
    lake, the in-process engine's 1 participant-week hourly took 2.9 ms instead of 1.65,
    and psycopg's 1.68 instead of 0.99; the engine, always after the limit backend, came
    to 1.72-2.21x the fastest in three runs of that workload, 1.44-1.71x shuffled."""
    shuffler = random.Random(seed)  # noqa: S311 (an order, not a secret)
    while True:
        order = list(keys)
        shuffler.shuffle(order)
        yield order


def _error_note(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 300 else text[:297] + "..."


def run_case(
    case: Case,
    backends: Mapping[str, Backend | str],
    preset: Preset,
    sampler: RssSampler | None,
) -> CaseResult:
    """Warm up every backend, then repeat them interleaved, each round in its own order
    (A B C, C A B, B C A ...; round_orders): each backend min_repetitions times, then on
    up to max_repetitions while within cell_budget_s, and a short one on up to
    short_repetitions while within short_budget_s (its rounds then hold the short ones:
    their neighbours are as shuffled as before)."""
    results: dict[str, Measurement] = {}
    ready: dict[str, Timed] = {}
    for key, backend in backends.items():
        if isinstance(backend, str):
            results[key] = Measurement(key, "not available", backend)
            continue
        try:
            ready[key] = backend.prepare(case)
            results[key] = Measurement(key, "ok")
        except NotApplicable as exc:
            results[key] = Measurement(key, "n/a", str(exc))
        except Exception as exc:  # a broken backend must not stop the suite
            results[key] = Measurement(key, "error", _error_note(exc))

    def timed(key: str) -> float | None:
        try:
            started = time.perf_counter()
            rows = ready[key]()
            elapsed = time.perf_counter() - started
        except Exception as exc:
            results[key] = Measurement(key, "error", _error_note(exc))
            del ready[key]
            return None
        results[key].rows = rows
        return elapsed

    peak = [0]
    window = sampler.window() if sampler is not None else None
    if window is not None:
        peak = window.__enter__()
    try:
        slow: set[str] = set()
        for key in list(ready):
            for _ in range(preset.warmup):
                elapsed = timed(key)
                if elapsed is None:
                    break
                if elapsed > preset.cell_budget_s:
                    # Longer than the whole time budget: warming up cannot matter at this
                    # size, so the warm-up is the one measured run.
                    slow.add(key)
                    results[key].times_s.append(elapsed)
                    results[key].rounds.append(None)
                    results[key].note = "1 run: over the time budget, warm-up counted"
                    break
        spent = dict.fromkeys(ready, 0.0)

        def wants_more(key: str) -> bool:
            if key not in ready or key in slow:
                return False
            done = len(results[key].times_s)
            if done < preset.min_repetitions:
                return True
            if done < preset.max_repetitions:
                return spent[key] < preset.cell_budget_s
            return done < preset.short_repetitions and spent[key] < preset.short_budget_s

        orders = round_orders(list(ready), case.id)
        round_number = 0
        while any(wants_more(key) for key in ready):
            for key in next(orders):
                if not wants_more(key):
                    continue
                elapsed = timed(key)
                if elapsed is not None:
                    results[key].times_s.append(elapsed)
                    results[key].rounds.append(round_number)
                    spent[key] += elapsed
            round_number += 1
    finally:
        if window is not None:
            window.__exit__(None, None, None)
    for key in ready:
        backend = backends[key]
        if not isinstance(backend, str):
            results[key].stages = backend.stages()
    rows = {m.rows for m in results.values() if m.status == "ok" and m.rows is not None}
    if len(rows) > 1:
        for m in results.values():
            if m.status == "ok":
                m.note = (m.note + "; " if m.note else "") + "row counts differ between backends"
    return CaseResult(case, results, peak[0] if sampler is not None else None)


def run_pair(case: Case, measured: Backend, reference: Backend, rounds: int) -> dict[str, Any]:
    """Two backends on one case and nothing else, alternating (A B, B A, A B ...) for
    `rounds` rounds after a warm-up each: the ratio a target names, from as many runs of
    each, with no third backend's leftovers. In the main table /data Arrow's one
    participant-year raw gets 5 runs (its time budget), among 2-second neighbours (psycopg's
    fetchall, the JSON pages): 37-78 ms in one run, against 10 runs of bare DuckDB."""
    runs = {"measured": measured.prepare(case), "reference": reference.prepare(case)}
    times: dict[str, list[float]] = {"measured": [], "reference": []}
    for run in runs.values():
        run()
    for round_number in range(rounds):
        order = ("measured", "reference") if round_number % 2 == 0 else ("reference", "measured")
        for key in order:
            started = time.perf_counter()
            runs[key]()
            times[key].append(time.perf_counter() - started)
    medians = {key: statistics.median(values) for key, values in times.items()}
    return {
        "case": case.id,
        "rounds": rounds,
        "times_s": {key: [round(t, 6) for t in values] for key, values in times.items()},
        "median_s": medians,
        "ratio": medians["measured"] / medians["reference"],
    }
