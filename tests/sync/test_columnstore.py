"""Warm chunks past their grace period in TimescaleDB's columnstore: smaller, still exact.

Late rows, re-deliveries and rollup refreshes land in compressed chunks, decompressing only
the batches they touch, and the next run recompresses what they left partial. On plain
PostgreSQL the job compresses nothing and changes nothing.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from api.cli import main
from sync import jobs, timescale
from sync.columnstore import ColumnstoreResult, compress_warm_store
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups
from tests.sync.lakesync import FIRST_DAY, TODAY, ingest_rows, job_settings, load_cohort
from tests.sync.lakesync import source_stats as stats
from tests.sync.test_timescale import needs_timescaledb

TIERS = ("raw", "agg_1m", "agg_1h", "agg_1d")
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


def compressed_days(url: str, table: str) -> list[date]:
    """First days of the chunks of `table` wholly in the columnstore (chunks are a day long)."""
    with psycopg.connect(url) as conn:
        partial_or_row = set(timescale.uncompressed_chunks(conn, table, FAR_FUTURE))
        ranges = timescale.chunk_ranges(conn, table, FAR_FUTURE)
    return [start.astimezone(UTC).date() for name, start, _ in ranges if name not in partial_or_row]


def compress(url: str, tmp_path: Path, after_days: int = 2) -> ColumnstoreResult:
    result = jobs.columnstore_job(
        url, job_settings(tmp_path, 30).lake, after_days=after_days, today=TODAY
    )
    assert result.status == "ok" and isinstance(result.detail, ColumnstoreResult)
    return result.detail


@needs_timescaledb
@pytest.mark.parametrize("flavour", ["timescaledb"])
def test_chunks_past_the_grace_period_move_to_the_columnstore_whole(
    flavour: str, flavour_url: str, tmp_path: Path
) -> None:
    url = flavour_url
    # 2 users x 5 days from FIRST_DAY, TODAY the day after; every 30 s, so the 1m buckets
    # are stored rows (a per-minute series stores none)
    load_cohort(url, every=30)
    before = {tier: stats(url, tier) for tier in TIERS}

    done = compress(url, tmp_path)

    # Chunks ending at TODAY - 2 or earlier: the first three days, of both hypertables.
    old = [FIRST_DAY + timedelta(days=i) for i in range(3)]
    assert compressed_days(url, "raw_data") == compressed_days(url, "data_1m_stored") == old
    assert done.chunks == 2 * len(old)
    assert done.bytes_after < done.bytes_before * 0.7  # 3 of 5 days at a fraction of the size
    assert {tier: stats(url, tier) for tier in TIERS} == before  # every row, every value
    assert compress(url, tmp_path).chunks == 0  # idempotent


def heart_rate_count(url: str, day: date) -> int:
    """User 1's heart-rate samples on `day`, as data_1d counts them."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count FROM data_1d WHERE user_id = 1 AND metric = 'heart_rate' AND ts = %s",
            (datetime.combine(day, datetime.min.time(), UTC),),
        ).fetchone()
    assert row is not None
    return int(row[0])


@needs_timescaledb
@pytest.mark.parametrize("flavour", ["timescaledb"])
def test_late_rows_into_compressed_chunks_refresh_exactly_and_recompress(
    flavour: str, flavour_url: str, tmp_path: Path
) -> None:
    # Over 100,000 compressed 1m rows: more than TimescaleDB lets one write decompress by
    # default, so a refresh that decompressed every batch (its DELETE joined to the windows)
    # failed with "tuple decompression limit exceeded" on the first late row.
    url = flavour_url
    load_cohort(url, users=4, every=30)  # stored 1m rows (see above)
    compress(url, tmp_path)
    day = FIRST_DAY + timedelta(days=1)
    before = heart_rate_count(url, day)

    ingest_rows(url, [(f"{day}T12:00:00.5Z", 1, "heart_rate", 61.0)])
    refresh_rollups(url)

    assert heart_rate_count(url, day) == before + 1
    # Only the written day's chunks were touched; the next run recompresses just those.
    untouched = [FIRST_DAY, FIRST_DAY + timedelta(days=2)]
    assert compressed_days(url, "raw_data") == compressed_days(url, "data_1m_stored") == untouched
    assert compress(url, tmp_path).chunks == 2
    assert compressed_days(url, "raw_data") == [FIRST_DAY + timedelta(days=i) for i in range(3)]


@needs_timescaledb
@pytest.mark.parametrize("flavour", ["timescaledb"])
def test_a_redelivery_of_compressed_days_replaces_every_value(
    flavour: str, flavour_url: str, tmp_path: Path
) -> None:
    # Some 130,000 rows re-delivered into compressed chunks in one statement: each conflict
    # decompresses its batch, past the default cap of one write (100,000 rows); the ingest
    # lifts the cap for its own transaction.
    url = flavour_url
    load_cohort(url, users=6)
    compress(url, tmp_path)
    first = pa.concat_tables(generate_cohort(6, 3, FIRST_DAY, every_s=60))  # as loaded
    again = first.set_column(3, "value", pc.add(first.column("value"), 1.0))

    ingest_tables(url, [again])

    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT ts, user_id, metric, value FROM raw_data WHERE ts < %s "
            "ORDER BY user_id, metric, ts",
            (datetime.combine(FIRST_DAY + timedelta(days=3), datetime.min.time(), UTC),),
        ).fetchall()
    columns = (again.column(c).to_pylist() for c in ("ts", "user_id", "metric", "value"))
    delivered = sorted(zip(*columns, strict=True), key=lambda r: (r[1], r[2], r[0]))
    assert len(stored) == len(delivered) == again.num_rows > 100_000
    assert stored == delivered


def test_plain_postgresql_compresses_nothing(
    flavour: str, flavour_url: str, tmp_path: Path
) -> None:
    load_cohort(flavour_url, users=1, days=3)
    done = compress_warm_store(flavour_url, FAR_FUTURE)
    assert (done.chunks > 0) == (flavour == "timescaledb")
    off = jobs.columnstore_job(flavour_url, job_settings(tmp_path, 30).lake, after_days=0)
    assert off.status == "ok" and off.detail is None


def test_db_compress_reports_what_it_did(
    flavour: str,
    flavour_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    load_cohort(flavour_url, users=1, days=3, every=30)  # stored 1m rows: chunks of both
    monkeypatch.setenv("STRATUM_DATABASE_URL", flavour_url)
    monkeypatch.setenv("STRATUM_HOME", str(tmp_path / "home"))
    assert main(["db", "compress", "--older-than", "1"]) == 0
    out = capsys.readouterr().out
    if flavour == "timescaledb":
        assert "compressed 6 chunks" in out  # 3 days x raw_data, data_1m_stored
    else:
        assert "plain PostgreSQL" in out and "nothing to compress" in out
