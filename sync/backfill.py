"""Historic backfill (`stratum backfill`): archives older than the warm horizon, straight into
the lake, without passing their raw rows through the warm store.

Each file is read and validated whole by the ingest readers (or the Fitbit reader) before
anything is written; a bad row, or a day backfill may not load, refuses the file with nothing
written. Within a file the last copy of a (user, metric, ts) wins, as in `ingest`.

Which days: only days older than the warm horizon (today - STRATUM_TIER_OLDER_THAN_DAYS,
and never after the sync cutoff), and only days the warm store does not hold (no day_state
row, or one that is tiered). A day the warm store holds is refused: it is live data, and
`ingest` is the way to change it. A day already in the lake alone (tiered or backfilled
before) is replaced exactly for the metrics the file holds on that day; its other metrics stay.

Each loaded day ends exactly as a tiered day does after ingest + aggregate + sync + tier:
raw, 1m, 1h and 1d in the lake, verified and recorded in lake_days and lake_files; data_1h,
data_1d and day_counts in the warm store (tiering keeps those too: sync rebuilds the lake's
month and year partitions from them, and they answer when a lake 1h/1d file is damaged);
day_state marked refreshed, synced and tiered at one fresh change number.

Days go in batches of about `batch_rows` raw rows (many participant-days per Delta commit).
Per batch:
1. the rollups (1m from raw, 1h from 1m, 1d from 1h, UTC buckets) are computed with numpy
   over the rows in key order (`rollups`);
2. one warm-store transaction locks the days' day_state rows (a day an ingest wrote meanwhile
   stops the run), writes data_1h/data_1d/day_counts, marks the days tiered at a new change
   number and records them in lake_damage as "being loaded": from here until step 3 ends their
   raw/1m answer is 503 naming them, never an old or short answer;
3. the batch is exported as sync exports (export.export_batch): one commit per tier, files
   hashed, read back, compared per (user, day) with the source, then lake_days, lake_files
   and synced_seq are written and the "being loaded" marks cleared.
A run killed between 2 and 3 leaves its batch's days marked; running the backfill again
loads them. Days of earlier batches stay loaded.

An ingest into a participant of the batch never sees its days between 2 and 3: the batch holds
its participants' locks (sync/runs.py) from before step 2 until step 3 has recorded the days,
and ingest takes them before it looks at its days, so it waits and then rehydrates the days
from the lake that now holds them. A day an interrupted run left marked is refused by ingest
(sync/rehydrate.py), naming it, until the backfill is run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import IngestRejected, SyncFailed, first_few
from engine.tiers import RAW, TIERS
from lake import Lake
from lake.layout import data_schema
from sync import rehydrate
from sync.export import Snapshot, Tally, export_batch, read_tiers, sync_cutoff
from sync.fitbit import is_fitbit_response, read_fitbit
from sync.ingest import in_key_order, last_per_key, series_keys
from sync.lakefiles import require_current_log
from sync.prefetch import prefetched
from sync.readers import RAW_SCHEMA, read_validated
from sync.rehydrate import LOADING
from sync.runs import SYNC_LOCK, advisory_lock, participants_locked
from sync.tiering import record_location, tiering_cutoff

log = logging.getLogger(__name__)

Pair = tuple[int, date]
# (file, user-days done, user-days of the file, raw rows loaded so far in the run)
Progress = Callable[[Path, int, int, int], None]

BATCH_ROWS = 4_000_000  # raw rows per Delta commit: ~1 participant-year of 3 per-minute metrics
_COARSE = (TIERS["1h"].lake_table, TIERS["1d"].lake_table)
_MICROS_PER_DAY = 86_400_000_000
_KEY_SHIFT = 1 << 32
_DAY_OFFSET = 1 << 31  # keeps the packed (user, day) key monotone for days before 1970
_SHOWN = 5

_HELD = """
SELECT d.user_id, d.day, d.tiered_seq IS NULL AS warm
FROM day_state d JOIN unnest(%s::int[], %s::date[]) AS p(user_id, day)
  ON d.user_id = p.user_id AND d.day = p.day
