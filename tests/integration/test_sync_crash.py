"""A real `stratum sync` killed with SIGKILL at random instants never leaves the router a day
it would serve wrongly, and the next run converges: lake == warm store per (user, day, tier)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow.compute as pc

from lake import TIERS, Lake
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups
from tests.sync.lakesync import (
    assert_lake_equals_source,
    day_state,
    lake_days,
    run_sync,
    source_stats,
)

REPO = Path(__file__).resolve().parents[2]
USERS, DAYS, EVERY_S = 2, 6, 60
TRIALS = 5
DIRTY_PER_TRIAL = 6  # user-days re-delivered before each run, so each run has work


def _env(url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "STRATUM_DATABASE_URL": url,
        "STRATUM_HOME": str(tmp_path / "home"),
        "STRATUM_LAKE_PATH": str(tmp_path / "lake"),
        "STRATUM_SYNC_GRACE_DAYS": "1",
        "STRATUM_SYNC_BATCH_DAYS": "2",  # many small commits: more instants to die between
    }


def _redeliver(url: str, first: date, rng: random.Random, shift: float) -> None:
    """Re-deliver whole user-days with changed values (an upsert marking each day changed)."""
    pairs = rng.sample(
        [(u, d) for u in range(1, USERS + 1) for d in range(DAYS - 1)], DIRTY_PER_TRIAL
    )
    tables = []
    for user_id, offset in pairs:
        [day] = generate_cohort(
            1, 1, first + timedelta(days=offset), every_s=EVERY_S, first_user_id=user_id
        )
        tables.append(day.set_column(3, "value", pc.add(day.column("value"), shift)))
    ingest_tables(url, tables)


def _sync_process(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "api.cli", "sync"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill_while_running(env: dict[str, str], delay_s: float) -> None:
    """SIGKILL a sync `delay_s` after it starts. A run that finished first (a fast moment
    on a busy machine) is started again with half the delay, so that every trial kills a
    running sync whatever the machine's speed (a start-up takes longer than the last delay)."""
    for _ in range(8):
        with _sync_process(env) as process:
            time.sleep(delay_s)
            running = process.poll() is None
            process.send_signal(signal.SIGKILL)  # a no-op if it already finished
            process.wait(timeout=30)
        if running:
            return
        delay_s /= 2
    raise AssertionError("every sync finished before its kill, even 1/128 of the delay in")


def _assert_router_safe(url: str, lake: Lake) -> int:
    """Every (user, day, tier) the router would serve from the lake (lake_days change number
    equal to day_state's) reads back from the lake exactly as the warm store holds it."""
    states = day_state(url)
    served = 0
    for tier in TIERS:
        source = source_stats(url, tier)
        claims = {
            (u, d): (rows, checksum)
            for (u, t, d), (rows, checksum, seq) in lake_days(url).items()
            if t == tier and seq == states[(u, d)][0]
        }
        assert lake.day_stats(tier, claims) == claims, tier
        assert {p: source[p] for p in claims} == claims, tier
        served += len(claims)
    return served


def test_sigkill_at_random_instants_converges(warm_url: str, tmp_path: Path) -> None:
    rng = random.Random(20240601)
    today = datetime.now(UTC).date()
    first = today - timedelta(days=DAYS)  # the cohort ends yesterday; grace 1 day
    ingest_tables(warm_url, generate_cohort(USERS, DAYS, first, every_s=EVERY_S))
    refresh_rollups(warm_url)
    env = _env(warm_url, tmp_path)
    lake = Lake(tmp_path / "lake")
    run_sync(warm_url, lake, today=today, batch=2)

    # How long one run takes here, start-up included: the kills aim inside it.
    _redeliver(warm_url, first, rng, shift=0.5)
    started = time.monotonic()
    calibration = _sync_process(env)
    _, err = calibration.communicate(timeout=120)
    assert calibration.returncode == 0, err.decode()
    duration = time.monotonic() - started

    for trial in range(TRIALS):
        _redeliver(warm_url, first, rng, shift=float(trial + 1))
        _kill_while_running(env, rng.uniform(0.2, 0.9) * duration)
        _assert_router_safe(warm_url, lake)

    final = _sync_process(env)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()
    states = day_state(warm_url)
    assert all(s[2] == s[0] for p, s in states.items() if p[1] < today - timedelta(days=1))
    assert _assert_router_safe(warm_url, lake) == len(TIERS) * USERS * (DAYS - 1)
    assert_lake_equals_source(warm_url, lake, before=today - timedelta(days=1))
    with psycopg.connect(warm_url) as conn:  # the killed runs are on record as such
        statuses = [r[0] for r in conn.execute("SELECT status FROM sync_runs WHERE job = 'sync'")]
    assert set(statuses) <= {"ok", "interrupted"} and statuses.count("ok") >= 2
