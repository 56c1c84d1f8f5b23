"""The backends compared. Each turns a Case into a timed callable returning the rows it read.

`prepare(case)` does the untimed set-up (file listing for bare DuckDB, URL building) and
raises NotApplicable when the backend cannot answer that case (e.g. warm rollups for raw rows).
"""

from __future__ import annotations

import http.client
import json
import statistics
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import duckdb
import psycopg
import pyarrow.ipc as ipc

from benchmarks.dataset import Dataset
from benchmarks.limit import open_limit
from benchmarks.workloads import Case
from engine.access import LOCAL_ADMIN
from engine.query import build_query
from engine.run import Engine
from engine.tiers import TIERS, minute_rows
from engine.timings import StageTimes
from lake import Lake, in_utc, scan_sql

Timed = Callable[[], int]


class NotApplicable(Exception):
    """This backend does not answer this case; the message says why."""


class Backend:
    key = ""
    label = ""
    description = ""
    reference = False  # bare DuckDB: the practical limit

    def prepare(self, case: Case) -> Timed:
        raise NotImplementedError

    def close(self) -> None:
        return None

    def stages(self) -> dict[str, Any] | None:
        """Per-stage medians of the runs since the last prepare (the engine only)."""
        return None


# --- warm store (psycopg, row fetch as the original design did) --------------------------


class _Warm(Backend):
    def __init__(self, dataset: Dataset) -> None:
        self.conn = psycopg.connect(dataset.url, autocommit=True)
        self.conn.execute("SET timezone = 'UTC'")  # date_trunc buckets in UTC

    def _timed(self, sql: str, params: list[Any] | dict[str, Any]) -> Timed:
        def run() -> int:
            with self.conn.cursor() as cur:
                cur.execute(sql.encode(), params)
                return len(cur.fetchall())

        return run

    def close(self) -> None:
        self.conn.close()


_WARM_WHERE = "user_id = ANY(%s) AND metric = ANY(%s) AND ts >= %s AND ts < %s"
_ORDER = " ORDER BY user_id, metric, ts"


def _pg_paging(case: Case) -> tuple[str, list[Any]]:
    if case.page_size == 0:
        return "", []
    return " LIMIT %s OFFSET %s", [case.page_size, (case.page_number - 1) * case.page_size]


class WarmRaw(_Warm):
    key = "warm_raw"
    label = "warm raw"
    description = "psycopg fetchall over raw_data (rollups computed from raw with GROUP BY)"

    def prepare(self, case: Case) -> Timed:
        base = [list(case.users), list(case.metrics), case.start, case.end]
        page, page_params = _pg_paging(case)
        if case.resolution == "raw":
            sql = f"SELECT user_id, metric, ts, value FROM raw_data WHERE {_WARM_WHERE}"  # noqa: S608
            return self._timed(sql + _ORDER + page, base + page_params)
        unit = TIERS[case.resolution].bucket_unit  # our constant, never input
        sql = (
            f"SELECT user_id, metric, date_trunc('{unit}', ts) AS ts, count(*), sum(value), "  # noqa: S608
            f"min(value), max(value), sum(value) / count(*) FROM raw_data WHERE "
            f"{_WARM_WHERE} GROUP BY 1, 2, 3"
        )
        return self._timed(sql + _ORDER + page, base + page_params)


class WarmRollups(_Warm):
    key = "warm_rollups"
    label = "warm rollups"
    description = "psycopg fetchall over data_1m / data_1h / data_1d"

    def prepare(self, case: Case) -> Timed:
        if case.resolution == "raw":
            raise NotApplicable("raw rows: no rollup tier")
        tier = TIERS[case.resolution]
        source = tier.warm_table
        if tier.stored_in:  # data_1m, read the way the engine reads it (engine.tiers)
            source = minute_rows(
                lambda p: f"{p}user_id = ANY(%(users)s) AND {p}metric = ANY(%(metrics)s)",
                "%(start)s",
                "%(end)s",
            )
        sql = (
            f"SELECT user_id, metric, ts, count, sum, min, max, sum / count FROM {source} m "  # noqa: S608
            "WHERE user_id = ANY(%(users)s) AND metric = ANY(%(metrics)s) "
            "AND ts >= %(start)s AND ts < %(end)s" + _ORDER
        )
        params = {
            "users": list(case.users),
            "metrics": list(case.metrics),
            "start": case.start,
            "end": case.end,
        }
        if case.page_size:
            sql += " LIMIT %(limit)s OFFSET %(offset)s"
            params |= {"limit": case.page_size, "offset": (case.page_number - 1) * case.page_size}
        return self._timed(sql, params)


