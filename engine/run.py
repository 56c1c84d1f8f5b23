"""The pipeline in one place: engine.run(query) = plan(query, catalog) → execute(plan) → Arrow.

catalog = catalogs.load(conn)           # the only I/O of planning (cached per participant)
plan    = planner.plan(query, catalog)  # pure
after, skip = paging.locate(...)        # deep pages skip whole days by their counts
streams = [warm | lake executor per segment]
answer  = take(merge_sorted(streams), skip, limit)
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

import duckdb
import psycopg
import psycopg_pool
import pyarrow as pa

from engine import calendarcache, direct, paging, planner
from engine.access import Principal, authenticate, cursor_secret, hash_key, live_principals
from engine.allocator import limit_arenas, reuse_freed_chunks
from engine.audit import AuditEntry, write_entry
from engine.budget import (
    KEEP_RESIDENT_SHARE,
    QUERY_OVERHEAD_BYTES,
    RENDER_BYTES,
    RENDERED_ROW_BYTES,
    MemoryBudget,
    resident_bytes,
    split_budget,
)
from engine.calendarcache import CacheRead
from engine.catalog import Catalog, CatalogSource
from engine.errors import InvalidParameter, LakeDamaged, Unauthenticated, WarmStoreUnavailable
from engine.integrity import FileChecker
from engine.lakeexec import (
    BATCH_ROWS,
    DEFAULT_TUNING,
    ScanTuning,
    connect_duckdb,
    set_memory_limit,
    stream_lake,
)
from engine.localquery import CalendarWork, page, prepare
from engine.m4 import M4
from engine.merge import merge_sorted, take
from engine.overview import Health, Overview, coverage, damaged_days, last_runs, ping
from engine.paging import cut_page
from engine.plan import Plan, Segment
from engine.query import LOCAL, DataQuery, Key
from engine.rebucket import combine, partials
from engine.settings import Settings
from engine.shapes import CALENDAR, row_bytes, schema_for
from engine.tiers import LAKE_TABLES, Resolution
from engine.timings import StageTimes
from engine.warm import CHUNK_ROWS, WarmPool, stream_warm
from engine.zones import History, read_histories
from lake import Lake

log = logging.getLogger(__name__)

WARM_RETRY_S = 5.0
T = TypeVar("T")


@dataclass
class Answer:
    plan: Plan
    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]  # a page (already read) or, for page_size=0, a stream
    has_more: bool
    next_cursor: str | None
    rows: int | None  # known for pages; None while a whole-answer stream is unread
    times: StageTimes = field(default_factory=StageTimes)  # complete once batches are read

    def hold_reservation(self) -> Callable[[], None]:
        """Take over the release of the answer's memory reservation: it is no longer released
        when the batches end, but by the function returned (a server sends the last bytes
        after its batches have ended; they count until then). A no-op for answers that
        hold none."""
        if isinstance(self.batches, ReservedBatches):
            return self.batches.hold()
        return _nothing


def _nothing() -> None:
    return None


class ReservedBatches:
    """An answer's batches and the memory reservation they hold, released once they end (read
    to the end, failed, closed or dropped), or by whoever took it over (`hold`). The bytes
    answered (the give-back cadence, engine/budget.py) are counted at the budget's bytes per
    row: a batch's `nbytes` walks its buffers, 14 us a call for a 168-row answer."""

    def __init__(
        self,
        stream: Iterator[pa.RecordBatch],
        budget: MemoryBudget,
        nbytes: int,
        bytes_per_row: int,
    ) -> None:
        self._stream = stream
        self._budget = budget
        self._nbytes = nbytes
        self._row_bytes = bytes_per_row
        self._rows = 0
        self._held = False
        self._released = False

    def __iter__(self) -> ReservedBatches:
        return self

    def __next__(self) -> pa.RecordBatch:
        try:
            batch = next(self._stream)
        except BaseException:  # StopIteration, or the stream failed: it is over
            self._over()
            raise
        self._rows += batch.num_rows
        return batch

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()  # ends a DuckDB query or warm cursor early
        self._over()

    def hold(self) -> Callable[[], None]:
        self._held = True
        return self.release

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._budget.release(self._nbytes, self._rows * self._row_bytes)

    def __del__(self) -> None:  # dropped unread (a consumer that stopped early, unclosed)
        self._over()

    def _over(self) -> None:
        """The batches are over: the reservation goes back, unless someone took it over."""
        if not self._held:
            self.release()


@dataclass
class _Guess:
    """A plan from the cached catalog, and the rows read from it while the warm store was
    asked whether it holds."""

    plan: Plan
    first: list[pa.RecordBatch]
    rest: Iterator[pa.RecordBatch]
    reservation: int
    failed: Exception | None = None  # reading the first rows failed so (a damaged file)

    def drop(self, budget: MemoryBudget) -> None:
        close = getattr(self.rest, "close", None)
        if close is not None:
            close()  # ends the DuckDB query
        budget.release(self.reservation)


