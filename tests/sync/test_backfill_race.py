"""An ingest racing a backfill batch loses nothing.

A batch commits its days as tiered and "being loaded" (step 2) before the lake holds them
(step 3). An ingest into one of those days in between must not rehydrate it from a lake that
does not hold it yet: it waits until the batch is recorded, or, when the run died in between,
it is refused naming the day. The test stops a real backfill exactly there by holding the
lake's raw writer lock (the export's first commit needs it), with real PostgreSQL and Delta.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import pyarrow.compute as pc
import pytest

from engine.errors import SyncFailed
from lake import Lake
from lake.locking import writer_lock
from sync.backfill import LOADING
from sync.export import sync_to_lake
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups
from sync.runs import participants_locked
from tests.sync.lakesync import day_state, ingest_rows, ingest_table
from tests.sync.test_backfill import FIRST, TODAY, answer, backfill, cohort, query, write

WAIT_S = 120  # generous: only a broken run waits this long


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


@contextmanager
def in_thread(work: Callable[[], object]) -> Iterator[threading.Thread]:
    """Run `work` in a thread; re-raise its exception when the block ends."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 (handed to the test's thread)
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(WAIT_S)
    assert not thread.is_alive(), "the thread did not finish"
    if failure:
        raise failure[0]


def marked_loading(url: str, user_id: int, day: date) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM lake_damage WHERE user_id = %s AND day = %s AND reason = %s",
            (user_id, day, LOADING),
        ).fetchone()
    return bool(row and row[0])


def waiting_on_a_lock(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event = 'advisory'"
        ).fetchone()
    return bool(row and row[0])


def archived_heart_rates() -> int:
    metric = cohort(users=1, days=1).column("metric")
    return int(pc.sum(pc.equal(metric, "heart_rate")).as_py())


LATE = datetime(FIRST.year, FIRST.month, FIRST.day, 10, 0, 30, tzinfo=UTC)  # not in the archive
PARAMS = query(FIRST, FIRST, "raw") | {"user_id": "1", "metric": "heart_rate"}


def test_an_ingest_between_a_batchs_marks_and_its_export_waits_and_loses_nothing(
    flavour_url: str, tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    path = write(tmp_path / "c.parquet", cohort(users=1, days=1))
    with ExitStack() as lake_held:
        lake_held.enter_context(writer_lock(lake.storage, "raw"))  # the export cannot commit
        with in_thread(lambda: backfill(flavour_url, lake, path)) as backfilling:
            wait_until(lambda: marked_loading(flavour_url, 1, FIRST), "the batch's marks")
            assert backfilling.is_alive()  # stopped between step 2 and step 3
            late = [(LATE.isoformat(), 1, "heart_rate", 200.0)]
            with in_thread(lambda: ingest_rows(flavour_url, late)) as ingesting:
                try:
                    wait_until(
                        lambda: not ingesting.is_alive() or waiting_on_a_lock(flavour_url),
                        "the ingest to end or to wait",
                    )
                    assert ingesting.is_alive()  # it waits for the batch
                finally:
                    lake_held.close()  # the batch exports and records its days
    refresh_rollups(flavour_url)
    sync_to_lake(flavour_url, lake, grace_days=1, batch_days=3, today=TODAY)
    rows = answer(flavour_url, tmp_path / "home", lake.root, PARAMS)
    assert len(rows) == archived_heart_rates() + 1
    assert (1, "heart_rate", LATE, 200.0) in rows


# A backfill in its own process, so that it can be killed with SIGKILL.
BACKFILL = """
import sys
from datetime import date
from pathlib import Path
from lake import Lake
from sync.backfill import backfill_files
url, lake_root, path, today = sys.argv[1:]
backfill_files(url, Lake(lake_root), [Path(path)], older_than_days=30, grace_days=1,
               today=date.fromisoformat(today))
"""


def test_a_batch_killed_between_its_marks_and_its_export_refuses_ingests_until_rerun(
    flavour_url: str, tmp_path: Path
) -> None:
    lake = Lake(tmp_path / "lake")
    path = write(tmp_path / "c.parquet", cohort(users=1, days=1))
    with writer_lock(lake.storage, "raw"):  # the export cannot commit: the process dies before
        command = [sys.executable, "-c", BACKFILL, flavour_url, str(lake.root), str(path)]
        with subprocess.Popen([*command, TODAY.isoformat()]) as process:
            try:
                wait_until(lambda: marked_loading(flavour_url, 1, FIRST), "the batch's marks")
            finally:
                process.kill()
    before = day_state(flavour_url)
    late = [(LATE.isoformat(), 1, "heart_rate", 200.0)]
    with pytest.raises(SyncFailed, match=f"user 1 {FIRST} is being loaded by stratum backfill"):
        ingest_rows(flavour_url, late)  # not rehydrated from a lake that lacks the day
    assert day_state(flavour_url) == before  # nothing of the ingest was written

    backfill(flavour_url, lake, path)  # the rerun loads the marked day
    ingest_rows(flavour_url, late)
    refresh_rollups(flavour_url)
    sync_to_lake(flavour_url, lake, grace_days=1, batch_days=3, today=TODAY)
    rows = answer(flavour_url, tmp_path / "home", lake.root, PARAMS)
    assert len(rows) == archived_heart_rates() + 1
    assert (1, "heart_rate", LATE, 200.0) in rows


def test_an_ingest_waits_for_a_batch_only_so_long_then_is_refused_whole(
    flavour_url: str, tmp_path: Path
) -> None:
    """A batch that never finishes (a hung lake write) does not hold ingests forever."""
    rows = [(LATE.isoformat(), 1, "heart_rate", 200.0), (LATE.isoformat(), 2, "steps", 7.0)]
    table = ingest_table(rows)
    before = day_state(flavour_url)
    refused = pytest.raises(SyncFailed, match=r"participant 1 is .*backfill.*nothing was loaded")
    with (
        psycopg.connect(flavour_url, autocommit=True) as batch,
        participants_locked(batch, [1]),
        refused,
    ):
        ingest_tables(flavour_url, [table], lock_wait_s=0.5)
    assert day_state(flavour_url) == before  # user 2's row was not kept either
    with psycopg.connect(flavour_url) as conn:
        assert conn.execute("SELECT count(*) FROM raw_data").fetchone() == (0,)
    ingest_tables(flavour_url, [table], lock_wait_s=0.5)  # the batch has moved on
    with psycopg.connect(flavour_url) as conn:
        assert conn.execute("SELECT count(*) FROM raw_data").fetchone() == (2,)
