"""Workloads that are not one query: concurrency, ingest/sync throughput, storage, budget."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.backends import Backend, HttpStatusError, Timed
from benchmarks.dataset import Dataset, drop_database, ingest_file, sync_until
from benchmarks.measure import percentile
from benchmarks.server import RssSampler, ServerProcess
from benchmarks.workloads import METRIC, Case
from engine.registry import METRICS
from engine.tiers import LAKE_TABLES, RAW_MINUTE_DAYS, TIERS
from lake import Lake
from sync import timescale
from sync.ingest import ingest_files
from sync.rollups import REFRESH_WORKERS, refresh_rollups
from sync.schema import init_schema


def _status_of(exc: BaseException) -> str:
    if isinstance(exc, HttpStatusError):
        return str(exc.status)
    return type(exc).__name__


def _retry_after(exc: BaseException) -> float:
    if isinstance(exc, HttpStatusError):
        try:
            return float(exc.headers.get("retry-after", "1"))
        except ValueError:
            return 1.0
    return 1.0


def concurrent_load(
    make_backend: Callable[[], Backend],
    mix: list[Case],
    threads: int,
    requests: int,
    sampler: RssSampler | None,
    retries: int = 0,
) -> dict[str, Any]:
    """`threads` analysts issue `requests` requests in all, cycling through `mix`. With
    `retries`, an analyst answered 503 waits its Retry-After and asks again, as clients of a
    budget-limited server should."""
    local = threading.local()
    retried = [0]
    retried_lock = threading.Lock()
    made: list[Backend] = []
    made_lock = threading.Lock()

    def one(i: int) -> tuple[float, str, int]:
        backend = getattr(local, "backend", None)
        if backend is None:
            backend = local.backend = make_backend()
            local.prepared = {}
            with made_lock:
                made.append(backend)
        case = mix[i % len(mix)]
        run: Timed = local.prepared.get(case.id) or backend.prepare(case)
        local.prepared[case.id] = run
        started = time.perf_counter()
        for attempt in range(retries + 1):
            try:
                rows = run()
                return time.perf_counter() - started, "ok", rows
            except Exception as exc:
                status = _status_of(exc)
                if status != "503" or attempt == retries:
                    return time.perf_counter() - started, status, 0
                with retried_lock:
                    retried[0] += 1
                time.sleep(_retry_after(exc))
        raise AssertionError("unreachable")

    window = sampler.window() if sampler is not None else None
    peak = window.__enter__() if window is not None else [0]
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(threads) as pool:
            outcomes = list(pool.map(one, range(requests)))
    finally:
        wall = time.perf_counter() - started
        if window is not None:
            window.__exit__(None, None, None)
        for backend in {id(b): b for b in made}.values():
            backend.close()
    latencies = [t for t, status, _ in outcomes if status == "ok"]
    statuses = Counter(status for _, status, _ in outcomes)
    return {
        "threads": threads,
        "requests": requests,
        "ok": statuses.get("ok", 0),
        "statuses": dict(statuses),
        "wall_s": wall,
        "throughput_rps": statuses.get("ok", 0) / wall if wall else None,
        "rows": sum(rows for _, _, rows in outcomes),
        "median_s": percentile(latencies, 50) if latencies else None,
        "p95_s": percentile(latencies, 95) if latencies else None,
        "server_peak_rss_bytes": peak[0] if sampler is not None else None,
        "retried_503": retried[0],
    }


def ingest_and_sync(dataset: Dataset) -> dict[str, Any]:
    """Ingest a generated Parquet file into a scratch database, roll it up, sync it."""
    path, rows = ingest_file(dataset.preset, dataset.home)
    name = "bench_scratch"
    drop_database(dataset.url, name)
    admin = dataset.server_url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = dataset.server_url(name)
    lake_path = dataset.home / "scratch-lake"
    shutil.rmtree(lake_path, ignore_errors=True)
    out: dict[str, Any] = {"file": path.name, "file_rows": rows, "file_bytes": path.stat().st_size}
    try:
        init_schema(url)
        ingested = ingest_files(url, [path])
        out["ingest"] = {
            "rows": ingested.rows,
            "seconds": ingested.seconds,
            "rows_per_s": ingested.rows_per_s,
        }
        refreshed = refresh_rollups(url)
        out["rollups"] = {
            "rows": refreshed.rows,
            "seconds": refreshed.seconds,
            "raw_rows_per_s": ingested.rows / refreshed.seconds if refreshed.seconds else None,
            "workers": REFRESH_WORKERS,
        }
        settings = dataset.settings(STRATUM_DATABASE_URL=url, STRATUM_LAKE_PATH=str(lake_path))
        until = dataset.preset.end + timedelta(days=400)
        synced = sync_until(settings, url, until)
        raw_rows = synced.rows["raw"]
        out["sync"] = {
            "ok": True,  # a failure raises
            "rows": raw_rows,
            "seconds": round(synced.seconds, 2),
            "rows_per_s": raw_rows / synced.seconds if synced.seconds else 0.0,
            "note": "",
            "detail": {
                "days": synced.days,
                "rows_per_tier": dict(synced.rows),
                "bytes": synced.bytes,
                "files": synced.files,
                "total_rows_per_s": synced.rows_per_s,
            },
        }
    finally:
        drop_database(dataset.url, name)
        shutil.rmtree(lake_path, ignore_errors=True)
    return out


def storage(dataset: Dataset) -> dict[str, Any]:
    """Bytes and rows of each tier's warm table and lake table."""
    warm: dict[str, dict[str, int]] = {}
    with psycopg.connect(dataset.url) as conn:
        for tier in TIERS.values():
            table = tier.warm_table
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
            # data_1m is a view: its bytes are the stored buckets' and the per-minute records'.
            on_disk = [tier.write_table] + ([RAW_MINUTE_DAYS] if tier.stored_in else [])
            warm[table] = {
                "bytes": sum(timescale.table_bytes(conn, t) for t in on_disk),
                "rows": int(count[0]) if count else 0,
            }
    lake: dict[str, dict[str, int]] = {}
    if dataset.lake_synced:
        store = Lake(dataset.lake_path)
        first = dataset.lake_end - timedelta(days=dataset.preset.main.days + 1)
        for table in LAKE_TABLES:
            files = store.files(table, None, first, dataset.lake_end + timedelta(days=2))
            lake[table] = {
                "bytes": store.total_bytes(table),
                "rows": files.rows,
                "files": len(files.files),
            }
    return {"warm": warm, "lake": lake}