def _limit(query: DataQuery) -> int | None:
    """Rows the stream reads at most: a page and one more (has_more), or all."""
    return None if query.page_size == 0 else query.page_size + 1


class Engine:
    """Owns the long-lived parts: DuckDB, warm-store pools, catalog cache, memory budget."""

    def __init__(
        self,
        settings: Settings,
        database_url: str | None,
        scan_tuning: ScanTuning = DEFAULT_TUNING,
    ) -> None:
        self.settings = settings
        self.scan_tuning = scan_tuning
        self.lake = Lake(settings.lake.path)
        # Before DuckDB starts its threads: each thread's own arena would keep its own freed
        # memory outside the budget's sight.
        limit_arenas(os.cpu_count() or 1)
        reuse_freed_chunks()
        duckdb_bytes, admission_bytes = split_budget(settings.memory.budget_bytes, resident_bytes())
        self.duck = connect_duckdb(settings.memory, duckdb_bytes)
        self.budget = MemoryBudget(
            admission_bytes,
            keep_resident_bytes=int(settings.memory.budget_bytes * KEEP_RESIDENT_SHARE),
        )
        self.catalogs = CatalogSource(self.lake)
        self.files = FileChecker(self.lake)
        self.database_url = database_url
        self._warm: WarmPool | None = None
        self._warm_down_until = 0.0
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._lock = threading.Lock()
        self._principals: dict[bytes, Principal] = {}  # last known scope per key hash
        self._cursor_secret: bytes | None = None
        self._too_long = direct.TooLong()  # shapes the one-statement path refused for length
        # Catalog statements sent while a guessed lake plan is read (_run_guessed).
        self._confirming = ThreadPoolExecutor(
            max_workers=settings.database.pool_size, thread_name_prefix="catalog"
        )

    # -- warm-store connections ------------------------------------------------------------

    def _small_queries(self) -> psycopg_pool.ConnectionPool:
        with self._lock:
            if self._pool is None:
                if self.database_url is None:
                    raise WarmStoreUnavailable("no warm store configured")
                self._pool = psycopg_pool.ConnectionPool(
                    self.database_url,
                    min_size=0,
                    max_size=self.settings.database.pool_size,
                    open=True,
                    kwargs={
                        "autocommit": True,
                        "connect_timeout": 3,
                        # Small reads only: parallel workers cost more to start than such a
                        # read takes. A fresh `small` bench planned one participant-day of
                        # 1m (1,311 rows) in parallel: 16.9 ms, against 1.5 ms of work.
                        "options": "-c max_parallel_workers_per_gather=0",
                    },
                )
            return self._pool

    def _warm_pool(self) -> WarmPool:
        with self._lock:
            if self._warm is None:
                if self.database_url is None:
                    raise WarmStoreUnavailable("no warm store configured")
                self._warm = WarmPool(self.database_url, self.settings.database.pool_size)
            return self._warm

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection | None]:
        """A pooled connection, or None while the warm store is known to be down.

        After a failure the store counts as down for WARM_RETRY_S: requests during an outage
        answer at once (lake-only spans) instead of each waiting for a connect timeout.
        """
        if time.monotonic() < self._warm_down_until:
            yield None
            return
        try:
            pool = self._small_queries()
        except WarmStoreUnavailable:  # none configured
            yield None
            return
        try:
            conn = _checked_out(pool)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout):
            self._warm_down_until = time.monotonic() + WARM_RETRY_S
            raise
        try:
            yield conn
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout):
            self._warm_down_until = time.monotonic() + WARM_RETRY_S
            raise
        finally:
            pool.putconn(conn)  # a broken one is discarded by the pool

    def _read(self, action: Callable[[psycopg.Connection], T], down: Callable[[], T]) -> T:
        """`action` on a pooled connection, or `down()` while the warm store is known down.

        Unlike `_connection` it sends no check first (a round trip per request): a
        connection that died idle (the server restarted) fails `action` itself, which then
        runs once more on a fresh connection. Only for reads: running one twice is harmless.
        """
        if time.monotonic() < self._warm_down_until:
            return down()
        try:
            pool = self._small_queries()
        except WarmStoreUnavailable:  # none configured
            return down()
        for attempt in range(2):
            try:
                conn = pool.getconn(timeout=3)
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout):
                self._warm_down_until = time.monotonic() + WARM_RETRY_S
                raise
            try:
                return action(conn)
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout):
                if attempt or not conn.broken:
                    self._warm_down_until = time.monotonic() + WARM_RETRY_S
                    raise
            finally:
                pool.putconn(conn)  # a broken one is discarded by the pool
            pool.check()  # it died idle, and so did the other idle ones: drop them all
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._confirming.shutdown(wait=True)
        if self._pool is not None:
            self._pool.close()
        if self._warm is not None:
            self._warm.close()
        self.duck.close()

    # -- the pipeline ------------------------------------------------------------------------

    def preload(self) -> bool:
        """Load the lake coverage and the live keys now (at start-up), so lake-only spans are
        still planned and keys still checked if the warm store goes down later. False when
        the warm store is unreachable."""
        with self._connection() as conn:
            if conn is None:
                return False
            self.catalogs.preload(conn)
            self._principals = live_principals(conn)
            self._cursor_secret = cursor_secret(conn)
            return True

    def settle_budget(self) -> tuple[int, int]:
        """Split the memory budget again with what the process holds once it has started
        (DuckDB, the catalog, pools, threads): the budget bounds the whole process, its idle
        part included, so queries share only what is left. Returns (DuckDB, admission)."""
        duckdb_bytes, admission_bytes = split_budget(
            self.settings.memory.budget_bytes, resident_bytes()
        )
        set_memory_limit(self.duck, duckdb_bytes)
        self.budget.resize(admission_bytes)
        log.info(
            "memory budget %d bytes: DuckDB %d, queries %d, the process itself the rest",
            self.settings.memory.budget_bytes,
            duckdb_bytes,
            admission_bytes,
        )
        return duckdb_bytes, admission_bytes

    def catalog(self, query: DataQuery, times: StageTimes | None = None) -> Catalog:
        query.principal.require(query.users, query.metrics)  # before any I/O for it
        first, last = query.days
        times = times or StageTimes()
        with times.stage("catalog"):
            try:
                return self._read(
                    lambda conn: self.catalogs.load(conn, query.users, first, last, times),
                    lambda: self.catalogs.load(None, query.users, first, last),
                )
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                log.warning("warm store unreachable, planning from the cached catalog: %s", exc)
                return self.catalogs.load(None, query.users, first, last)

    def plan(
        self, query: DataQuery, catalog: Catalog | None = None, times: StageTimes | None = None
    ) -> Plan:
        """The plan; its `timings` say what loading the catalog (unless given) and planning
        took."""
        if query.calendar is not None:
            _, _, inner, described = self._calendar_lookup(query)
            if inner is None:
                return Plan(query, (), calendar=described)
            return replace(self.plan(inner, times=times), calendar=described)
        times = times or StageTimes()
        catalog = catalog or self.catalog(query, times)
        with times.stage("plan"):
            result = planner.plan(query, catalog, self.settings.query.warm_rollup_rows)
        log.debug("planned %d segments: %s", len(result.segments), times.describe())
        return replace(result, timings=times.describe())

    def checked_plan(
        self, query: DataQuery, times: StageTimes | None = None, catalog: Catalog | None = None
    ) -> tuple[Plan, Catalog]:
        """The plan, with every lake file it reads verified first: days of a damaged file
        are planned again from the warm store (or refused with LakeDamaged). `catalog`: one
        just loaded for the query."""
        times = times or StageTimes()
        catalog = catalog or self.catalog(query, times)
        plan = self.plan(query, catalog, times)
        with times.stage("check_files"):
            damaged = self.files.damaged(plan, self._file_records)
        if not damaged:
            return plan, catalog
        for table, days in damaged.items():
            self.catalogs.mark_damaged(table, days)
            self._record_damage(table, days)
        catalog = self.catalog(query, times)
        return self.plan(query, catalog, times), catalog

    def run(self, query: DataQuery) -> Answer:
        """The answer; its `times` fill up, stage by stage, as its batches are read."""
        if query.calendar is not None:
            return self._run_calendar(query)
        times = StageTimes()
        answered = self._run_direct(query, times)
        if answered is not None:
            return answered
        guessed = self._run_guessed(query, times)
        if isinstance(guessed, Answer):
            return guessed
        plan, catalog = self.checked_plan(query, times, guessed)
        if plan.needs_warm and not catalog.warm_available:
            raise WarmStoreUnavailable(
                "the warm store is unreachable and this span needs it; spans already in "
                "the lake are still served"
            )
        reservation = self._admit(plan)
        try:
            with times.stage("locate_page"):
                after, skip = self._start(plan, catalog, times)
            rows = self._stream(plan, after, skip, _limit(query), times)
            return self._answer(plan, rows, reservation, times)
        except BaseException:
            self.budget.release(reservation)
            raise

    def _admit(self, plan: Plan) -> int:
        """The query's reservation of the memory budget (waits for room, or refuses)."""
        need = self._estimate(plan)
        self._refuse_pages_beyond_the_budget(plan, need)
        if plan.query.page_size == 0:
            # A stream's needs do not grow with its length: it always shares the budget, so
            # a stalled one cannot hold the small queries' lane.
            need = min(need, self.budget.largest_bytes)
        return self.budget.reserve(need)

    def _answer(
        self, plan: Plan, rows: Iterator[pa.RecordBatch], reservation: int, times: StageTimes
    ) -> Answer:
        """The answer of `rows`: streamed as they are read, or the page read now. The
        reservation is released once the caller has read (rendered) them; on an error here
        the caller releases it."""
        if plan.query.page_size == 0:
            return Answer(
                plan=plan,
                schema=schema_for(plan.resolution),
                batches=self._released(rows, reservation, plan.resolution),
                has_more=False,
                next_cursor=None,
                rows=None,
                times=times,
            )
        answer = self._paged(plan, list(rows))
        answer.times = times
        answer.batches = self._released(answer.batches, reservation, plan.resolution)
        return answer

    def _run_guessed(self, query: DataQuery, times: StageTimes) -> Answer | Catalog | None:
        """A lake answer begun on a guess while the warm store confirms it. This thread plans
        from the cached catalog (CatalogSource.guess); the catalog statement (a round trip,
        0.6-2 ms) runs on another thread from when DuckDB starts reading that plan's first
        rows. Started before the planning, that thread's Python work (the catalog built from
        the statement's rows) held the GIL while this thread planned and checked the files:
        a participant-year's first batch came 0.65-0.85 ms later, its last 0.8-1.05 ms.
        The rows are answered only if the catalog the warm store returns plans the same
        segments; otherwise they are dropped, and the general path plans from that catalog
        (returned). None: no guess was made (a participant not cached, a deep page, M4)."""
        if query.after is not None or query.offset or query.m4_width is not None:
            return None
        if self.database_url is None or time.monotonic() < self._warm_down_until:
            return None
        cached = self.catalogs.guess(query.users)
        if cached is None:
            return None
        confirm_times = StageTimes()
        confirming = _Confirmation(self._confirming, lambda: self.catalog(query, confirm_times))
        guess = None
        try:
            guess = self._begin(query, cached, times, confirming.start)
            catalog = confirming.result()
            times.merge(confirm_times)
            if guess is None:
                return catalog
            confirmed = guess.plan  # the plan is a function of the query and the catalog
            if catalog != cached:
                with times.stage("plan"):
                    confirmed = planner.plan(query, catalog, self.settings.query.warm_rollup_rows)
            if confirmed.segments != guess.plan.segments:
                guess.drop(self.budget)
                times.count("guess_dropped")
                return catalog
            if guess.failed is not None:
                raise guess.failed
            plan = replace(confirmed, timings=times.describe())
            rows = itertools.chain(guess.first, guess.rest)
            return self._answer(plan, rows, guess.reservation, times)
        except BaseException:
            if guess is not None:
                guess.drop(self.budget)
            raise

    def _begin(
        self, query: DataQuery, catalog: Catalog, times: StageTimes, confirm: Callable[[], None]
    ) -> _Guess | None:
        """The guessed plan's first rows, read, `confirm` called as DuckDB starts (None: the
        guess is not worth reading: it needs the warm store or a file this process has not
        verified, or the fresh catalog must decide: a refusal from the cached one, lost days
        or a page too large, may not hold)."""
        try:
            with times.stage("plan"):
                plan = planner.plan(query, catalog, self.settings.query.warm_rollup_rows)
        except (LakeDamaged, InvalidParameter):
            return None
        with times.stage("check_files"):
            if plan.needs_warm or not plan.segments or not self.files.all_known_good(plan):
                return None
        try:
            reservation = self._admit(plan)
        except InvalidParameter:
            return None
        rows = self._stream(plan, None, 0, _limit(query), times)
        confirm()
        try:
            first = list(itertools.islice(rows, 1))  # DuckDB reads meanwhile
        except Exception as exc:  # raised as the general path would, if the plan holds
            return _Guess(plan, [], iter(()), reservation, failed=exc)
        except BaseException:
            self.budget.release(reservation)
            raise
        return _Guess(plan, first, rows, reservation)

    def _run_direct(self, query: DataQuery, times: StageTimes) -> Answer | None:
        """The answer by one warm-store statement, when the warm store alone may give it
        (engine/direct.py); None: the general path answers (so it also does whenever the
        warm store fails, and handles the outage its own way)."""
        query.principal.require(query.users, query.metrics)  # before any I/O for it
        warm_rollup_rows = self.settings.query.warm_rollup_rows
        if self.database_url is None or time.monotonic() < self._warm_down_until:
            return None
        with times.stage("plan"):
            if query in self._too_long:
                return None
            if not direct.route(query, warm_rollup_rows):
                return None
            plan = direct.plan(query)
        # Held until the answer is rendered: at most `limit` rows are read.
        reservation = self.budget.reserve(self._estimate(plan, direct.limit(query)))
        try:
            with times.stage("warm_fetch"):
                read = self._read(lambda conn: direct.read(conn, query), lambda: None)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout):
            read = None
        except BaseException:
            self.budget.release(reservation)
            raise
        times.count("warm_statements")
        if read is None or read.rows is None:
            self.budget.release(reservation)
            times.count("direct_refused")
            if read is not None and read.too_long:
                self._too_long.add(query)
            return None
        plan = replace(plan, timings=times.describe())
        if query.page_size == 0:
            answer = Answer(plan, read.rows.schema, iter((read.rows,)), False, None, None)
        else:
            answer = self._paged(plan, [read.rows])
        answer.times = times
        answer.batches = self._released(answer.batches, reservation, plan.resolution)
        return answer

    # -- calendar answers (local days, weeks, months) ----------------------------------------

    def zone_histories(self, users: Sequence[int] | None) -> dict[int, History]:
        """Participants' zone histories (None: all); the warm store must answer."""
        try:
            with self._connection() as conn:
                if conn is not None:
                    return read_histories(conn, users)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            log.warning("zone histories unreadable: %s", exc)
        raise WarmStoreUnavailable(
            "the warm store is unreachable: participants' time zones (tz=local) cannot be read"
        )

    def _calendar_work(self, query: DataQuery) -> CalendarWork:
        query.principal.require(query.users, query.metrics)  # before any I/O for it
        histories = self.zone_histories(query.users) if query.tz == LOCAL else {}
        return prepare(query, histories, self.settings.query.default_tz)

    def _run_calendar(self, query: DataQuery) -> Answer:
        """The whole calendar answer is small (a row per bucket and series): it is summed
        from the finer rows, then paged."""
        plan, work, parts, _ = self._calendar_parts(query)
        table = combine(parts, work.table) if work.inner is not None else CALENDAR.empty_table()
        rows, has_more, next_cursor = page(query, table)
        return Answer(
            plan=plan,
            schema=CALENDAR,
            batches=iter(rows.to_batches()),
            has_more=has_more,
            next_cursor=next_cursor,
            rows=None if query.page_size == 0 else rows.num_rows,
        )

    def fill_calendar(self, query: DataQuery) -> tuple[dict[str, Any], int]:
        """Compute and store what the calendar cache lacks of a calendar request, as an
        answer would, its entries marked prefilled (engine/calendarprefill.py); the plan's
        calendar part and the entries written. A failed store raises (an answer would
        shrug it off): the prefill must not count the days as done."""
        plan, work, _, filled = self._calendar_parts(query, prefilled=True)
        calendar = plan.calendar or {}
        if work.inner is not None and calendar.get("cache") is None:
            raise WarmStoreUnavailable("the calendar cache is off or unreadable: nothing prefilled")
        return calendar, filled

    def _calendar_parts(
        self, query: DataQuery, prefilled: bool = False
    ) -> tuple[Plan, CalendarWork, list[pa.Table], int]:
        """The plan, the buckets, their partial-sum runs (cached ones first) and how many
        entries were stored: the misses are computed, then stored."""
        work, cached, inner, described = self._calendar_lookup(query)
        parts = [] if cached is None else [cached.hits]
        if inner is None:
            return Plan(query, (), calendar=described), work, parts, 0
        plan, catalog = self.checked_plan(inner)
        if plan.needs_warm and not catalog.warm_available:
            raise WarmStoreUnavailable(
                "the warm store is unreachable and this span needs it; spans already in "
                "the lake are still served"
            )
        plan = replace(plan, calendar=described)
        reservation = self.budget.reserve(self._estimate(plan))
        try:
            computed = [self._partials(s, inner, work) for s in plan.segments]
        finally:
            self.budget.release(reservation)
        filled = 0
        if cached is not None:
            computed = [cached.only_missing(runs) for runs in computed]
            filled = self._cache_fill(work, cached, computed, prefilled)
        parts.extend(computed)
        return plan, work, parts, filled

    def _calendar_lookup(
        self, query: DataQuery
    ) -> tuple[CalendarWork, CacheRead | None, DataQuery | None, dict[str, Any]]:
        """The buckets, what the cache holds of them, the query for the rest (None: nothing
        to compute) and the plan's calendar part: what a plan and an answer both start from."""
        work = self._calendar_work(query)
        cached = self._cache_read(work)
        return work, cached, self._missing(work, cached), self._described(work, cached)

    def _partials(self, segment: Segment, inner: DataQuery, work: CalendarWork) -> pa.Table:
        """A segment's partial bucket sums, as its rows stream in. (Summing lake rows inside
        DuckDB with an ASOF JOIN on the bucket starts measured slower: 437 ms against 110
        ms for a year of 1h rows of 10 participants, 7.8 s for their 1m rows.)"""
        stream = self._segment_stream(segment, inner.metrics, None, None, None, StageTimes())
        return partials(stream, work.table)  # no M4

    # -- the calendar cache (engine/calendarcache.py) -----------------------------------------

    def _cache_read(self, work: CalendarWork) -> CacheRead | None:
        """What the cache holds for the request; None when it is off, the request has no
        bucket, or the warm store does not answer (the answer is then computed whole)."""
        if work.inner is None or not self.settings.query.calendar_cache_rows:
            return None
        try:
            return self._read(
                lambda conn: calendarcache.read(conn, work.query, work.table), lambda: None
            )
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            log.warning("calendar cache unreadable, computing every bucket: %s", exc)
            return None

    def _cache_fill(
        self, work: CalendarWork, cached: CacheRead, computed: list[pa.Table], prefilled: bool
    ) -> int:
        """Store the buckets just computed; how many. Best effort for an answer (it is right
        without them); a prefill's failure raises."""
        try:
            with self._connection() as conn:
                if conn is not None:
                    return calendarcache.fill(conn, cached, work.table, computed, prefilled)
                if prefilled:
                    raise WarmStoreUnavailable("the warm store is unreachable: nothing prefilled")
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            if prefilled:
                raise
            log.warning("calendar cache not filled: %s", exc)
        return 0

    @staticmethod
    def _missing(work: CalendarWork, cached: CacheRead | None) -> DataQuery | None:
        """The finer query computing what the cache does not hold (None: nothing)."""
        if work.inner is None or cached is None:
            return work.inner
        return cached.missing_query(work.inner, work.table)

    @staticmethod
    def _described(work: CalendarWork, cached: CacheRead | None) -> dict[str, Any]:
        described = work.describe()
        described["cache"] = None if cached is None else cached.describe()
        return described

    # -- lake integrity ----------------------------------------------------------------------

    def _file_records(self, table: str, paths: Sequence[str]) -> dict[str, tuple[int, str]] | None:
        """What lake_files recorded for these files; None while the warm store is down."""
        try:
            with self._connection() as conn:
                if conn is None:
                    return None
                rows = conn.execute(
                    "SELECT path, size, sha256 FROM lake_files WHERE tier = %s AND path = ANY(%s)",
                    (table, list(paths)),
                ).fetchall()
        except (psycopg.Error, psycopg_pool.PoolTimeout):
            log.warning("lake file records unreadable; checking files by structure only")
            return None
        return {path: (int(size), digest) for path, size, digest in rows}

    def _record_damage(self, table: str, days: dict[tuple[int, date], str]) -> None:
        """Queue the days for `stratum repair` and tell other processes (best effort: this
        process stops serving them from the lake either way)."""
        try:
            with self._connection() as conn:
                if conn is None:
                    return
                keys = sorted(days)
                conn.execute(
                    "INSERT INTO lake_damage (user_id, tier, day, reason) "
                    "SELECT u, %s, d, r "
                    "FROM unnest(%s::int[], %s::date[], %s::text[]) AS x(u, d, r) "
                    "ON CONFLICT (user_id, tier, day) DO NOTHING",
                    (table, [u for u, _ in keys], [d for _, d in keys], [days[k] for k in keys]),
                )
                conn.execute("SELECT nextval('catalog_seq')")
        except (psycopg.Error, psycopg_pool.PoolTimeout):
            log.warning("could not record lake damage in the warm store", exc_info=True)

    # -- what /catalog and /health report --------------------------------------------------

    def overview(self, principal: Principal) -> Overview:
        """Lake versions, and from the warm store (when it answers) coverage and last runs,
        as far as `principal` may see: its participants' coverage; job runs (whose counts
        span every participant) for admins only."""
        versions = self.lake_versions()
        try:
            with self._connection() as conn:
                if conn is None:
                    return Overview(versions)
                seen = [c for c in coverage(conn) if principal.sees_user(c["user_id"])]
                return Overview(versions, seen, last_runs(conn) if principal.admin else None)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            log.warning("overview without the warm store: %s", exc)
            return Overview(versions)

    def record_audit(self, entry: AuditEntry) -> bool:
        """Append an access-log row; False (logged, without any key text) when the warm
        store cannot take it."""
        try:
            with self._connection() as conn:
                if conn is not None:
                    write_entry(conn, entry)
                    return True
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            log.warning("audit row not written (%s): %s", exc, entry)
            return False
        log.warning("audit row not written (warm store down): %s", entry)
        return False

    def cursor_secret(self) -> bytes:
        """The server's cursor HMAC key, read from the warm store once."""
        if self._cursor_secret is None:
            try:
                with self._connection() as conn:
                    if conn is not None:
                        self._cursor_secret = cursor_secret(conn)
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                log.warning("cursor secret unreadable: %s", exc)
            if self._cursor_secret is None:
                raise WarmStoreUnavailable(
                    "the warm store is unreachable: cursors cannot be signed or checked"
                )
        return self._cursor_secret

    def authenticate(self, key_text: str) -> Principal:
        """The principal of a live key, read from the warm store at each request (so
        revocation and expiry act at once). While the warm store is unreachable a key that
        was live when last checked keeps its scope: nobody can revoke it meanwhile, and
        lake-only spans stay readable."""
        digest = hash_key(key_text)

        def check(conn: psycopg.Connection) -> Principal:
            try:
                principal = authenticate(conn, key_text)
            except Unauthenticated:
                self._principals.pop(digest, None)
                raise
            self._principals[digest] = principal
            return principal

        try:
            checked = self._read(check, lambda: None)
            if checked is not None:
                return checked
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            log.warning("checking a key without the warm store: %s", exc)
        known = self._principals.get(digest)
        if known is None:
            raise WarmStoreUnavailable("the warm store is unreachable: keys cannot be checked")
        return known

    def health(self) -> Health:
        warm = False
        try:
            with self._connection() as conn:
                if conn is not None:
                    ping(conn)
                    warm = True
        except (psycopg.Error, psycopg_pool.PoolTimeout):
            warm = False
        return Health(warm_store=warm, lake=self._lake_readable(), damaged=self.damaged_days())

    def damaged_days(self) -> list[dict[str, Any]]:
        """Lake days not served from the lake: recorded damage, days verified at a version
        the log no longer reaches, and what this process found itself."""
        found = {
            (table, user_id, day): "found damaged by this process"
            for table, days in self.catalogs.found_damage().items()
            for user_id, day in days
        }
        try:
            with self._connection() as conn:
                if conn is not None:
                    found.update(damaged_days(conn, self.lake_versions()))
        except (psycopg.Error, psycopg_pool.PoolTimeout):
            pass
        return [
            {"tier": t, "user_id": u, "day": d.isoformat(), "reason": why}
            for (t, u, d), why in sorted(found.items())
        ]

    def lake_versions(self) -> dict[str, int | None]:
        versions: dict[str, int | None] = {}
        for table in LAKE_TABLES:
            try:
                versions[table] = self.lake.version(table)
            except Exception:  # an unreadable table is reported, not fatal
                log.warning("lake table %s unreadable", table, exc_info=True)
                versions[table] = None
        return versions

    def _lake_readable(self) -> bool:
        try:
            for table in LAKE_TABLES:
                self.lake.version(table)
            return True
        except Exception:
            log.warning("lake unreadable", exc_info=True)
            return False

    # -- steps -------------------------------------------------------------------------------

    def _estimate(self, plan: Plan, page_size: int | None = None) -> int:
        """Bytes this query holds outside DuckDB until its answer is sent: batches in flight
        (one per segment, at most a page of rows), the page's rows (held until the last is
        sent), and one chunk being rendered and sent (every format renders a slice of rows
        at a time; a short page renders only its rows). `page_size` overrides the query's."""
        width = row_bytes(plan.resolution)
        if page_size is None:
            page_size = plan.query.page_size
        batch_rows = max(CHUNK_ROWS, BATCH_ROWS)
        if page_size:
            batch_rows = min(batch_rows, page_size + 1)
        in_flight = len(plan.segments) * batch_rows * width
        render = min(RENDER_BYTES, page_size * RENDERED_ROW_BYTES) if page_size else RENDER_BYTES
        return QUERY_OVERHEAD_BYTES + in_flight + page_size * width + render

    def _refuse_pages_beyond_the_budget(self, plan: Plan, need: int) -> None:
        """A page that needs more than all the memory queries share can never be admitted
        within the budget: the client is told the page size that fits. (One that needs more
        than the share less the small queries' lane is admitted alone.)"""
        page_size = plan.query.page_size
        available = self.budget.budget_bytes
        if not page_size or need <= available:
            return
        # The estimate grows with the page size: the largest page that fits, by bisection.
        fits, too_big = 0, page_size
        while too_big - fits > 1:
            middle = (fits + too_big) // 2
            if self._estimate(plan, middle) <= available:
                fits = middle
            else:
                too_big = middle
        if fits < 1:
            return  # its fixed costs alone fill the budget: admitted alone, as a stream is
        raise InvalidParameter(
            "page_size",
            f"page_size={page_size:,} needs about {need / 2**20:,.0f} MiB, more than this "
            f"server's memory for queries ({available / 2**20:,.0f} MiB of "
            f"STRATUM_MEMORY_BUDGET); ask for at most {fits:,} rows per page, or stream the "
            "answer (page_size=0 with format=arrow, parquet, csv or ndjson)",
        )

    def _start(self, plan: Plan, catalog: Catalog, times: StageTimes) -> tuple[Key | None, int]:
        query = plan.query
        if query.after is not None or query.offset == 0:
            return query.after, 0
        if query.m4_width is not None:
            # The day counts count every row, not the reduced ones; an M4 answer is small
            # (4 rows per column and series at most): skip within it.
            return None, query.offset
        no_counts = (None, query.offset)  # skip row by row

        def series_rows(start: datetime, end: datetime) -> dict[tuple[int, str], int]:
            return self._series_rows(query, start, end, times)

        try:
            return self._read(
                lambda conn: paging.locate_by_counts(
                    conn, query, catalog.stale_rollups, times, series_rows
                ),
                lambda: no_counts,
            )
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout):
            return no_counts

    def _series_rows(
        self, query: DataQuery, start: datetime, end: datetime, times: StageTimes
    ) -> dict[tuple[int, str], int]:
        """Rows per series of `query`'s answer within [start, end) (a partial day of its
        span), read the way the answer is: day counts only hold whole days."""
        part = replace(query, start=start, end=end, page_size=0, page_number=1, after=None)
        part_times = StageTimes()
        plan, _ = self.checked_plan(part, part_times)
        counts: Counter[tuple[int, str]] = Counter()
        for batch in self._stream(plan, None, 0, None, part_times):  # a batch at a time
            per_series = pa.Table.from_batches([batch]).group_by(["user_id", "metric"])
            counted = per_series.aggregate([([], "count_all")]).to_pydict()
            series = zip(counted["user_id"], counted["metric"], strict=True)
            counts.update(dict(zip(series, counted["count_all"], strict=True)))
        times.count("warm_statements", part_times.counts.get("warm_statements", 0))
        return dict(counts)

    def _segment_stream(
        self,
        segment: Segment,
        metrics: tuple[str, ...],
        after: Key | None,
        limit: int | None,
        m4: M4 | None,
        times: StageTimes,
    ) -> Iterator[pa.RecordBatch]:
        if segment.backend == "lake":
            lake = self._lake_stream(segment, metrics, after, limit, m4)
            return times.timed(lake, "lake_scan")
        warm = stream_warm(self._warm_pool(), segment, metrics, after, limit, m4, times)
        return times.timed(warm, "warm_fetch")

    def _lake_stream(
        self,
        segment: Segment,
        metrics: tuple[str, ...],
        after: Key | None,
        limit: int | None,
        m4: M4 | None,
    ) -> Iterator[pa.RecordBatch]:
        """A file damaged after this process verified it (same size and mtime: bit rot) can
        still fail in DuckDB (or pyarrow, for small answers): a 503, never a 500, and the files
        are checked again next time."""
        try:
            yield from stream_lake(
                self.duck, self.lake.storage, segment, metrics, after, limit, self.scan_tuning, m4
            )
        except (
            duckdb.IOException,
            duckdb.InvalidInputException,
            pa.ArrowException,
            OSError,
        ) as exc:
            raise self._unreadable(segment, exc) from None

    def _unreadable(self, segment: Segment, exc: Exception) -> LakeDamaged:
        log.error("lake read failed for %s: %s", segment.source, exc)
        for lake_file in segment.files:
            self.files.verified.forget(lake_file.path)
        last = (segment.end - timedelta(microseconds=1)).date()
        days = [(user_id, segment.start.date(), last) for user_id in segment.users]
        return LakeDamaged(
            segment.source, days, "could not be read; it is checked again on the next request"
        )

    def _stream(
        self, plan: Plan, after: Key | None, skip: int, limit: int | None, times: StageTimes
    ) -> Iterator[pa.RecordBatch]:
        query = plan.query
        per_segment = None if limit is None else skip + limit
        m4 = None if query.m4_width is None else M4(query.start, query.end, query.m4_width)
        streams = [
            self._segment_stream(s, query.metrics, after, per_segment, m4, times)
            for s in plan.segments
        ]
        merged = take(merge_sorted(streams, query.metrics), skip, limit)
        return times.timed(merged, "merge", inner=("warm_fetch", "lake_scan"))

    def _released(
        self, stream: Iterator[pa.RecordBatch], reservation: int, resolution: Resolution
    ) -> ReservedBatches:
        return ReservedBatches(stream, self.budget, reservation, row_bytes(resolution))

    def _paged(self, plan: Plan, batches: list[pa.RecordBatch]) -> Answer:
        schema = schema_for(plan.resolution)
        if len(batches) == 1:  # the direct path's one batch: no table around it
            page, has_more, next_cursor = cut_page(plan.query, batches[0])
            pages = [page]
        else:
            table, has_more, next_cursor = cut_page(
                plan.query, pa.Table.from_batches(batches, schema=schema)
            )
            pages = table.to_batches()
        return Answer(
            plan=plan,
            schema=schema,
            batches=iter(pages),
            has_more=has_more,
            next_cursor=next_cursor,
            rows=sum(page.num_rows for page in pages),
        )


class _Confirmation:
    """A catalog loaded on a thread of `pool` from when `start` is first called (`result`
    starts it if nobody did)."""

    def __init__(self, pool: ThreadPoolExecutor, load: Callable[[], Catalog]) -> None:
        self._pool = pool
        self._load = load
        self._future: Future[Catalog] | None = None

    def start(self) -> None:
        if self._future is None:
            self._future = self._pool.submit(self._load)

    def result(self) -> Catalog:
        self.start()
        assert self._future is not None  # (started just now)
        return self._future.result()


def _checked_out(pool: psycopg_pool.ConnectionPool) -> psycopg.Connection:
    """A pooled connection that works. After a server restart every idle connection is dead:
    the first one found so makes the pool drop them all, and a fresh one is taken, so the
    first request after a restart is answered instead of one failure per pooled connection.
    (The pool's own `check=` callback left waiters without a connection: psycopg_pool 3.3.)"""
    conn = pool.getconn(timeout=3)
    try:
        conn.execute("")  # one round trip
        return conn
    except psycopg.OperationalError:
        pool.putconn(conn)
        pool.check()
    return pool.getconn(timeout=3)