# --- bare DuckDB over the lake's exact file list -----------------------------------------


def _duck_timed(duck: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> Timed:
    def run() -> int:
        cursor = duck.cursor()
        try:
            return int(cursor.sql(sql, params=params).to_arrow_table().num_rows)
        finally:
            cursor.close()

    return run


def _duck_where(case: Case, params: dict[str, Any]) -> str:
    params.update({f"u{i}": u for i, u in enumerate(case.users)})
    params.update({f"m{i}": m for i, m in enumerate(case.metrics)})
    params.update({"start": case.start, "end": case.end})
    users = ", ".join(f"$u{i}" for i in range(len(case.users)))
    metrics = ", ".join(f"$m{i}" for i in range(len(case.metrics)))
    return f"user_id IN ({users}) AND metric IN ({metrics}) AND ts >= $start AND ts < $end"


def _duck_order_page(case: Case, params: dict[str, Any]) -> str:
    # Whole answers are read as they lie (file order is answer order for one metric);
    # a page needs the answer's order to be well defined.
    if case.page_size == 0:
        return ""
    params.update({"limit": case.page_size, "offset": (case.page_number - 1) * case.page_size})
    return f"{_ORDER} LIMIT $limit OFFSET $offset"


class _Lake(Backend):
    reference = True

    def __init__(self, dataset: Dataset) -> None:
        if not dataset.lake_synced:
            raise NotApplicable(dataset.sync_note or "the lake is empty")
        self.lake = Lake(dataset.lake_path)
        self.duck = in_utc(duckdb.connect())
        self.lake_end = dataset.lake_end

    def _files(self, tier: str, case: Case) -> tuple[str, dict[str, Any]]:
        if case.end > self.lake_end:
            raise NotApplicable("span not in the lake (warm-only days)")
        files = self.lake.files(tier, list(case.users), case.start, case.end)
        return scan_sql(files)

    def _timed(self, sql: str, params: dict[str, Any]) -> Timed:
        return _duck_timed(self.duck, sql, params)

    def _where(self, case: Case, params: dict[str, Any]) -> str:
        return _duck_where(case, params)

    def _order_page(self, case: Case, params: dict[str, Any]) -> str:
        return _duck_order_page(case, params)

    def close(self) -> None:
        self.duck.close()


class LakeRaw(_Lake):
    key = "lake_raw"
    label = "lake raw (DuckDB)"
    description = "bare DuckDB over the raw tier's file list (rollups by GROUP BY)"

    def prepare(self, case: Case) -> Timed:
        scan, params = self._files("raw", case)
        where = self._where(case, params)
        if case.resolution == "raw":
            sql = f"SELECT user_id, metric, ts, value FROM {scan} AS lake WHERE {where}"  # noqa: S608
        else:
            unit = TIERS[case.resolution].bucket_unit
            sql = (
                f"SELECT user_id, metric, date_trunc('{unit}', ts) AS ts, count(*) AS count, "  # noqa: S608
                f"sum(value) AS sum, min(value) AS min, max(value) AS max, "
                f"sum(value) / count(*) AS avg FROM {scan} AS lake WHERE {where} "
                "GROUP BY ALL"
            )
        return self._timed(sql + self._order_page(case, params), params)


class LakeRollups(_Lake):
    key = "lake_rollups"
    label = "lake rollups (DuckDB)"
    description = "bare DuckDB over the agg_1m / agg_1h / agg_1d file list"

    def prepare(self, case: Case) -> Timed:
        if case.resolution == "raw":
            raise NotApplicable("raw rows: no rollup tier")
        scan, params = self._files(TIERS[case.resolution].lake_table, case)
        where = self._where(case, params)
        sql = (
            f"SELECT user_id, metric, ts, count, sum, min, max, sum / count AS avg "  # noqa: S608
            f"FROM {scan} AS lake WHERE {where}"
        )
        return self._timed(sql + self._order_page(case, params), params)


# --- the limit: DuckDB over one compacted file per participant ---------------------------


class Limit(Backend):
    key = "limit"
    label = "limit (DuckDB, 1 file/participant)"
    description = (
        "bare DuckDB over the same lake rows compacted into one file per participant and tier, "
        "sorted by (metric, ts), 128k-row groups (built by the bench, cached in its home)"
    )

    def __init__(self, dataset: Dataset) -> None:
        if not dataset.lake_synced:
            raise NotApplicable(dataset.sync_note or "the lake is empty")
        self.files = open_limit(dataset)
        self.duck = in_utc(duckdb.connect())
        self.lake_end = dataset.lake_end

    def prepare(self, case: Case) -> Timed:
        if case.end > self.lake_end:
            raise NotApplicable("span not in the lake (warm-only days)")
        tier = "raw" if case.resolution == "raw" else TIERS[case.resolution].lake_table
        paths = [self.files.path(tier, u) for u in case.users]
        params: dict[str, Any] = {"files": [str(p) for p in paths if p.exists()]}
        if not params["files"]:
            raise NotApplicable("no lake rows for these participants")
        where = _duck_where(case, params)
        names = "user_id, metric, ts, value"
        if case.resolution != "raw":
            names = "user_id, metric, ts, count, sum, min, max, sum / count AS avg"
        sql = f"SELECT {names} FROM read_parquet($files) WHERE {where}"  # noqa: S608
        sql += _duck_order_page(case, params)
        return _duck_timed(self.duck, sql, params)

    def close(self) -> None:
        self.duck.close()


# --- the engine, in process --------------------------------------------------------------


class InProcessEngine(Backend):
    key = "engine"
    label = "engine"
    description = "Engine.run in process (auto routing), Arrow batches consumed"

    def __init__(self, dataset: Dataset) -> None:
        self.engine = Engine(dataset.settings(), dataset.url)
        self.samples: list[StageTimes] = []

    def prepare(self, case: Case) -> Timed:
        params = case.params()
        settings = self.engine.settings.query
        samples: list[StageTimes] = []
        self.samples = samples

        def run() -> int:
            answer = self.engine.run(build_query(params, settings, principal=LOCAL_ADMIN))
            rows = sum(batch.num_rows for batch in answer.batches)
            samples.append(answer.times)
            return rows

        return run

    def stages(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        names = dict.fromkeys(n for t in self.samples for n in t.ms)
        counts = dict.fromkeys(n for t in self.samples for n in t.counts)
        return {
            "runs": len(self.samples),
            "ms": {n: statistics.median(t.ms.get(n, 0.0) for t in self.samples) for n in names},
            "counts": {
                n: statistics.median(t.counts.get(n, 0) for t in self.samples) for n in counts
            },
        }

    def close(self) -> None:
        self.engine.close()


# --- the HTTP API over loopback ----------------------------------------------------------


T = TypeVar("T")


class HttpStatusError(Exception):
    """The server answered 4xx/5xx; `status` and `headers` (lower-case names) say how."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.headers = headers


class Loopback:
    """GETs over one kept-alive stdlib connection: the HTTP backends' instrument.

    Not httpx: it reads a body 64 KiB at a time through h11. On loopback, side by side, a
    13.6 MB chunked body (as /data streams) took httpx 50-56 ms and http.client 19-35 ms (a
    Content-Length one 86-125 ms and 8-12 ms): part of a 1-year Arrow answer's time would be
    the client library's, not the server's."""

    def __init__(self, base_url: str, key: str, timeout: float = 600.0) -> None:
        address = urlsplit(base_url)
        self._connect = lambda: http.client.HTTPConnection(
            address.hostname or "127.0.0.1", address.port, timeout=timeout
        )
        self._conn = self._connect()
        self._headers = {"Authorization": f"Bearer {key}"}

    def get(self, path: str, params: dict[str, list[str]]) -> tuple[dict[str, str], bytes]:
        """The headers and body of a 2xx answer; HttpStatusError for any other."""
        return self.read(path, params, http.client.HTTPResponse.read)

    def read(
        self,
        path: str,
        params: dict[str, list[str]],
        consume: Callable[[http.client.HTTPResponse], T],
    ) -> tuple[dict[str, str], T]:
        """The headers of a 2xx answer and what `consume` made of its body, read as it
        arrives (the body is drained after it, for the next request); HttpStatusError for
        any other answer."""
        target = f"{path}?{urlencode(params, doseq=True)}"
        for attempt in (1, 2):
            try:
                self._conn.request("GET", target, headers=self._headers)
                response = self._conn.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed the kept-alive connection while idle: GET again, once.
                self._conn.close()
                self._conn = self._connect()
                if attempt == 2:
                    raise
        headers = {name.lower(): value for name, value in response.getheaders()}
        if response.status >= 400:
            raise HttpStatusError(response.status, headers, response.read())
        result = consume(response)
        response.read()
        return headers, result

    def close(self) -> None:
        self._conn.close()


class _Http(Backend):
    def __init__(self, base_url: str, json_page_size: int, key: str) -> None:
        self.client = Loopback(base_url, key)
        self.json_page_size = json_page_size

    def close(self) -> None:
        self.client.close()


class HttpJson(_Http):
    key = "http_json"
    label = "/data JSON pages"
    description = "GET /data format=json, following the cursor page by page"

    def prepare(self, case: Case) -> Timed:
        size = case.page_size or self.json_page_size
        params = case.params(format="json", page_size=str(size))

        def run() -> int:
            rows = 0
            query: dict[str, list[str]] = params
            while True:
                _, page = self.client.get("/data", query)
                body = json.loads(page)
                rows += len(body["data"])
                cursor = next_cursor(body)
                if case.page_size or not cursor:
                    return rows
                query = {**case.params(format="json", page_size=str(size)), "cursor": [cursor]}

        return run


class HttpJsonPage(_Http):
    key = "http_json_page"
    label = "/data one JSON page"
    description = "GET /data format=json, the first page only, read whole (not parsed)"

    def prepare(self, case: Case) -> Timed:
        params = case.params(format="json", page_size=str(case.page_size or self.json_page_size))

        def run() -> int:
            headers, _ = self.client.get("/data", params)
            return int(headers["x-stratum-rows"])

        return run


def next_cursor(body: dict[str, Any]) -> str | None:
    """The cursor of the next page: {"data": [...], "meta": {"next": ...}}."""
    value = (body.get("meta") or {}).get("next")
    return value if isinstance(value, str) and value else None


class HttpArrow(_Http):
    key = "http_arrow"
    label = "/data Arrow stream"
    description = "GET /data format=arrow page_size=0: one Arrow IPC stream"

    def prepare(self, case: Case) -> Timed:
        params = case.params(format="arrow")

        def run() -> int:
            return self.client.read("/data", params, _arrow_rows)[1]

        return run


def _arrow_rows(body: http.client.HTTPResponse) -> int:
    """The rows of an Arrow IPC stream, read message by message as they arrive, as an Arrow
    client reads one. Read whole first, the client also joined every chunk into one more
    copy of the answer: one participant-year raw (16 MB) from a one-thread blocking server
    writing DuckDB's batches (a floor for any server) took 53 ms read whole and 40 ms read as
    it came; from /data, 0-17 ms more in side-by-side runs."""
    return sum(batch.num_rows for batch in ipc.open_stream(body))
