"""Issue 12: the catalog is loaded and cached per participant. A query loads only the
participants it asks for; a change to one participant's days (sync, tiering, backfill,
damage and repair) reloads that participant alone, at its next query, and is seen there;
the others' entries stay as they were; an answer for everyone equals a fresh engine's.
Real PostgreSQL (both flavours), real Delta."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.access import LOCAL_ADMIN
from engine.plan import Plan
from engine.query import build_query
from engine.run import Engine
from engine.settings import load_settings
from lake import Lake
from sync.backfill import backfill_files
from sync.catalog_changes import prune_catalog_changes
from sync.generate import generate_cohort
from sync.jobs import maintain_job
from sync.rollups import refresh_rollups
from sync.tiering import tier_warm_store
from sync.verify import repair_lake, verify_lake
from tests.sync.lakesync import FIRST_DAY, TODAY, ingest_rows, load_cohort, run_sync

USERS = (1, 2, 3)
DAY = FIRST_DAY + timedelta(days=1)  # in the lake for everyone


def params(users: tuple[int, ...], first: date = FIRST_DAY, resolution: str = "raw") -> dict:
    return {
        "user_id": [",".join(map(str, users))],
        "metric": ["heart_rate"],
        "start": [first.isoformat()],
        "end": [TODAY.isoformat()],
        "resolution": [resolution],
        "page_size": ["0"],
    }


def plan(engine: Engine, *users: int, first: date = FIRST_DAY) -> Plan:
    query = build_query(params(users, first), engine.settings.query, principal=LOCAL_ADMIN)
    return engine.plan(query)


def rows(engine: Engine, *users: int, first: date = FIRST_DAY) -> list[dict]:
    query = build_query(params(users, first), engine.settings.query, principal=LOCAL_ADMIN)
    answer = engine.run(query)
    return pa.Table.from_batches(list(answer.batches), schema=answer.schema).to_pylist()


def sources(plan: Plan, day: date) -> set[str]:
    """Where the plan reads `day` from."""
    moment = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    return {s.backend for s in plan.segments if s.start <= moment < s.end}


@pytest.fixture
def lake(flavour_url: str, tmp_path: Path) -> Lake:
    load_cohort(flavour_url, users=len(USERS))
    lake = Lake(tmp_path / "lake")
    run_sync(flavour_url, lake)
    return lake


@pytest.fixture
def engine(flavour_url: str, lake: Lake, tmp_path: Path) -> Iterator[Engine]:
    yield from engines(flavour_url, lake, tmp_path / "home")


def engines(url: str, lake: Lake, home: Path) -> Iterator[Engine]:
    settings = load_settings({"STRATUM_HOME": str(home), "STRATUM_LAKE_PATH": str(lake.root)})
    engine = Engine(settings, url)
    try:
        yield engine
    finally:
        engine.close()


def fresh_rows(url: str, lake: Lake, home: Path, *users: int, first: date = FIRST_DAY) -> list:
    """The answer of an engine that has cached nothing."""
    for engine in engines(url, lake, home):
        return rows(engine, *users, first=first)
    raise AssertionError("unreachable")


def test_a_query_loads_only_the_participants_it_asks_for(engine: Engine) -> None:
    assert sources(plan(engine, 1), DAY) == {"lake"}
    assert engine.catalogs.loads == 1
    assert engine.catalogs.cached(2) is None
    plan(engine, 2)
    plan(engine, 1)
    plan(engine, 1, 2)
    assert engine.catalogs.loads == 2  # each loaded once, kept while unchanged


def _sync_a_late_row(url: str, lake: Lake, tmp_path: Path) -> None:
    late = datetime(DAY.year, DAY.month, DAY.day, 10, 0, 30, tzinfo=UTC)
    ingest_rows(url, [(late.isoformat(), 1, "heart_rate", 200.0)])
    refresh_rollups(url)
    run_sync(url, lake)


def _tier(url: str, lake: Lake, tmp_path: Path) -> None:
    # Participants 2 and 3 get late rows first: their days are not verified and unchanged,
    # so only participant 1's days are tiered.
    days = [FIRST_DAY + timedelta(days=i) for i in range((TODAY - FIRST_DAY).days)]
    late = [datetime(d.year, d.month, d.day, 10, 0, 30, tzinfo=UTC) for d in days]
    ingest_rows(url, [(t.isoformat(), u, "heart_rate", 200.0) for t in late for u in (2, 3)])
    tier_warm_store(url, lake, older_than_days=1, today=TODAY)


def _backfill(url: str, lake: Lake, tmp_path: Path) -> None:
    old = FIRST_DAY - timedelta(days=60)
    path = tmp_path / "archive.parquet"
    pq.write_table(pa.concat_tables(generate_cohort(1, 2, old, every_s=60)), path)
    backfill_files(url, lake, [path], older_than_days=30, grace_days=1, today=TODAY)


def _damage_then_repair(url: str, lake: Lake, tmp_path: Path) -> None:
    listed = lake.files("raw", [1], *_span(DAY)).files
    target = Path(lake.storage.fs_path(listed[0].path))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    verify_lake(url, lake)


def _span(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


CHANGES: dict[str, Callable[[str, Lake, Path], None]] = {
    "sync": _sync_a_late_row,
    "tier": _tier,
    "backfill": _backfill,
    "damage": _damage_then_repair,
}


def _seen(change: str, engine: Engine, url: str, lake: Lake, tmp_path: Path) -> None:
    """Participant 1's next query sees its change."""
    entry = engine.catalogs.cached(1)
    assert entry is not None
    if change == "sync":
        late = datetime(DAY.year, DAY.month, DAY.day, 10, 0, 30, tzinfo=UTC)
        assert sources(plan(engine, 1), DAY) == {"lake"}  # synced again: served from the lake
        assert any(r["ts"] == late and r["value"] == 200.0 for r in rows(engine, 1))
    elif change == "tier":
        assert entry.tiered and sources(plan(engine, 1), DAY) == {"lake"}
    elif change == "backfill":
        old = FIRST_DAY - timedelta(days=60)
        assert sources(plan(engine, 1, first=old), old) == {"lake"}
    else:
        # A damaged file damages every day it holds (a sync batch's run of days).
        (damaged,) = lake.files("raw", [1], *_span(DAY)).files
        assert damaged.first_day <= DAY <= damaged.last_day
        assert entry.damaged.get("raw") == ((damaged.first_day, damaged.last_day),)
        assert sources(plan(engine, 1), DAY) == {"warm"}  # not served from the damaged file
        repair_lake(url, lake, grace_days=1, batch_days=3, today=TODAY)
        assert sources(plan(engine, 1), DAY) == {"lake"}
        assert engine.catalogs.cached(1).damaged == {}  # type: ignore[union-attr]


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_a_change_to_one_participant_reloads_it_alone_and_is_seen(
    change: str, engine: Engine, flavour_url: str, lake: Lake, tmp_path: Path
) -> None:
    first = FIRST_DAY - timedelta(days=60)
    for user_id in USERS:
        plan(engine, user_id, first=first)
    others = {u: engine.catalogs.cached(u) for u in (2, 3)}
    loads = engine.catalogs.loads

    CHANGES[change](flavour_url, lake, tmp_path)

    plan(engine, 2, first=first)
    plan(engine, 3, first=first)
    assert engine.catalogs.loads == loads  # nothing of theirs changed: nothing loaded
    assert {u: engine.catalogs.cached(u) for u in (2, 3)} == others
    plan(engine, 1, first=first)
    assert engine.catalogs.loads == loads + 1  # participant 1 alone
    _seen(change, engine, flavour_url, lake, tmp_path)
    everyone = rows(engine, *USERS, first=first)
    assert everyone and everyone == fresh_rows(
        flavour_url, lake, tmp_path / "fresh", *USERS, first=first
    )