ORDER BY d.user_id, d.day
"""
_LOCK = """
SELECT d.user_id, d.day, d.tiered_seq IS NULL AS warm FROM day_state d
JOIN stratum_backfill_days b ON d.user_id = b.user_id AND d.day = b.day
ORDER BY d.user_id, d.day
FOR UPDATE OF d
"""
_WINDOWS = """
CREATE TEMPORARY TABLE stratum_backfill_windows ON COMMIT DROP AS
SELECT b.user_id, b.day, m.name AS metric,
       (b.day::timestamp AT TIME ZONE 'UTC') AS lo,
       ((b.day + 1)::timestamp AT TIME ZONE 'UTC') AS hi
FROM stratum_backfill_days b CROSS JOIN metrics m
"""
_IN_WINDOW = "s.user_id = w.user_id AND s.metric = w.metric AND s.ts >= w.lo AND s.ts < w.hi"
_ROLLUP_COLUMNS = "ts, user_id, metric, count, sum, min, max"
_MARK = """
INSERT INTO day_state (user_id, day, change_seq, refreshed_seq, synced_seq, changed_at,
                       tiered_seq, tiered_at)
SELECT user_id, day, seq, seq, 0, now(), seq, now()
FROM (SELECT user_id, day, nextval('day_change_seq') AS seq FROM stratum_backfill_days) AS n
ON CONFLICT (user_id, day) DO UPDATE
SET change_seq = EXCLUDED.change_seq, refreshed_seq = EXCLUDED.change_seq,
    changed_at = EXCLUDED.changed_at, tiered_seq = EXCLUDED.change_seq,
    tiered_at = EXCLUDED.tiered_at