def _metric(server: ServerProcess, name: str) -> float | None:
    """A value of the server's /metrics, labels included in `name` (None if not there)."""
    response = httpx.get(
        server.base_url + "/metrics", headers={"Authorization": f"Bearer {server.key}"}
    )
    for line in response.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def _gauge(server: ServerProcess, name: str) -> int | None:
    value = _metric(server, name)
    return None if value is None else int(value)


def json_rendering(server: ServerProcess) -> dict[str, Any]:
    """Rows per second of the server's JSON page rendering so far (every JSON page the
    queries asked for): its rows over the time spent writing their text, query and sending
    left out."""
    rows = _metric(server, 'stratum_rows_served_total{format="json"}')
    seconds = _metric(server, 'stratum_render_seconds_total{format="json"}')
    if not rows or not seconds:
        return {"status": "not available", "note": "the server rendered no JSON page"}
    return {"status": "ok", "rows": int(rows), "seconds": seconds, "rows_per_s": rows / seconds}


JSON_PAGE_ROWS = 1_000_000  # rows a page asks for (the default STRATUM_MAX_PAGE_SIZE)


def budget_proof(
    serve_command: Sequence[str], dataset: Dataset, out_dir: Path, memory_budget: str | None = None
) -> dict[str, Any]:
    """A server with a small STRATUM_MEMORY_BUDGET: a full-lake scan, 8 concurrent multi-year
    queries, then the preset's `json_pages` (30) concurrent 1M-row JSON pages. Records peak
    RSS against the budget (reported, never asserted)."""
    preset = dataset.preset
    if not dataset.lake_synced:
        return {"status": "not available", "note": dataset.sync_note}
    from benchmarks.backends import HttpArrow, HttpJsonPage
    from engine.settings import parse_size

    memory_budget = memory_budget or preset.memory_budget
    budget = parse_size(memory_budget, "STRATUM_MEMORY_BUDGET")
    server = ServerProcess(
        serve_command,
        dataset,
        out_dir / "server-budget.log",
        STRATUM_MEMORY_BUDGET=memory_budget,
        # 30 clients at once from one address with one key: the budget is what is measured.
        STRATUM_MAX_REQUESTS_PER_KEY=str(max(preset.json_pages, 8)),
        STRATUM_MAX_REQUESTS_PER_CLIENT=str(max(preset.json_pages, 8)),
    )
    result: dict[str, Any] = {"budget": memory_budget, "budget_bytes": budget}
    try:
        sampler = server.sampler
        result["idle_rss_bytes"] = sampler.now()
        result["admission_bytes"] = _gauge(server, "stratum_memory_budget_bytes")
        start = dataset.lake_end - timedelta(days=preset.lake_days)
        everyone = dataset.main_users + dataset.high_rate_users
        scan = Case(
            "budget",
            f"{preset.lake_days} days",
            f"all ({len(everyone)})",
            everyone,
            tuple(sorted(METRICS)),
            start,
            dataset.lake_end,
            "raw",
            "raw",
        )
        client = HttpArrow(server.base_url, preset.page_size, server.key)
        try:
            run = client.prepare(scan)
            with sampler.window() as peak:
                started = time.perf_counter()
                try:
                    rows, status = run(), "ok"
                except Exception as exc:
                    rows, status = 0, _status_of(exc)
                seconds = time.perf_counter() - started
        finally:
            client.close()
        result["full_scan"] = {
            "rows": rows,
            "status": status,
            "seconds": seconds,
            "peak_rss_bytes": peak[0],
            "metrics": len(METRICS),
            "users": len(everyone),
            "days": preset.lake_days,
        }
        longest = Case(
            "budget",
            f"{preset.lake_days} days",
            f"all ({len(dataset.main_users)})",
            dataset.main_users,
            (METRIC,),
            start,
            dataset.lake_end,
            "raw",
            "raw",
        )
        concurrent = concurrent_load(
            lambda: HttpArrow(server.base_url, preset.page_size, server.key),
            [longest],
            8,
            8,
            sampler,
            retries=10,
        )
        result["concurrent"] = concurrent
        pages = replace(scan, page_size=JSON_PAGE_ROWS)  # the full scan, as JSON pages
        result["json_pages"] = concurrent_load(
            lambda: HttpJsonPage(server.base_url, JSON_PAGE_ROWS, server.key),
            [pages],
            preset.json_pages,
            preset.json_pages,
            sampler,
            retries=200,
        )
        result["server_alive"] = server.alive
        result["reserved_peak_bytes"] = _gauge(server, "stratum_memory_peak_bytes")
        result["peak_rss_bytes"] = sampler.high_water()
        result["lake_bytes"] = Lake(dataset.lake_path).total_bytes()
        # The bound proves nothing about work that was refused: every part must be answered.
        answered = all(
            result[part]["ok"] == result[part]["requests"] for part in ("concurrent", "json_pages")
        )
        result["passed"] = bool(server.alive and answered and result["peak_rss_bytes"] <= budget)
        result["status"] = "ok"
    except Exception as exc:
        result["status"] = "error"
        result["note"] = f"{type(exc).__name__}: {exc}"
        result["passed"] = False
    finally:
        server.stop()
    return result
