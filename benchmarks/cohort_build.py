"""Building the `cohort` bench dataset (issue 12, point 2) through backfill, resumably.

The cohort: `users` participants x `days` days, heart rate, steps and SpO2 once a minute
(500 x 730 x 3 x 1,440 = 1.58 billion minutes; 1.12 billion raw rows, as the wrist is off
for a few hours a day and SpO2 is sampled in bed only). Every day but the last WARM_DAYS is
loaded into the lake by `backfill` (archives of CHUNK_USERS participants, each generated
while the one before loads, then loaded and deleted); the last WARM_DAYS of every
participant are ingested into the warm store and rolled up, as the nightly ingest leaves
them. A participant whose history the lake already holds whole is not loaded again (a
cut-short archive is loaded again whole: backfill replaces its days exactly), so a build
can be spread over sessions.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from lake import Lake
from sync.backfill import backfill_files
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.localdb import ensure_local_postgres, stop_local_postgres
from sync.prefetch import prefetched
from sync.rollups import refresh_rollups
from sync.schema import init_schema

USERS, DAYS = 500, 730
END = date(2025, 12, 31)  # fixed: the same cohort on every machine and every day
WARM_DAYS = 2  # the last days stay in the warm store, as the nightly ingest leaves them
METRICS = ("heart_rate", "steps", "spo2")
EVERY_S = 60
CHUNK_USERS = 5  # participants per generated archive (~11M raw rows at full length)
SEED = 12
VERSION = 1  # bump when the way the cohort is built changes
META_FILE = "cohort.json"


@dataclass(frozen=True)
class Shape:
    users: int
    days: int
    end: date = END

    @property
    def first_day(self) -> date:
        return self.end - timedelta(days=self.days - 1)

    @property
    def history_days(self) -> int:
        return self.days - WARM_DAYS

    @property
    def raw_rows_per_user_day(self) -> int:
        return len(METRICS) * 86_400 // EVERY_S

    def fingerprint(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            **{k: str(v) for k, v in asdict(self).items()},
            "metrics": list(METRICS),
            "every_s": EVERY_S,
            "warm_days": WARM_DAYS,
            "seed": SEED,
        }


def bar() -> Progress:
    return Progress(
        TextColumn("{task.description:<26}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
        TextColumn("{task.fields[rows]:>15,} rows"),
        TimeElapsedColumn(),
    )


# -- building ------------------------------------------------------------------------------


def _loaded_users(url: str, shape: Shape) -> set[int]:
    """Participants whose whole history the lake holds (verified, in the raw tier)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT user_id FROM lake_days WHERE tier = 'raw' GROUP BY user_id "
            "HAVING count(*) = %s",
            (shape.history_days,),
        ).fetchall()
    return {int(r[0]) for r in rows}


def _warm_loaded(url: str, shape: Shape) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(DISTINCT user_id) FROM data_1d WHERE ts >= %s",
            (shape.end - timedelta(days=WARM_DAYS - 1),),
        ).fetchone()
    return bool(row and row[0] == shape.users)


def _archive(home: Path, shape: Shape, users: Sequence[int]) -> tuple[Path, int]:
    """The history of `users` as one Parquet archive (what a study exports): each
    participant's series one after another, each series in time order, so the backfill finds
    the rows in key order and sorts nothing."""
    path = home / f"archive-{users[0]}-{users[-1]}.parquet"
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for user in users:
            days = generate_cohort(
                1,
                shape.history_days,
                shape.first_day,
                seed=SEED,
                metrics=list(METRICS),
                every_s=EVERY_S,
                first_user_id=user,
            )
            table = _by_series(pa.concat_tables(days))
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return path, rows


def _by_series(days: pa.Table) -> pa.Table:
    """One participant's day tables (each by metric, then ts; days in order) by metric, then
    ts: a stable sort on the metric alone keeps each series' time order."""
    if days.num_rows == 0:
        return days
    metric = pc.dictionary_encode(days.column("metric").combine_chunks())
    codes = metric.indices.to_numpy(zero_copy_only=False)
    # A filter per metric keeps the rows' order and copies sequentially (a take gathers).
    return pa.concat_tables(
        [
            days.filter(pa.array(codes == code))
            for code in pc.sort_indices(metric.dictionary).to_numpy()
        ]
    )


def build(home: Path, shape: Shape, rebuild: bool = False) -> tuple[str, Path, dict[str, Any]]:
    """Build (or continue building) the cohort under `home`; return the database URL, the
    lake path and the build record."""
    meta_path = home / META_FILE
    if rebuild and home.exists():
        stop_local_postgres(home)
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta and meta.get("fingerprint") != shape.fingerprint():
        raise SystemExit(
            f"{home} holds another cohort ({meta.get('fingerprint')}); use --rebuild or "
            "another --home"
        )
    meta["fingerprint"] = shape.fingerprint()
    record = meta.setdefault("build", {"seconds": 0.0, "backfill_seconds": 0.0, "runs": 0})
    record["runs"] += 1
    server = ensure_local_postgres(home)
    init_schema(server.url)
    lake_path = home / "lake"
    lake = Lake(lake_path)
    today = shape.end + timedelta(days=1)
    began = time.perf_counter()
    done = _loaded_users(server.url, shape)
    pending = [u for u in range(1, shape.users + 1) if u not in done]
    chunks = [pending[i : i + CHUNK_USERS] for i in range(0, len(pending), CHUNK_USERS)]
    with bar() as progress:
        task = progress.add_task("backfill history", total=shape.users, rows=0)
        progress.update(task, completed=len(done))
        loaded = 0
        # The next archive is generated while this one loads (numpy, Parquet, PostgreSQL and
        # Delta release the GIL): on 2 cores that hides most of the generator's time.
        archives = prefetched(
            ((chunk, *_archive(home, shape, chunk)) for chunk in chunks), name="cohort-archives"
        )
        try:
            with closing(archives):
                for chunk, path, rows in archives:
                    started = time.perf_counter()
                    # Every history day lies before the horizon: today - WARM_DAYS (tiering) and
                    # today - 1 - 1 (sync's grace of one day).
                    backfill_files(
                        server.url,
                        lake,
                        [path],
                        older_than_days=WARM_DAYS,
                        grace_days=1,
                        today=today,
                    )
                    record["backfill_seconds"] += time.perf_counter() - started
                    path.unlink()
                    loaded += rows
                    progress.update(task, advance=len(chunk), rows=loaded)
                    meta_path.write_text(json.dumps(meta, indent=2, default=str))
        finally:
            for stray in home.glob("archive-*.parquet"):  # generated ahead, or cut short
                stray.unlink()
        warm = progress.add_task("ingest the warm days", total=1, rows=0)
        if not _warm_loaded(server.url, shape):
            tables = generate_cohort(
                shape.users,
                WARM_DAYS,
                shape.end - timedelta(days=WARM_DAYS - 1),
                seed=SEED,
                metrics=list(METRICS),
                every_s=EVERY_S,
            )
            result = ingest_tables(server.url, tables)
            refresh_rollups(server.url)
            progress.update(warm, rows=result.rows)
        progress.update(warm, completed=1)
    record["seconds"] += time.perf_counter() - began
    record["lake_bytes"] = _folder_bytes(lake_path)
    record["database_bytes"] = _database_bytes(server.url)
    meta_path.write_text(json.dumps(meta, indent=2, default=str))
    return server.url, lake_path, record


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _database_bytes(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0