"""
_LOADING = """
INSERT INTO lake_damage (user_id, tier, day, reason)
SELECT b.user_id, t.tier, b.day, '{reason}'
FROM stratum_backfill_days b
CROSS JOIN unnest(ARRAY['raw', 'agg_1m', 'agg_1h', 'agg_1d']) AS t(tier)
ON CONFLICT (user_id, tier, day) DO UPDATE SET reason = EXCLUDED.reason, detected_at = now()
"""
_SEQS = """
SELECT d.user_id, d.day, d.change_seq FROM day_state d
JOIN stratum_backfill_days b ON d.user_id = b.user_id AND d.day = b.day
"""


@dataclass(frozen=True)
class BackfillResult:
    files: int
    rows: int  # raw rows loaded (after the last copy of each key won)
    days: int  # (user, day) pairs loaded and verified in every tier
    replaced: int  # of those, days the lake held before (replaced)
    batches: int  # Delta commits per tier
    lake_rows: dict[str, int]  # rows of the partitions written, per lake table
    bytes: int
    lake_files: int
    failed: list[tuple[int, date, str]]  # (user, day, tier) whose read-back did not match
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


class BackfillFailed(SyncFailed):
    """Some days did not read back equal to their source; they stay marked, not served."""

    def __init__(self, message: str, result: BackfillResult) -> None:
        super().__init__(message)
        self.result = result


def backfill_files(
    url: str,
    lake: Lake,
    paths: Iterable[Path],
    *,
    older_than_days: int,
    grace_days: int,
    today: date | None = None,
    batch_rows: int = BATCH_ROWS,
    user_id: int | None = None,
    zone: ZoneInfo | None = None,
    ts_unit: str | None = None,
    progress: Progress | None = None,
) -> BackfillResult:
    """Load each file into the lake (see the module docstring). IngestRejected: a file was
    refused whole (earlier files stay loaded); SyncFailed: another lake job runs, or the
    warm store started holding a day meanwhile; BackfillFailed: some days did not verify.

    ``user_id``/``zone``: the participant and IANA zone of Fitbit Web API responses."""
    started = time.perf_counter()
    today = today or datetime.now(UTC).date()
    # Older than the tiering horizon, and never a day sync could still export.
    horizon = min(
        tiering_cutoff(today, older_than_days), sync_cutoff(today, grace_days) - timedelta(days=1)
    )
    tally = Tally()
    files = rows = replaced = batches = 0
    with (
        advisory_lock(url, SYNC_LOCK, "sync, tiering or backfill run"),
        psycopg.connect(url, autocommit=True) as conn,
        adbc.connect(url) as writer,
    ):
        require_current_log(conn, lake)
        record_location(conn, lake.root)  # where rehydration finds these days later
        metrics = [r[0] for r in conn.execute("SELECT name FROM metrics ORDER BY name")]
        # The next file is read (and checked row by row) while this one is written; its
        # days are compared with the lake only once the files before it are loaded.
        reads = ((Path(p), read_archive(Path(p), user_id, zone, ts_unit)) for p in paths)
        with closing(prefetched(reads, name="backfill-reader")) as archives:
            for path, raw in archives:
                keys, counts = _day_keys(raw)
                # Rows the file delivered per day (a replaced day also carries the lake's
                # rows of the metrics the file lacks: those are not counted as loaded).
                delivered = np.concatenate([[0], np.cumsum(counts)])
                delivered_keys = keys
                pairs = [_unpack(int(k)) for k in keys]
                existing = _check_days(conn, path, pairs, horizon, older_than_days)
                if existing:
                    raw = _merged_with_lake(lake, raw, existing)
                    keys, counts = _day_keys(raw)
                done = 0
                if progress:
                    progress(path, 0, len(pairs), rows)
                # The next batch's rollups are computed while this one is written.
                with closing(prefetched(_rolled_up(raw, keys, counts, batch_rows))) as work:
                    for lo, hi, batch, tables in work:
                        _load_batch(
                            conn, writer, lake, tables, batch, metrics, today, grace_days, tally
                        )
                        batches += 1
                        first, last = np.searchsorted(delivered_keys, [lo, hi + 1])
                        rows += int(delivered[last] - delivered[first])
                        done += len(batch)
                        if progress:
                            progress(path, done, len(pairs), rows)
                files += 1
                replaced += len(existing)
    result = BackfillResult(
        files=files,
        rows=rows,
        days=tally.days,
        replaced=replaced,
        batches=batches,
        lake_rows=tally.rows,
        bytes=tally.bytes,
        lake_files=tally.files,
        failed=tally.failed,
        seconds=time.perf_counter() - started,
    )
    if tally.failed:
        shown = first_few(tally.failed, lambda f: f"user {f[0]} {f[1]} {f[2]}", _SHOWN)
        raise BackfillFailed(
            f"lake read-back differs from the backfilled rows for {shown}; those days stay marked "
            "and are not served from the lake: run the backfill again",
            result,
        )
    return result


# -- reading -----------------------------------------------------------------------------


def read_archive(
    path: Path, user_id: int | None, zone: ZoneInfo | None, ts_unit: str | None = None
) -> pa.Table:
    """The file's validated rows (RAW_SCHEMA), last copy of each key kept, sorted by key."""
    if is_fitbit_response(path):
        if user_id is None or zone is None:
            raise IngestRejected(
                str(path),
                None,
                "a Fitbit Web API response names neither participant nor time zone: give them "
                "with --user ID and --tz ZONE (IANA, e.g. Europe/Berlin)",
            )
        table = read_fitbit(path, user_id, zone)
    else:
        if user_id is not None or zone is not None:
            raise IngestRejected(
                str(path),
                None,
                "--user and --tz apply to Fitbit Web API responses only; this file carries "
                "its own user_id and ts columns",
            )
        table = pa.concat_tables([RAW_SCHEMA.empty_table(), *read_validated(path, ts_unit=ts_unit)])
    return last_per_key(table.combine_chunks())


def _packed(raw: pa.Table) -> np.ndarray:
    """One int64 per row ordered like (user_id, UTC day)."""
    micros = raw.column("ts").cast(pa.int64()).to_numpy()
    days = np.floor_divide(micros, _MICROS_PER_DAY)
    users = raw.column("user_id").to_numpy().astype(np.int64)
    return users * _KEY_SHIFT + days + _DAY_OFFSET


def _unpack(key: int) -> Pair:
    user_id, day = divmod(key, _KEY_SHIFT)
    return user_id, date(1970, 1, 1) + timedelta(days=day - _DAY_OFFSET)