def test_a_change_committed_after_a_load_it_began_before_is_seen(
    engine: Engine, flavour_url: str
) -> None:
    # A writer takes its catalog number (and its transaction id) before the engine loads the
    # participant, and commits after: out of commit order. The next query must see it.
    plan(engine, 1)
    with psycopg.connect(flavour_url) as writer:
        writer.execute(
            "INSERT INTO lake_damage (user_id, tier, day, reason) VALUES (1, 'raw', %s, 'test')",
            (DAY,),
        )
        writer.execute("SELECT nextval('catalog_seq')")
        before_commit = plan(engine, 1)
        assert sources(before_commit, DAY) == {"lake"}  # not committed: not seen yet
    # committed when the block ended
    assert sources(plan(engine, 1), DAY) == {"warm"}
    assert engine.catalogs.cached(1).damaged == {"raw": ((DAY, DAY),)}  # type: ignore[union-attr]


def _record_damage(url: str, user_id: int) -> None:
    with psycopg.connect(url) as writer:
        writer.execute(
            "INSERT INTO lake_damage (user_id, tier, day, reason) VALUES (%s, 'raw', %s, 'test')",
            (user_id, DAY),
        )


def _changes(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM catalog_changes").fetchone()
        return int(row[0]) if row else 0


def test_pruning_catalog_changes_never_leaves_a_cached_participant_stale(
    engine: Engine, flavour_url: str
) -> None:
    plan(engine, 1)
    plan(engine, 2)
    _record_damage(flavour_url, 1)  # a change participant 1's cached entry has not seen
    assert _changes(flavour_url) > 0
    with psycopg.connect(flavour_url, autocommit=True) as conn:
        assert prune_catalog_changes(conn, older_than=timedelta(0)) > 0
    assert _changes(flavour_url) == 0  # the log no longer grows with every sync
    # The deleted row was the only trace of the change: the floor makes the entries that
    # could have needed it reload.
    assert sources(plan(engine, 1), DAY) == {"warm"}
    assert engine.catalogs.cached(1).damaged == {"raw": ((DAY, DAY),)}  # type: ignore[union-attr]
    loads = engine.catalogs.loads
    with psycopg.connect(flavour_url, autocommit=True) as conn:
        assert prune_catalog_changes(conn, older_than=timedelta(0)) == 0
    plan(engine, 1)
    assert engine.catalogs.loads == loads  # loaded above the floor: not reloaded again


def test_maintenance_prunes_the_catalog_changes_older_than_a_day(
    engine: Engine, flavour_url: str, lake: Lake, tmp_path: Path
) -> None:
    _record_damage(flavour_url, 1)
    _record_damage(flavour_url, 2)
    with psycopg.connect(flavour_url) as conn:
        conn.execute(
            "UPDATE catalog_changes SET changed_at = now() - interval '25 hours' WHERE user_id <> 2"
        )
    settings = load_settings(
        {"STRATUM_HOME": str(tmp_path / "home"), "STRATUM_LAKE_PATH": str(lake.root)}
    )
    maintain_job(flavour_url, settings.lake)
    with psycopg.connect(flavour_url) as conn:
        left = conn.execute("SELECT DISTINCT user_id FROM catalog_changes").fetchall()
    assert left == [(2,)]
