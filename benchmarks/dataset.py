"""Build, or reuse, a preset's dataset in its own private PostgreSQL and lake.

Layout under the bench home (``$STRATUM_HOME/bench-<scale>``): ``pg/`` the private server,
``lake/`` the Delta tables, ``dataset.json`` the fingerprint and build record. A home whose
fingerprint matches is reused as it is; anything else is rebuilt from scratch.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
from rich.progress import Progress, TaskID

from benchmarks.presets import Cohort, Preset
from engine.settings import Settings, load_settings
from engine.tiers import WARM_STORED_TABLES
from engine.timestamps import midnight
from lake import Lake
from sync.cohort_files import write_cohort
from sync.export import SyncResult, sync_to_lake
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.jobs import maintain_job
from sync.localdb import DB_NAME, ensure_local_postgres
from sync.prefetch import prefetched
from sync.rollups import refresh_rollups
from sync.schema import init_schema

META_FILE = "dataset.json"


@dataclass
class Dataset:
    preset: Preset
    home: Path
    url: str  # the bench database
    lake_path: Path
    lake_synced: bool  # the lake holds every day but the last `warm_days`
    sync_note: str  # why the lake is empty, when it is
    build: dict[str, Any] = field(default_factory=dict)  # what building it took
    reused: bool = False

    @property
    def main_users(self) -> tuple[int, ...]:
        return self.preset.main.user_ids

    @property
    def high_rate_users(self) -> tuple[int, ...]:
        return () if self.preset.high_rate is None else self.preset.high_rate.user_ids

    @property
    def lake_end(self) -> datetime:
        """Exclusive end of the days synced to the lake (the warm-only tail starts here)."""
        return midnight(self.preset.end) - timedelta(days=self.preset.warm_days - 1)

    def server_url(self, database: str) -> str:
        return self.url.rsplit("/", 1)[0] + f"/{database}"

    def settings(self, **env: str) -> Settings:
        base = {
            "STRATUM_HOME": str(self.home),
            "STRATUM_DATABASE_URL": self.url,
            "STRATUM_LAKE_PATH": str(self.lake_path),
        }
        return load_settings({**base, **env})


def bench_home(settings: Settings, scale: str) -> Path:
    return settings.database.home / f"bench-{scale}"


def open_dataset(preset: Preset, home: Path, progress: Progress, rebuild: bool = False) -> Dataset:
    home.mkdir(parents=True, exist_ok=True)
    server = ensure_local_postgres(home)
    lake_path = home / "lake"
    meta_path = home / META_FILE
    # "-lake": datasets built when the lake sync could be missing said whether it was there;
    # "-months": fine tiers in participant-month files, compacted (older lakes are rebuilt).
    fingerprint = f"{preset.dataset_fingerprint()}-lake-months"
    if not rebuild and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint and _has_rows(server.url):
            init_schema(server.url)  # a dataset built before a migration gets it, as servers do
            return Dataset(
                preset,
                home,
                server.url,
                lake_path,
                meta["lake_synced"],
                meta["sync_note"],
                meta["build"],
                reused=True,
            )
    meta_path.unlink(missing_ok=True)
    _recreate_database(server.url)
    shutil.rmtree(lake_path, ignore_errors=True)
    dataset = _build(preset, home, server.url, lake_path, progress)
    meta_path.write_text(
        json.dumps(
            {
                "fingerprint": fingerprint,
                "lake_synced": dataset.lake_synced,
                "sync_note": dataset.sync_note,
                "build": dataset.build,
            },
            indent=2,
        )
    )
    return dataset


def _has_rows(url: str) -> bool:
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT EXISTS (SELECT 1 FROM raw_data)").fetchone()
            return bool(row and row[0])
    except psycopg.Error:
        return False


def _recreate_database(url: str, name: str = DB_NAME) -> None:
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(url: str, name: str) -> None:
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cohort_tables(preset: Preset, cohort: Cohort) -> Iterator[pa.Table]:
    start = date.fromordinal(preset.end.toordinal() - cohort.days + 1)
    return generate_cohort(
        cohort.users,
        cohort.days,
        start,
        seed=preset.seed,
        every_s=cohort.every_s,
        first_user_id=cohort.first_user_id,
    )


def _counted(
    tables: Iterable[pa.Table], progress: Progress, task: TaskID, rows: list[int]
) -> Iterator[pa.Table]:
    for table in tables:
        rows[0] += table.num_rows
        progress.update(task, advance=1, rows=rows[0])
        yield table


class _Stage:
    """Re-runs `step` on a worker thread each time upstream signals, until upstream is done.

    The build is a pipeline over participants: while one participant is ingested, the
    previous ones are rolled up and synced, so the 2-core build takes the longest stage's
    time rather than the sum of all three.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], Any],
        upstream: threading.Event,
        upstream_done: threading.Event,
        poll_s: float | None = None,
    ) -> None:
        self.step = step
        self.poll_s = poll_s  # also step every poll_s seconds without a signal
        self.upstream, self.upstream_done = upstream, upstream_done
        self.signal, self.done = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.results: list[Any] = []
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                self.upstream.wait(self.poll_s)
                self.upstream.clear()
                finished = self.upstream_done.is_set()  # read before the step: see below
                started = time.perf_counter()
                self.results.append(self.step())
                self.seconds += time.perf_counter() - started
                self.signal.set()
                # Upstream sets done before its last signal, so a step begun after reading
                # done=True covers everything upstream ever committed.
                if finished:
                    return
        except BaseException as exc:  # raised by the builder once the pipeline stops
            self.error = exc
        finally:
            self.done.set()
            self.signal.set()

    def join(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise self.error


def _participants(preset: Preset) -> list[Cohort]:
    """One chunk per participant: each is ingested in its own transaction."""
    cohorts = [c for c in (preset.main, preset.high_rate) if c is not None]
    return [replace(c, users=1, first_user_id=u) for c in cohorts for u in c.user_ids]


def _build(preset: Preset, home: Path, url: str, lake_path: Path, progress: Progress) -> Dataset:
    build: dict[str, Any] = {"built_at": datetime.now(UTC).isoformat(timespec="seconds")}
    began = time.perf_counter()
    init_schema(url)
    settings = load_settings(
        {
            "STRATUM_HOME": str(home),
            "STRATUM_DATABASE_URL": url,
            "STRATUM_LAKE_PATH": str(lake_path),
        }
    )
    until = preset.end - timedelta(days=preset.warm_days)
    chunks = _participants(preset)
    ingest_task = progress.add_task("generate + ingest", total=sum(c.days for c in chunks), rows=0)
    rollup_task = progress.add_task("refresh rollups", total=None, rows=0)
    sync_task = progress.add_task("sync to lake", total=None, rows=0)
    ingested, ingest_done = threading.Event(), threading.Event()
    rollup_rows = [0]
    sync_rows = [0]

    def refresh() -> Any:
        result = refresh_rollups(url)
        rollup_rows[0] += sum(result.rows.values())
        progress.update(rollup_task, rows=rollup_rows[0])
        return result

    def sync() -> SyncResult:
        result = sync_until(settings, url, until)
        sync_rows[0] += result.rows["raw"]
        progress.update(sync_task, rows=sync_rows[0])
        return result

    rollups = _Stage("rollups", refresh, ingested, ingest_done)
    # One refresh call runs until nothing is pending, i.e. through most of the ingest: the
    # sync polls instead, exporting whichever days are rolled up so far.
    exporter = _Stage("sync", sync, rollups.signal, rollups.done, poll_s=5.0)
    rows = [0]
    ingest_s = 0.0
    try:
        for chunk in chunks:
            if rollups.error or exporter.error:
                break  # a stage failed: stop feeding it, report its error below
            started = time.perf_counter()
            # Generate on a worker thread while this one ingests.
            tables = prefetched(cohort_tables(preset, chunk), depth=8, name="generate-ahead")
            ingest_tables(url, _counted(tables, progress, ingest_task, rows))
            ingest_s += time.perf_counter() - started
            ingested.set()
    finally:
        ingest_done.set()
        ingested.set()
        rollups.join()
        exporter.join()
    build["ingest"] = {"rows": rows[0], "seconds": round(ingest_s, 2), "transactions": len(chunks)}
    progress.update(rollup_task, total=1, completed=1)
    rollup_tables: dict[str, int] = {}
    for result in rollups.results:
        for table, count in result.rows.items():
            rollup_tables[table] = rollup_tables.get(table, 0) + count
    build["rollups"] = {
        "rows": rollup_tables,
        "seconds": round(rollups.seconds, 2),
        "passes": len(rollups.results),
    }
    # A failed pass raised in join() above: here every pass exported and verified its days.
    build["sync"] = {
        "ok": True,
        "rows": sync_rows[0],
        "seconds": round(exporter.seconds, 2),
        "passes": len(exporter.results),
        "note": "",
    }
    progress.update(sync_task, total=1, completed=1)

    # The lake as the nightly job leaves it: each settled participant-month of the fine
    # tiers in one file (sync writes a file per run of days).
    task = progress.add_task("compact settled months", total=None, rows=0)
    compacted = maintain_job(url, settings.lake)
    if compacted.status != "ok":
        raise RuntimeError(f"compaction of the bench lake failed: {compacted.error}")
    build["compact"] = {"seconds": round(compacted.seconds, 2), "files": compacted.files}
    progress.update(task, total=1, completed=1)

    task = progress.add_task("vacuum analyze", total=None, rows=0)
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for table in WARM_STORED_TABLES:
            conn.execute(f"VACUUM (ANALYZE) {table}")
    build["vacuum_seconds"] = round(time.perf_counter() - started, 2)
    build["seconds"] = round(time.perf_counter() - began, 2)
    progress.update(task, total=1, completed=1)
    return Dataset(preset, home, url, lake_path, lake_synced=True, sync_note="", build=build)


def sync_until(settings: Settings, url: str, until: date) -> SyncResult:
    """Export every completed day up to and including `until` to the lake."""
    # Days before `today - grace_days` are exported: the day after `until`, no grace.
    return sync_to_lake(
        url,
        Lake(settings.lake.path),
        grace_days=0,
        batch_days=settings.lake.sync_batch_days,
        today=until + timedelta(days=1),
    )


def ingest_file(preset: Preset, home: Path) -> tuple[Path, int]:
    """A generated Parquet file of about `ingest_rows_target` rows (cached in the home)."""
    path = home / f"ingest-{preset.seed}-{preset.ingest_rows_target}.parquet"
    if path.exists():
        import pyarrow.parquet as pq

        return path, pq.ParquetFile(path).metadata.num_rows
    # Participants no preset uses, so the file never overlaps the dataset.
    tables = generate_cohort(
        1000, 400, preset.start, seed=preset.seed + 1, every_s=60, first_user_id=50_001
    )

    def until_target() -> Iterator[pa.Table]:
        rows = 0
        for table in tables:
            yield table
            rows += table.num_rows
            if rows >= preset.ingest_rows_target:
                return

    rows = write_cohort(path, until_target())
    return path, rows
