"""`stratum bench`: build or reuse the dataset, run every workload on every backend, report."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import psycopg
from rich.progress import Progress

from benchmarks import backends as bk
from benchmarks.columnstore import columnstore_effect
from benchmarks.dataset import Dataset, bench_home, open_dataset
from benchmarks.explorer import first_chart
from benchmarks.extras import (
    budget_proof,
    concurrent_load,
    ingest_and_sync,
    json_rendering,
    storage,
)
from benchmarks.measure import CaseResult, run_case, run_pair
from benchmarks.presets import PRESETS, Preset
from benchmarks.report import write_report
from benchmarks.server import ServerProcess, proc_status_kib
from benchmarks.workloads import (
    METRIC,
    PAGING_METRICS,
    Case,
    concurrency_mix,
    high_rate_cases,
    paging_cases,
    recent_cases,
    span_cases,
)
from engine.settings import Settings
from sync import timescale
from sync.localdb import stop_local_postgres

BACKEND_ORDER = (
    "warm_raw",
    "warm_rollups",
    "lake_raw",
    "lake_rollups",
    "limit",
    "engine",
    "http_json",
    "http_arrow",
)
BACKEND_CLASSES: dict[str, type[bk.Backend]] = {
    "warm_raw": bk.WarmRaw,
    "warm_rollups": bk.WarmRollups,
    "lake_raw": bk.LakeRaw,
    "lake_rollups": bk.LakeRollups,
    "limit": bk.Limit,
    "engine": bk.InProcessEngine,
    "http_json": bk.HttpJson,
    "http_arrow": bk.HttpArrow,
}
RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def default_out_dir(scale: str) -> Path:
    return RESULTS_ROOT / f"{datetime.now(UTC).date().isoformat()}-{scale}"


def _machine(dataset: Dataset) -> dict[str, Any]:
    with psycopg.connect(dataset.url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        pg_version = row[0] if row else "?"
        timescaledb = timescale.version(conn)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpus": os.cpu_count(),
        "ram_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgresql": pg_version,
        "timescaledb": timescaledb,
        "duckdb": duckdb.__version__,
        "commit": commit,
    }


def _make_backends(
    dataset: Dataset, server: ServerProcess | None, server_note: str
) -> dict[str, bk.Backend | str]:
    made: dict[str, bk.Backend | str] = {}
    for key in BACKEND_ORDER:
        cls = BACKEND_CLASSES[key]
        try:
            if issubclass(cls, bk._Http):
                if server is None:
                    made[key] = server_note
                    continue
                made[key] = cls(server.base_url, dataset.preset.page_size, server.key)
            else:
                made[key] = cls(dataset)  # type: ignore[call-arg]
        except bk.NotApplicable as exc:
            made[key] = str(exc)
        except Exception as exc:
            made[key] = f"{type(exc).__name__}: {exc}"
    return made


def _answer_rows(dataset: Dataset, metrics: tuple[str, ...]) -> int:
    start = dataset.lake_end - timedelta(days=dataset.preset.lake_days)
    with psycopg.connect(dataset.url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM raw_data WHERE user_id = ANY(%s) AND metric = ANY(%s) "
            "AND ts >= %s AND ts < %s",
            (list(dataset.main_users), list(metrics), start, dataset.lake_end),
        ).fetchone()
    return int(row[0]) if row else 0


def _stage(stages: dict[str, float], name: str, action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        return action()
    finally:
        stages[name] = round(time.perf_counter() - started, 2)


def run_suite(
    scale: str,
    settings: Settings,
    *,
    progress_bar: Callable[[], Progress],
    serve_command: Sequence[str] | None,
    out_dir: Path | None = None,
    rebuild: bool = False,
    home: Path | None = None,
) -> Path:
    """Run the preset end to end; returns the folder with results.json, report.md, plots.

    The caller owns the terminal (`progress_bar` makes the bar) and the HTTP API:
    `serve_command` serves it on $STRATUM_HOST:$STRATUM_PORT; None leaves the HTTP backends
    not available.
    """
    preset: Preset = PRESETS[scale]
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    home = home or bench_home(settings, scale)
    began = time.perf_counter()
    stages: dict[str, float] = {}
    results: dict[str, Any] = {
        "scale": scale,
        "preset": preset.description,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "target_minutes": preset.minutes,
    }
    with progress_bar() as progress, _server_stopped_after(home):
        dataset = _stage(stages, "dataset", lambda: open_dataset(preset, home, progress, rebuild))
        results["dataset"] = {
            "home": str(dataset.home),
            "reused": dataset.reused,
            "lake_synced": dataset.lake_synced,
            "sync_note": dataset.sync_note,
            "main_users": len(dataset.main_users),
            "high_rate_users": len(dataset.high_rate_users),
            "days": preset.main.days,
            "start": preset.start.isoformat(),
            "end": preset.end.isoformat(),
            "lake_end": dataset.lake_end.isoformat(),
            "warm_days": preset.warm_days,
            "build": dataset.build,
        }
        results["machine"] = _machine(dataset)
        query_settings = dataset.settings().query
        cases = [
            *span_cases(dataset, query_settings),
            *high_rate_cases(dataset, query_settings),
            *recent_cases(dataset, query_settings),
        ]
        paging_rows = _answer_rows(dataset, PAGING_METRICS)
        paging = paging_cases(dataset, paging_rows)
        server = None
        server_note = "HTTP API not available (no command to serve it was given)"
        if serve_command is not None:
            try:
                server = ServerProcess(serve_command, dataset, out_dir / "server.log")
            except Exception as exc:
                server_note = f"HTTP server failed to start: {exc}"
        results["server_note"] = server_note if server is None else ""
        backends = _make_backends(dataset, server, server_note)
        results["backends"] = {
            key: {
                "label": BACKEND_CLASSES[key].label,
                "description": BACKEND_CLASSES[key].description,
                "reference": BACKEND_CLASSES[key].reference,
                "available": not isinstance(backends[key], str),
                "note": backends[key] if isinstance(backends[key], str) else "",
            }
            for key in BACKEND_ORDER
        }
        limit = backends["limit"]
        results["limit_build"] = limit.files.build if isinstance(limit, bk.Limit) else None
        sampler = server.sampler if server is not None else None
        try:
            task = progress.add_task("queries", total=len(cases) + len(paging), rows=0)
            done: list[CaseResult] = []
            started = time.perf_counter()
            for case in [*cases, *paging]:
                progress.update(task, description=f"{case.id[:48]:<48}")
                done.append(run_case(case, backends, preset, sampler))
                progress.update(task, advance=1)
            stages["queries"] = round(time.perf_counter() - started, 2)
            progress.update(task, description="queries")
            results["cases"] = [r.to_json() for r in done]
            results["side_by_side"] = _side_by_side(cases, backends, preset)
            results["paging_answer_rows"] = paging_rows
            results["json_rendering"] = (
                {"status": "not available", "note": server_note}
                if server is None
                else json_rendering(server)
            )

            task = progress.add_task("concurrent analysts", total=3, rows=0)
            mix = concurrency_mix(dataset, query_settings)
            concurrency: dict[str, Any] = {}
            started = time.perf_counter()
            for key in ("engine", "http_json", "http_arrow"):
                backend = backends[key]
                if isinstance(backend, str):
                    concurrency[key] = {"status": "not available", "note": backend}
                else:
                    factory_for = _backend_factory(key, dataset, server)
                    concurrency[key] = {
                        "status": "ok",
                        **concurrent_load(
                            factory_for,
                            mix,
                            preset.concurrency,
                            preset.concurrent_requests,
                            sampler if key != "engine" else None,
                        ),
                    }
                progress.update(task, advance=1)
            stages["concurrency"] = round(time.perf_counter() - started, 2)
            results["concurrency"] = {"mix": [c.id for c in mix], "results": concurrency}

            task = progress.add_task("explorer page", total=1, rows=0)
            results["explorer"] = _stage(
                stages, "explorer", lambda: _explorer(dataset, server, server_note)
            )
            progress.update(task, advance=1)
        finally:
            for backend in backends.values():
                if not isinstance(backend, str):
                    backend.close()
            if server is not None:
                results["server_peak_rss_bytes"] = server.sampler.high_water()
                server.stop()
        own = proc_status_kib(os.getpid(), "VmHWM")
        results["bench_process_peak_rss_bytes"] = None if own is None else own * 1024

        task = progress.add_task("ingest + sync (scratch)", total=1, rows=0)
        results["ingest_sync"] = _stage(stages, "ingest_sync", lambda: ingest_and_sync(dataset))
        progress.update(task, advance=1, rows=results["ingest_sync"].get("file_rows", 0))
        task = progress.add_task("storage", total=1, rows=0)
        results["storage"] = _stage(stages, "storage", lambda: storage(dataset))
        progress.update(task, advance=1)
        task = progress.add_task("warm columnstore (scratch)", total=1, rows=0)
        results["columnstore"] = _stage(stages, "columnstore", lambda: columnstore_effect(dataset))
        progress.update(task, advance=1)
        task = progress.add_task("memory budget proof", total=1, rows=0)
        if server is None or serve_command is None:
            results["budget"] = {"status": "not available", "note": server_note}
        else:
            command = serve_command
            results["budget"] = _stage(
                stages, "budget", lambda: budget_proof(command, dataset, out_dir)
            )
        progress.update(task, advance=1)
    results["stages_s"] = stages
    results["total_s"] = round(time.perf_counter() - began, 2)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    write_report(results, out_dir)
    return out_dir


# The targets' pairs, each measured alone (run_pair): what the issue compares, without the
# main table's neighbours. (measured, reference) on one participant's longest raw span.
SIDE_BY_SIDE = (("http_arrow", "lake_raw"), ("engine", "limit"))


def _side_by_side(
    cases: Sequence[Case], backends: Mapping[str, bk.Backend | str], preset: Preset
) -> list[dict[str, Any]]:
    singles = [c for c in cases if c.group == "span" and c.requested == "raw" and len(c.users) == 1]
    if not singles:
        return []
    case = max(singles, key=lambda c: c.span_days)
    out: list[dict[str, Any]] = []
    for measured, reference in SIDE_BY_SIDE:
        first, second = backends[measured], backends[reference]
        pair = {"measured": measured, "reference": reference}
        if isinstance(first, str) or isinstance(second, str):
            note = first if isinstance(first, str) else second
            out.append({**pair, "status": "not available", "note": note})
            continue
        try:
            measured_pair = run_pair(case, first, second, preset.pair_rounds)
            out.append({**pair, "status": "ok", **measured_pair})
        except Exception as exc:  # a broken backend must not stop the suite
            out.append({**pair, "status": "error", "note": f"{type(exc).__name__}: {exc}"})
    return out


@contextmanager
def _server_stopped_after(home: Path) -> Iterator[None]:
    """Stop the dataset's private PostgreSQL when the run ends, however it ends: a command
    leaves no server behind (the next run starts it again, in about a second)."""
    try:
        yield
    finally:
        stop_local_postgres(home)


def _explorer(dataset: Dataset, server: ServerProcess | None, server_note: str) -> dict[str, Any]:
    """The page's first chart for one participant over a year of heart rate (or the longest
    span the lake holds), in headless Chromium."""
    if server is None:
        return {"status": "not available", "note": server_note}
    end = dataset.lake_end.date()
    days = min(365, dataset.preset.lake_days)
    return first_chart(
        server.base_url,
        server.key,
        user_id=dataset.main_users[0],
        metric=METRIC,
        start=end - timedelta(days=days),
        end=end,
        runs=dataset.preset.min_repetitions + 2,
    )


def _backend_factory(
    key: str, dataset: Dataset, server: ServerProcess | None
) -> Callable[[], bk.Backend]:
    cls = BACKEND_CLASSES[key]
    if issubclass(cls, bk._Http):
        assert server is not None
        base_url, size, key = server.base_url, dataset.preset.page_size, server.key
        return lambda: cls(base_url, size, key)
    shared = cls(dataset)  # type: ignore[call-arg]
    # The engine is shared by every analyst thread, as one server's is.
    return lambda: shared