def _day_keys(raw: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The packed (user, day) keys of the rows, sorted and distinct, with their row counts."""
    if raw.num_rows == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.unique(_packed(raw), return_counts=True)


def _month_numbers(keys: np.ndarray) -> np.ndarray:
    """One int64 per packed (user, day) key, equal for the days of one participant-month."""
    users, days = np.divmod(keys, _KEY_SHIFT)
    day_numbers = (days - _DAY_OFFSET).astype("datetime64[D]")
    return users * 100_000 + day_numbers.astype("datetime64[M]").astype(np.int64)


def _batches(
    keys: np.ndarray, counts: np.ndarray, batch_rows: int
) -> Iterator[tuple[int, int, list[Pair]]]:
    """Consecutive runs of (user, day) keys holding about `batch_rows` rows each: (first key,
    last key, the days). A batch ends only where a participant-month does, so the lake's fine
    tiers get one file per participant-month straight away (a month's consecutive days in one
    commit are one file), with nothing left for compaction."""
    months = _month_numbers(keys)
    start, rows = 0, 0
    for index, count in enumerate(counts.tolist()):
        rows += count
        last = index == len(counts) - 1
        if last or (rows >= batch_rows and months[index + 1] != months[index]):
            chosen = keys[start : index + 1]
            yield int(chosen[0]), int(chosen[-1]), [_unpack(int(k)) for k in chosen]
            start, rows = index + 1, 0


def _rolled_up(
    raw: pa.Table, keys: np.ndarray, counts: np.ndarray, batch_rows: int
) -> Iterator[tuple[int, int, list[Pair], dict[str, pa.Table]]]:
    """Per batch: its first and last key, its days, and every lake table's rows for them."""
    packed = _packed(raw)
    for lo, hi, batch in _batches(keys, counts, batch_rows):
        yield lo, hi, batch, rollups(raw.filter(pa.array((packed >= lo) & (packed <= hi))))


def _user_days(pairs: Sequence[Pair]) -> str:
    return first_few(pairs, lambda p: f"user {p[0]} {p[1]}", _SHOWN)


def _check_days(
    conn: psycopg.Connection, path: Path, pairs: list[Pair], horizon: date, older_than: int
) -> list[Pair]:
    """Refuse the file for a day inside the warm horizon or held by the warm store; return
    the days the lake alone holds (to be replaced)."""
    recent = [p for p in pairs if p[1] >= horizon]
    if recent:
        raise IngestRejected(
            str(path),
            None,
            f"{_user_days(recent)}: backfill loads days before {horizon} (older than "
            f"the warm horizon of {older_than} days, STRATUM_TIER_OLDER_THAN_DAYS); load recent "
            "days with `stratum ingest`",
        )
    if not pairs:
        return []
    rows = conn.execute(_HELD, ([u for u, _ in pairs], [d for _, d in pairs])).fetchall()
    warm = [(int(u), d) for u, d, held in rows if held]
    if warm:
        raise IngestRejected(
            str(path),
            None,
            f"the warm store holds {_user_days(warm)}: backfill only loads or replaces "
            "days that are in the lake alone; change those with `stratum ingest`, or let "
            "`stratum tier` move them to the lake first",
        )
    return [(int(u), d) for u, d, held in rows if not held]


def _merged_with_lake(lake: Lake, raw: pa.Table, existing: list[Pair]) -> pa.Table:
    """The file's rows plus the lake's rows of the replaced days for the metrics the file
    does not hold on that day (those stay as they were)."""
    old = rehydrate.read_days(lake, RAW, existing)
    if old.num_rows == 0:
        return raw
    old = old.select(list(RAW_SCHEMA.names)).cast(RAW_SCHEMA)
    day = pa.date32()
    present = (
        pa.table(
            {
                "user_id": raw.column("user_id"),
                "date": pc.cast(raw.column("ts"), day),
                "metric": raw.column("metric"),
            }
        )
        .group_by(["user_id", "date", "metric"])
        .aggregate([])
    )
    keyed = old.append_column("date", pc.cast(old.column("ts"), day))
    kept = keyed.join(present, keys=["user_id", "date", "metric"], join_type="left anti")
    if kept.num_rows == 0:
        return raw
    return last_per_key(pa.concat_tables([raw, kept.select(list(RAW_SCHEMA.names))]))


# -- one batch -------------------------------------------------------------------------------


def rollups(raw: pa.Table) -> dict[str, pa.Table]:
    """Each lake table's rows (data_schema) for the raw rows: raw itself, then 1m from raw,
    1h from 1m and 1d from 1h, each bucket keeping count, sum, min and max (UTC).

    Every table comes out in the lake's file order (user, metric, ts): a bucket's rows are
    then one run, so each tier is a few vectorised passes over runs instead of a hash
    aggregate, and the lake writer finds nothing to sort. Rows not in that order (only a
    caller other than read_archive hands those over) are sorted first."""
    raw = raw.combine_chunks()
    series, names = series_keys(raw)
    us = raw.column("ts").cast(pa.int64()).to_numpy()
    values = raw.column("value").to_numpy()
    if not in_key_order(series, us):
        order = np.lexsort((us, series))
        raw = raw.take(pa.array(order))
        series, us, values = series[order], us[order], values[order]
    out = {"raw": _with_date("raw", raw)}
    # Float sums of non-integral values depend on the order rows are added in; PostgreSQL's
    # (parallel) refresh fixes none, so they may differ in the last bits, as two refreshes
    # may. Integral values (steps, most heart rates) are exact.
    counts = np.ones(len(us), dtype=np.int64)
    sums, mins, maxes = values, values, values
    for resolution in ("1m", "1h", "1d"):
        tier = TIERS[resolution]
        width = tier.bucket_s * 1_000_000
        us = np.floor_divide(us, width) * width  # floors before 1970 too
        starts = _run_starts(series, us)
        if len(starts) < len(us):  # else every bucket holds one row (per-minute data at 1m)
            counts = np.add.reduceat(counts, starts)
            sums = np.add.reduceat(sums, starts)
            mins = np.minimum.reduceat(mins, starts)
            maxes = np.maximum.reduceat(maxes, starts)
            series, us = series[starts], us[starts]
        users, rank = np.divmod(series, len(names))
        table = pa.table(
            {
                "user_id": users,
                "metric": names.take(pa.array(rank)),
                "ts": pa.array(us, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                "count": counts,
                "sum": sums,
                "min": mins,
                "max": maxes,
            }
        )
        out[tier.lake_table] = _with_date(tier.lake_table, table)
    return out


def _run_starts(series: np.ndarray, us: np.ndarray) -> np.ndarray:
    """Where each run of equal (user, metric, bucket) starts, in rows sorted by that key."""
    changed = (np.diff(series) != 0) | (np.diff(us) != 0)
    return np.concatenate([[0], np.flatnonzero(changed) + 1]).astype(np.int64)


def _with_date(tier: str, table: pa.Table) -> pa.Table:
    schema = data_schema(tier)
    micros = table.column("ts").cast(pa.int64()).to_numpy()
    days = pa.array(np.floor_divide(micros, _MICROS_PER_DAY).astype(np.int32)).cast(pa.date32())
    columns = {
        "user_id": table.column("user_id").cast(pa.int32()),
        "date": days,
        "metric": table.column("metric").cast(pa.string()),
        "ts": table.column("ts").cast(schema.field("ts").type),
    }
    for name in schema.names[4:]:
        columns[name] = table.column(name).cast(schema.field(name).type)
    return pa.Table.from_arrays([columns[n] for n in schema.names], schema=schema)


def _warm_rollup(table: pa.Table) -> pa.Table:
    """A lake rollup table as the warm table's columns."""
    return table.select(["ts", "user_id", "metric", "count", "sum", "min", "max"])


def _day_counts(tables: dict[str, pa.Table]) -> pa.Table:
    """Rows per (user, metric, day) at raw, 1m and 1h, as the rollup refresh keeps them."""
    names = {"raw": "rows_raw", "agg_1m": "rows_1m", "agg_1h": "rows_1h"}
    counted = None
    for tier, column in names.items():
        grouped = (
            tables[tier]
            .select(["user_id", "metric", "date"])
            .group_by(["user_id", "metric", "date"])
            .aggregate([("date", "count")])
            .rename_columns(["user_id", "metric", "day", column])
        )
        counted = (
            grouped
            if counted is None
            else counted.join(grouped, keys=["user_id", "metric", "day"], join_type="left outer")
        )
    assert counted is not None
    return counted.select(["user_id", "metric", "day", *names.values()])


def _load_batch(
    conn: psycopg.Connection,
    writer: adbc.Connection,
    lake: Lake,
    tables: dict[str, pa.Table],
    pairs: Sequence[Pair],
    metrics: Sequence[str],
    today: date,
    grace_days: int,
    tally: Tally,
) -> None:
    # An ingest of these participants waits from before the marks until the records.
    with participants_locked(conn, sorted({u for u, _ in pairs})):
        change_seq = _stage(writer, pairs, tables)
        with writer.cursor() as cur:
            # The months and years holding these days, whole, as sync writes them: from the
            # warm store, which holds every day's 1h/1d rows (these days' were just written).
            coarse = read_tiers(
                cur, sorted(change_seq), metrics, sync_cutoff(today, grace_days), _COARSE
            )
        writer.commit()
        tiers = {"raw": tables["raw"], "agg_1m": tables["agg_1m"], **coarse}
        export_batch(conn, lake, Snapshot(change_seq, tiers), tally)


def _stage(
    writer: adbc.Connection, pairs: Sequence[Pair], tables: dict[str, pa.Table]
) -> dict[Pair, int]:
    """Step 2 of a batch (module docstring), in one transaction; the days' change numbers."""
    days = pa.table(
        {
            "user_id": pa.array([u for u, _ in pairs], pa.int32()),
            "day": pa.array([d for _, d in pairs], pa.date32()),
        }
    )
    with writer.cursor() as cur:
        try:
            cur.adbc_ingest("stratum_backfill_days", days, mode="replace", temporary=True)
            cur.execute(_LOCK)
            locked = cur.fetch_arrow_table()
            held = [
                (u, d)
                for u, d, warm in zip(
                    locked["user_id"].to_pylist(),
                    locked["day"].to_pylist(),
                    locked["warm"].to_pylist(),
                    strict=True,
                )
                if warm
            ]
            if held:
                raise SyncFailed(
                    f"an ingest wrote {_user_days(held)} while the backfill ran: the warm "
                    "store holds those days now, so backfill stopped (earlier batches are "
                    "loaded); change them with `stratum ingest`"
                )
            cur.execute(_WINDOWS)
            for tier in _COARSE:
                warm_table = f"stratum_backfill_{tier}"
                cur.adbc_ingest(
                    warm_table, _warm_rollup(tables[tier]), mode="replace", temporary=True
                )
                target = TIERS["1h" if tier == "agg_1h" else "1d"].write_table
                cur.execute(
                    f"DELETE FROM {target} s USING stratum_backfill_windows w "  # noqa: S608
                    f"WHERE {_IN_WINDOW}"
                )
                cur.execute(
                    f"INSERT INTO {target} ({_ROLLUP_COLUMNS}) "  # noqa: S608 (constants)
                    f"SELECT {_ROLLUP_COLUMNS} FROM {warm_table}"
                )
            cur.adbc_ingest(
                "stratum_backfill_counts", _day_counts(tables), mode="replace", temporary=True
            )
            cur.execute(
                "DELETE FROM day_counts c USING stratum_backfill_days b "
                "WHERE c.user_id = b.user_id AND c.day = b.day"
            )
            cur.execute(
                "INSERT INTO day_counts (user_id, metric, day, rows_raw, rows_1m, rows_1h) "
                "SELECT user_id, metric, day, rows_raw, rows_1m, rows_1h "
                "FROM stratum_backfill_counts"
            )
            cur.execute(_MARK)
            cur.execute(_LOADING.format(reason=LOADING))
            cur.execute(_SEQS)
            seqs = cur.fetch_arrow_table()
            cur.execute("SELECT nextval('catalog_seq')")
            cur.fetchall()
        except BaseException:
            writer.rollback()
            raise
    writer.commit()
    return {
        (int(u), d): int(s)
        for u, d, s in zip(
            seqs["user_id"].to_pylist(),
            seqs["day"].to_pylist(),
            seqs["change_seq"].to_pylist(),
            strict=True,
        )
    }
