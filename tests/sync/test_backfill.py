"""Historic backfill: archives straight into the lake end as ingest + aggregate + sync + tier
would leave them; refused files write nothing; replaced days are replaced exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engine.access import LOCAL_ADMIN
from engine.errors import IngestRejected, LakeDamaged, SyncFailed
from engine.query import build_query
from engine.run import Engine
from engine.settings import load_settings
from lake import TIERS, Lake
from sync import backfill as backfill_module
from sync.backfill import LOADING, BackfillFailed, BackfillResult, backfill_files
from sync.export import sync_to_lake
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups
from sync.tiering import tier_warm_store
from tests.conftest import Servers
from tests.sync.lakesync import day_state, ingest_rows, lake_days, lake_stats, source_stats

FIRST = date(2024, 1, 29)  # four days across a month boundary
DAYS = 4
TODAY = date(2024, 4, 1)  # every day above is older than the 30-day horizon
WARM_TABLES = ("data_1h", "data_1d", "day_counts")


def cohort(users: int = 2, days: int = DAYS, first: date = FIRST) -> pa.Table:
    """Every metric once a minute, integral values: float sums are then exact in any order
    (PostgreSQL's parallel aggregates and DuckDB's add in different orders)."""
    table = pa.concat_tables(generate_cohort(users, days, first, every_s=60))
    return table.set_column(3, "value", pc.round(table.column("value")))


def write(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def backfill(url: str, lake: Lake, *paths: Path, **options: object) -> BackfillResult:
    return backfill_files(
        url,
        lake,
        list(paths),
        older_than_days=30,
        grace_days=1,
        today=TODAY,
        **options,  # type: ignore[arg-type]
    )


def warm_rows(url: str, table: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()  # noqa: S608


def answer(url: str, home: Path, lake_path: str | Path, params: dict[str, str]) -> list[tuple]:
    settings = load_settings({"STRATUM_HOME": str(home), "STRATUM_LAKE_PATH": str(lake_path)})
    engine = Engine(settings, url)
    try:
        query = build_query(
            {k: [v] for k, v in params.items()}, engine.settings.query, principal=LOCAL_ADMIN
        )
        result = engine.run(query)
        table = pa.Table.from_batches(list(result.batches), schema=result.schema)
        return [tuple(row.values()) for row in table.to_pylist()]
    finally:
        engine.close()


def query(first: date, last: date, resolution: str) -> dict[str, str]:
    return {
        "user_id": "1,2",
        "metric": "heart_rate,steps",
        "start": first.isoformat(),
        "end": (last + timedelta(days=1)).isoformat(),
        "resolution": resolution,
        "page_size": "0",
    }


@pytest.fixture
def second_url(flavour: str, pg_servers: Servers) -> Iterator[str]:
    """Another fresh database of the same flavour, for the ingest + sync side."""
    url = pg_servers.fresh_database(flavour)
    yield url
    pg_servers.drop_database(url)


def test_backfill_leaves_what_ingest_aggregate_sync_tier_leave(
    flavour_url: str, second_url: str, tmp_path: Path
) -> None:
    data = cohort()
    lake = Lake(tmp_path / "lake")
    result = backfill(flavour_url, lake, write(tmp_path / "cohort.parquet", data), batch_rows=7000)
    assert result.days == 2 * DAYS and result.batches > 1 and not result.failed
    assert result.rows == data.num_rows

    ingest_tables(second_url, [data])
    refresh_rollups(second_url)
    other = Lake(tmp_path / "other")
    sync_to_lake(second_url, other, grace_days=1, batch_days=3, today=TODAY)
    tier_warm_store(second_url, other, older_than_days=30, today=TODAY)

    pairs = [(u, FIRST + timedelta(days=i)) for u in (1, 2) for i in range(DAYS)]
    for tier in TIERS:
        assert lake_stats(lake, tier, pairs) == lake_stats(other, tier, pairs), tier
    stats = {k: v[:2] for k, v in lake_days(flavour_url).items()}
    assert stats == {k: v[:2] for k, v in lake_days(second_url).items()}
    for table in WARM_TABLES:
        assert warm_rows(flavour_url, table) == warm_rows(second_url, table), table
    assert warm_rows(flavour_url, "raw_data") == warm_rows(flavour_url, "data_1m") == []
    for seq, refreshed, synced, tiered in day_state(flavour_url).values():
        assert seq == refreshed == synced == tiered  # a tiered day, as tiering leaves it
    with psycopg.connect(flavour_url) as conn:
        assert conn.execute("SELECT count(*) FROM lake_damage").fetchone() == (0,)
        recorded = {
            (t, path): size
            for t, path, size in conn.execute("SELECT tier, path, size FROM lake_files")
        }
    current = {(t, path): f.size_bytes for t in TIERS for path, f in lake.entries(t)}
    assert len(current) == result.lake_files
    assert current.items() <= recorded.items()  # every file served has its size and hash
    for resolution in ("raw", "1m", "1h", "1d"):
        params = query(FIRST, FIRST + timedelta(days=DAYS - 1), resolution)
        mine = answer(flavour_url, tmp_path / "h1", tmp_path / "lake", params)
        assert mine and mine == answer(second_url, tmp_path / "h2", tmp_path / "other", params)


def test_a_day_inside_the_warm_horizon_refuses_the_file(flavour_url: str, tmp_path: Path) -> None:
    recent = cohort(users=1, days=1, first=TODAY - timedelta(days=3))
    path = write(tmp_path / "mixed.parquet", pa.concat_tables([cohort(users=1), recent]))
    with pytest.raises(IngestRejected, match=r"user 1 2024-03-29: backfill loads days before"):
        backfill(flavour_url, Lake(tmp_path / "lake"), path)
    assert day_state(flavour_url) == {} and not (tmp_path / "lake").exists()


def test_a_day_the_warm_store_holds_refuses_the_file(flavour_url: str, tmp_path: Path) -> None:
    ingest_rows(flavour_url, [(f"{FIRST}T10:00:00Z", 2, "steps", 5.0)])
    before = day_state(flavour_url)
    with pytest.raises(IngestRejected, match=r"the warm store holds user 2 2024-01-29"):
        backfill(flavour_url, Lake(tmp_path / "lake"), write(tmp_path / "c.parquet", cohort()))
    assert day_state(flavour_url) == before and not (tmp_path / "lake").exists()


def test_a_bad_row_refuses_the_file_naming_it(flavour_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "ts,user_id,metric,value\n2024-01-02T00:00:00Z,1,heart_rate,60\n"
        "2024-01-02T00:00:01Z,1,heart_rate,fast\n"
    )
    with pytest.raises(IngestRejected, match=r"bad.csv, row 2: value 'fast' is not a number"):
        backfill(flavour_url, Lake(tmp_path / "lake"), path)
    assert day_state(flavour_url) == {}


def test_a_replaced_day_keeps_only_the_new_rows_of_the_metrics_delivered(
    flavour_url: str, tmp_path: Path
) -> None:
    replace_a_day(flavour_url, tmp_path, tmp_path / "lake")


def test_backfill_into_a_lake_on_s3(warm_url: str, tmp_path: Path, s3_root: str) -> None:
    replace_a_day(warm_url, tmp_path, s3_root)


def replace_a_day(flavour_url: str, tmp_path: Path, lake_root: str | Path) -> None:
    lake = Lake(lake_root)
    backfill(flavour_url, lake, write(tmp_path / "first.parquet", cohort()))
    day = FIRST + timedelta(days=1)
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    again = pa.table(
        {
            "ts": pa.array([noon, noon + timedelta(minutes=1)], pa.timestamp("us", tz="UTC")),
            "user_id": pa.array([1, 1], pa.int32()),
            "metric": ["heart_rate", "heart_rate"],
            "value": [101.0, 102.0],
        }
    )
    params = query(day, day, "raw") | {"user_id": "1", "metric": "heart_rate"}
    steps_before = answer(flavour_url, tmp_path / "home", lake_root, params | {"metric": "steps"})
    result = backfill(flavour_url, lake, write(tmp_path / "again.parquet", again))
    assert (result.days, result.replaced) == (1, 1)

    rows = answer(flavour_url, tmp_path / "home", lake_root, params)
    assert [r[3] for r in rows] == [101.0, 102.0]  # the day's heart rate is exactly the file's
    steps = answer(flavour_url, tmp_path / "home", lake_root, params | {"metric": "steps"})
    assert steps and steps == steps_before  # the day's other metrics stayed
    daily = answer(flavour_url, tmp_path / "home", lake_root, params | {"resolution": "1d"})
    assert daily[0][3:7] == (2, 203.0, 101.0, 102.0)
    for tier in TIERS:  # every record is true of the lake
        recorded = {(u, d): v[:2] for (u, t, d), v in lake_days(flavour_url).items() if t == tier}
        assert lake_stats(lake, tier, recorded) == recorded, tier


def test_a_killed_run_leaves_its_days_unserved_then_converges(
    flavour_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lake(tmp_path / "lake")
    path = write(tmp_path / "c.parquet", cohort())
    backfill(flavour_url, lake, path)

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(backfill_module, "export_batch", killed)
    with pytest.raises(KeyboardInterrupt):
        backfill(flavour_url, lake, path)
    with psycopg.connect(flavour_url) as conn:
        reasons = {r for (r,) in conn.execute("SELECT DISTINCT reason FROM lake_damage")}
    assert reasons == {LOADING}
    params = query(FIRST, FIRST, "raw")
    with pytest.raises(LakeDamaged, match=r"\(raw\) of user 1 2024-01-29, user 2 2024-01-29"):
        answer(flavour_url, tmp_path / "home", tmp_path / "lake", params)

    monkeypatch.undo()
    result = backfill(flavour_url, lake, path)
    assert result.replaced == result.days == 2 * DAYS
    assert answer(flavour_url, tmp_path / "home", tmp_path / "lake", params)


def test_an_ingest_into_a_backfilled_day_rehydrates_it(flavour_url: str, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    backfill(flavour_url, lake, write(tmp_path / "c.parquet", cohort()))
    params = query(FIRST, FIRST, "raw") | {"user_id": "1", "metric": "heart_rate"}
    before = answer(flavour_url, tmp_path / "home", tmp_path / "lake", params)
    late = datetime(FIRST.year, FIRST.month, FIRST.day, 10, 0, 30, tzinfo=UTC)
    ingest_rows(flavour_url, [(late.isoformat(), 1, "heart_rate", 200.0)])
    refresh_rollups(flavour_url)
    sync_to_lake(flavour_url, lake, grace_days=1, batch_days=3, today=TODAY)
    rows = answer(flavour_url, tmp_path / "home", tmp_path / "lake", params)
    assert rows == sorted([*before, (1, "heart_rate", late, 200.0)], key=lambda r: r[2])


def test_a_later_sync_in_the_same_month_keeps_the_backfilled_hours(
    flavour_url: str, tmp_path: Path
) -> None:
    # agg_1h holds whole months: sync rebuilds February from the warm store's data_1h,
    # which backfill filled, so the backfilled days' hours survive and stay verified.
    lake = Lake(tmp_path / "lake")
    backfill(flavour_url, lake, write(tmp_path / "c.parquet", cohort()))
    late = FIRST + timedelta(days=10)
    ingest_tables(flavour_url, generate_cohort(2, 1, late, every_s=60))
    refresh_rollups(flavour_url)
    sync_to_lake(flavour_url, lake, grace_days=1, batch_days=3, today=TODAY)
    with psycopg.connect(flavour_url) as conn:
        served = conn.execute(
            "SELECT count(*) FROM current_lake_days WHERE tier = 'agg_1h' AND day < %s", (late,)
        ).fetchone()
    assert served == (2 * DAYS,)
    params = query(FIRST, late, "1h")
    rows = answer(flavour_url, tmp_path / "home", tmp_path / "lake", params)
    assert len({r[2].date() for r in rows}) == DAYS + 1
    assert source_stats(flavour_url, "agg_1h") == lake_stats(
        lake, "agg_1h", source_stats(flavour_url, "agg_1h")
    )


def test_sync_and_backfill_exclude_each_other(flavour_url: str, tmp_path: Path) -> None:
    from sync.runs import SYNC_LOCK

    with psycopg.connect(flavour_url) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SYNC_LOCK,))
        with pytest.raises(SyncFailed, match="sync, tiering or backfill run"):
            backfill(flavour_url, Lake(tmp_path / "lake"), write(tmp_path / "c.parquet", cohort()))


def test_backfill_writes_one_fine_file_per_participant_month(warm_url: str, tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    days = 33  # January 29 to March 1: three months per participant
    source = cohort(users=2, days=days)
    # Batches far smaller than a month: they still end only where a participant-month does.
    result = backfill(warm_url, lake, write(tmp_path / "a.parquet", source), batch_rows=1_000)

    assert result.days == 2 * days
    for tier in ("raw", "agg_1m"):
        listed = lake.files(
            tier, None, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC)
        )
        spans = sorted((f.user_id, f.first_day, f.last_day) for f in listed.files)
        assert spans == [
            (user, first, last)
            for user in (1, 2)
            for first, last in (
                (FIRST, date(2024, 1, 31)),
                (date(2024, 2, 1), date(2024, 2, 29)),
                (date(2024, 3, 1), FIRST + timedelta(days=days - 1)),
            )
        ]


class DamagingLake(Lake):
    """Fault injection: user 1's raw file holding FIRST is damaged right after its commit."""

    def __init__(self, root: Path, damage: Callable[[Path], None]) -> None:
        super().__init__(root)
        self.damage = damage

    def replace_days(self, tier: str, data: pa.Table, days: Iterable[tuple[int, date]]) -> int:
        version = super().replace_days(tier, data, days)
        for _, lake_file in self.added_files(tier, version):
            if tier == "raw" and lake_file.user_id == 1 and lake_file.first_day == FIRST:
                self.damage(Path(lake_file.path))
        return version


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_byte], ids=["truncated", "flipped byte"])
def test_a_file_damaged_after_its_write_fails_its_days_and_they_stay_unserved(
    warm_url: str, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    """The read-back verification catches a torn or altered file: its days are not recorded
    in lake_days, stay marked as being loaded, and the run fails naming them."""
    lake = DamagingLake(tmp_path / "lake", damage)
    january = [(1, FIRST + timedelta(days=i)) for i in range(3)]  # the file of user 1's January
    with pytest.raises(BackfillFailed, match=f"user 1 {FIRST} raw") as failed:
        backfill(warm_url, lake, write(tmp_path / "c.parquet", cohort()))
    assert failed.value.result.failed == [(u, d, "raw") for u, d in january]
    assert failed.value.result.days == 2 * DAYS - len(january)
    recorded = lake_days(warm_url)
    assert not any((u, "raw", d) in recorded for u, d in january)
    with psycopg.connect(warm_url) as conn:
        marked = conn.execute("SELECT user_id, tier, day, reason FROM lake_damage").fetchall()
    assert sorted(marked) == [(u, "raw", d, LOADING) for u, d in january]
