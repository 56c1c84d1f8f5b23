"""The HTTP API: Litestar over one Engine. Parses requests into engine objects, renders answers.

GET /data     rows for users x metrics x span, paged (JSON) or streamed (NDJSON/CSV/Arrow/Parquet)
GET /plan     where the answer would come from, for humans
GET /catalog  participants, metrics, coverage per store, lake versions, last sync
GET /health   liveness (+ readiness with ?ready=1, or GET /ready)
GET /metrics  Prometheus text
GET /schema   OpenAPI
GET /         the explorer page (api/explorer.py)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import anyio
import pyarrow as pa
from litestar import Litestar, Request, Response, Router, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, Example, SecurityScheme
from litestar.params import QueryParameter
from litestar.response import Stream
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

from api import audit, bodies, explorer, hosts, render
from api.admission import ADMISSION, client_slots, key_slots
from api.auth import AUTHENTICATION, admin_only, principal_of
from api.errors import EXCEPTION_HANDLERS, retry_after
from api.head import answer_head
from api.pump import ChunkPump
from api.telemetry import Telemetry
from engine.access import Principal
from engine.audit import AuditEntry
from engine.errors import InvalidParameter, WarmStoreUnavailable
from engine.query import RESOLUTION_CHOICES, DataQuery, build_query, reject_unknown
from engine.registry import METRICS, metric_names
from engine.run import Answer, Engine
from engine.settings import Settings, require_auth_or_loopback, served_hosts
from engine.zones import describe_histories
from sync.access import prune_audit

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0


class Service:
    """What the handlers share: settings, telemetry, and one Engine per app lifespan (created
    on first use, closed at shutdown, so an app may be started again, as test clients do)."""

    def __init__(self, settings: Settings, database_url: str | None) -> None:
        self.settings = settings
        self.database_url = database_url
        self.telemetry = Telemetry()
        self._engine: Engine | None = None
        self._next_prune = 0.0  # time.monotonic() of the next access-log pruning
        self.key_slots = key_slots(settings.access.max_requests_per_key)
        self.client_slots = client_slots(settings.access.max_requests_per_client)
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = Engine(self.settings, self.database_url)
            return self._engine

    def record_audit(self, entry: AuditEntry) -> None:
        """Append the request's access-log row (blocking; the audit wrapper runs it in a
        worker thread), and drop rows past the retention about once an hour."""
        if not self.settings.access.auth:  # no key to account for
            return
        self.engine.record_audit(entry)
        now = time.monotonic()
        if self.database_url is not None and now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            retention = timedelta(days=self.settings.access.audit_retention_days)
            try:
                prune_audit(self.database_url, retention)
            except Exception:  # the log grows a while longer: not worth failing a request
                log.warning("pruning the access log failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()

    def preload_catalog(self) -> None:
        """Load the lake coverage while the warm store is up, so lake-only spans are still
        planned if it goes down later. Best effort: a failure here must not stop the server."""
        try:
            if not self.engine.preload():
                log.warning("warm store unreachable at start-up; the catalog loads later")
        except Exception:
            log.warning("catalog preload failed; it loads on the first request", exc_info=True)
        self.engine.settle_budget()  # the started process's own footprint set aside


def _service(state: State) -> Service:
    service: Service = state.service
    return service


# -- request parameters (documented once, shared by /data and /plan) ---------------------


def _examples(*values: Any) -> list[Example]:
    return [Example(summary=repr(v), value=v) for v in values]


UserParam = Annotated[
    list[str] | None,
    QueryParameter(
        description="Participant ids (required): repeat (user_id=1&user_id=2) or comma-separate.",
        examples=_examples(["1"], ["1,2"]),
    ),
]
MetricParam = Annotated[
    list[str] | None,
    QueryParameter(
        description="Metrics (required): repeat or comma-separate; one of "
        f"{', '.join(metric_names())}.",
        examples=_examples(["heart_rate"], ["heart_rate,steps"]),
    ),
]
StartParam = Annotated[
    str | None,
    QueryParameter(
        description="Start, inclusive (required): ISO 8601 date or date-time; no zone means UTC.",
        examples=_examples("2024-01-01", "2024-01-01T06:00:00Z"),
    ),
]
EndParam = Annotated[
    str | None,
    QueryParameter(
        description="End, exclusive (required), after start.",
        examples=_examples("2024-01-02", "2024-01-01T07:00:00Z"),
    ),
]
StartDateParam = Annotated[
    str | None,
    QueryParameter(
        description="Instead of start: the first day (YYYY-MM-DD, UTC), from its midnight. "
        "The original /data contract's name; a date only.",
        examples=_examples("2024-01-01"),
    ),
]
EndDateParam = Annotated[
    str | None,
    QueryParameter(
        description="Instead of end: the last day (YYYY-MM-DD, UTC), inclusive: through the "
        "end of that day. The original /data contract's name; a date only.",
        examples=_examples("2024-01-31"),
    ),
]
ResolutionParam = Annotated[
    str | None,
    QueryParameter(
        description="auto (default: the finest that keeps each series under max_points), "
        "raw, 1m, 1h, 1d, or the calendar buckets 1w (ISO weeks) and 1mo (months).",
        examples=_examples(*RESOLUTION_CHOICES),
    ),
]
TzParam = Annotated[
    str | None,
    QueryParameter(
        description="UTC (default), local (each participant's zone history) or an IANA "
        "name: 1d/1w/1mo buckets are that calendar's, and dates for start/end its dates.",
        examples=_examples("UTC", "local", "Asia/Kolkata"),
    ),
]
MaxPointsParam = Annotated[
    str | None,
    QueryParameter(description="Points per series that auto aims for.", examples=_examples("1000")),
]
PageSizeParam = Annotated[
    str | None,
    QueryParameter(
        description="Rows per page (default STRATUM_DEFAULT_PAGE_SIZE, at most "
        "STRATUM_MAX_PAGE_SIZE); 0 streams the whole answer (streaming formats only).",
        examples=_examples("1000", "0"),
    ),
]
PageNumberParam = Annotated[
    str | None, QueryParameter(description="1-based page number.", examples=_examples("2"))
]
CursorParam = Annotated[
    str | None,
    QueryParameter(
        description="The `next` value of a previous page: the page after it (faster than "
        "page_number for deep pages).",
    ),
]
DownsampleParam = Annotated[
    str | None,
    QueryParameter(
        description="m4: a raw answer keeps, per pixel column (see width) and series, only its "
        "first, last, lowest and highest row, which draw the same line as every row; rollup "
        "answers are unchanged. none (default): every row.",
        examples=_examples("m4"),
    ),
]
WidthParam = Annotated[
    str | None,
    QueryParameter(
        description="With downsample=m4: the chart's width in pixel columns (1..16384); "
        "[start, end) is split into this many equal columns.",
        examples=_examples("800"),
    ),
]
FormatParam = Annotated[
    str | None,
    QueryParameter(
        name="format",
        description="json (default), ndjson, csv, arrow or parquet; wins over Accept.",
        examples=_examples(*render.FORMATS),
    ),
]


def _query_params(
    request: Request[Any, Any, Any],
    user_id: UserParam = None,
    metric: MetricParam = None,
    start: StartParam = None,
    end: EndParam = None,
    start_date: StartDateParam = None,
    end_date: EndDateParam = None,
    resolution: ResolutionParam = None,
    max_points: MaxPointsParam = None,
    page_size: PageSizeParam = None,
    page_number: PageNumberParam = None,
    cursor: CursorParam = None,
    downsample: DownsampleParam = None,
    width: WidthParam = None,
    tz: TzParam = None,
    format_: FormatParam = None,
) -> dict[str, list[str]]:
    # The declarations above document the parameters; the engine validates the raw strings.
    return {key: [str(v) for v in values] for key, values in request.query_params.dict().items()}


QUERY_DEPENDENCIES = {"params": Provide(_query_params, sync_to_thread=False)}
_API_ONLY = ("format",)  # read here, not by the engine


def _last(values: list[str] | None) -> str | None:
    return values[-1] if values else None


# -- /data -------------------------------------------------------------------------------


def _next_url(request: Request[Any, Any, Any], params: dict[str, list[str]], cursor: str) -> str:
    kept = [
        (k, v) for k, values in params.items() if k not in ("cursor", "page_number") for v in values
    ]
    query = urlencode([*kept, ("cursor", cursor)])
    return str(request.url.with_replacements(query=query))


def _meta(answer: Answer, query: DataQuery) -> dict[str, Any]:
    return {
        "resolution": answer.plan.answer_resolution,
        "requested_resolution": query.requested_resolution,
        "page_number": None if query.after is not None else query.page_number,
        "page_size": query.page_size,
        "rows": answer.rows,
        "has_more": answer.has_more,
        "next": answer.next_cursor,
        "sources": answer.plan.sources,
        "downsample": None if query.m4_width is None else "m4",
    }


def _meta_headers(meta: dict[str, Any], next_url: str | None) -> dict[str, str]:
    headers = {
        "X-Stratum-Resolution": str(meta["resolution"]),
        "X-Stratum-Has-More": "true" if meta["has_more"] else "false",
        "X-Stratum-Sources": ",".join(meta["sources"]),
        "X-Stratum-Page-Size": str(meta["page_size"]),
    }
    if meta["page_number"] is not None:
        headers["X-Stratum-Page-Number"] = str(meta["page_number"])
    if meta["downsample"] is not None:
        headers["X-Stratum-Downsample"] = meta["downsample"]
    if meta["rows"] is not None:
        headers["X-Stratum-Rows"] = str(meta["rows"])
    if meta["next"] is not None and next_url is not None:
        headers["X-Stratum-Next"] = meta["next"]
        headers["Link"] = f'<{next_url}>; rel="next"'
    return headers


def _render_timed(chunks: Iterator[bytes], telemetry: Telemetry) -> Iterator[bytes]:
    """A JSON page's chunks, the time spent making each counted as rendering: the page's
    rows are read before it renders, so that time is the text's alone."""
    try:
        while True:
            started = time.perf_counter()
            chunk = next(chunks, None)
            telemetry.add_render("json", time.perf_counter() - started)
            if chunk is None:
                return
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _counted(
    batches: Iterator[pa.RecordBatch],
    telemetry: Telemetry,
    format_name: str,
    request: Request[Any, Any, Any],
) -> Iterator[pa.RecordBatch]:
    """The engine's batches, counting rows served; peeks the first batch eagerly so errors
    at the start of execution still become a proper HTTP status."""
    first = next(batches, None)

    def rest() -> Iterator[pa.RecordBatch]:
        try:
            if first is not None:
                telemetry.add_rows(format_name, first.num_rows)
                audit.add_rows(request, first.num_rows)
                yield first
            for batch in batches:
                telemetry.add_rows(format_name, batch.num_rows)
                audit.add_rows(request, batch.num_rows)
                yield batch
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # ends the DuckDB query or warm cursor now, not at GC

    return rest()


def _query(
    request: Request[Any, Any, Any], service: Service, params: dict[str, list[str]], shape: str
) -> DataQuery:
    """The request's query, under its key's principal, noted for the audit row."""
    query = build_query(
        params,
        service.settings.query,
        principal=principal_of(request),
        cursor_secret=service.engine.cursor_secret(),
        also_allowed=_API_ONLY,
    )
    audit.note_query(request, query, shape)
    return query


@get(
    "/data",
    sync_to_thread=True,
    dependencies=QUERY_DEPENDENCIES,
    summary="Time series rows",
    description=(
        "Rows for these participants, metrics and span, at the requested (or automatic) "
        "resolution. JSON pages carry `meta`; streaming formats carry it in X-Stratum-* "
        "headers and a Link rel=next header. Format by `format` or Accept."
    ),
)
def data(
    request: Request[Any, Any, Any], state: State, params: NamedDependency[dict[str, list[str]]]
) -> Response[Any]:
    service = _service(state)
    format_name = render.choose_format(_last(params.get("format")), request.headers.get("accept"))
    query = _query(request, service, params, format_name)
    if query.page_size == 0 and format_name not in render.STREAMING_FORMATS:
        raise InvalidParameter(
            "page_size",
            "page_size=0 (the whole answer) needs a streaming format: "
            f"{', '.join(render.STREAMING_FORMATS)}; JSON answers are paged",
        )
    answer = service.engine.run(query)
    meta = _meta(answer, query)
    next_url = _next_url(request, params, answer.next_cursor) if answer.next_cursor else None
    headers = _meta_headers(meta, next_url)
    media_type = render.MEDIA_TYPES[format_name]
    if format_name == "json":
        # Streamed too, a chunk of rows at a time: the page's memory reservation is held
        # until its last chunk is sent (or the request ends), and the text of a large page
        # never exists whole.
        service.telemetry.add_rows("json", answer.rows or 0)
        audit.add_rows(request, answer.rows or 0)
        chunks = _render_timed(render.json_chunks(answer.batches, meta), service.telemetry)
    else:
        batches = _counted(answer.batches, service.telemetry, format_name, request)
        chunks = render.stream(format_name, batches, answer.schema, query.metrics)
    # Starts making chunks now; the answer's memory counts until the last bytes have left.
    pump = bodies.register(request.scope, ChunkPump(chunks, on_close=answer.hold_reservation()))
    return Stream(pump.body(), media_type=media_type, headers=headers)


# -- /plan, /catalog ---------------------------------------------------------------------


@get(
    "/plan",
    sync_to_thread=True,
    dependencies=QUERY_DEPENDENCIES,
    summary="How /data would answer",
    description="Segments per store and tier, users, time ranges, lake files and estimated rows.",
)
def plan(
    request: Request[Any, Any, Any], state: State, params: NamedDependency[dict[str, list[str]]]
) -> dict[str, Any]:
    service = _service(state)
    return service.engine.plan(_query(request, service, params, "plan")).describe()


@get(
    "/catalog",
    sync_to_thread=True,
    summary="What can be asked",
    description="Metrics with units, participants, coverage per store, lake versions, last sync.",
)
def catalog(request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
    reject_unknown(request.query_params, ())
    principal = principal_of(request)
    service = _service(state)
    summary = service.engine.overview(principal)
    coverage, runs = summary.coverage, summary.last_runs
    return {
        "time_zones": _time_zones(service, principal),
        "metrics": [
            {
                "name": m.name,
                "unit": m.unit,
                "native_interval_s": m.native_interval_s,
                "rollup": m.rollup,
                "description": m.description,
            }
            for m in (METRICS[name] for name in metric_names())
            if principal.sees_metric(m.name)
        ],
        "users": None if coverage is None else [c["user_id"] for c in coverage],
        "coverage": coverage,
        "lake": {"versions": summary.lake_versions},
        "last_sync": (runs or {}).get("sync"),
        "last_runs": runs,
        "warm_store": summary.warm_store,
    }


def _time_zones(service: Service, principal: Principal) -> dict[str, Any]:
    """The default zone and the zone histories of the participants the key sees (None while
    the warm store is unreachable)."""
    try:
        histories = service.engine.zone_histories(None)
    except WarmStoreUnavailable:
        participants = None
    else:
        seen = {u: h for u, h in histories.items() if principal.sees_user(u)}
        participants = describe_histories(seen)
    return {"default": service.settings.query.default_tz, "participants": participants}


# -- /health, /ready, /metrics -----------------------------------------------------------


def _health(service: Service, ready: bool) -> Response[dict[str, Any]]:
    health = service.engine.health()
    body = {
        "status": "ok" if health.ok else "degraded",
        "warm_store": health.warm_store,
        "lake": health.lake,
        "lake_damaged": health.damaged,
    }
    if ready and not health.warm_store:
        return Response(body, status_code=503, headers=retry_after(WarmStoreUnavailable))
    return Response(body)


@get(
    "/health",
    sync_to_thread=True,
    exclude_from_auth=True,
    summary="Liveness; readiness with ?ready=1",
    description="200 while the process is alive; with ready=1, 503 when the warm store is down.",
)
def health(
    request: Request[Any, Any, Any],
    state: State,
    ready: Annotated[
        str | None, QueryParameter(description="1: answer 503 unless ready to serve.")
    ] = None,
) -> Response[dict[str, Any]]:
    reject_unknown(request.query_params, ("ready",))
    return _health(_service(state), ready not in (None, "", "0", "false"))


@get(
    "/ready",
    sync_to_thread=True,
    exclude_from_auth=True,
    summary="Readiness: 503 when the warm store is down",
)
def ready(request: Request[Any, Any, Any], state: State) -> Response[dict[str, Any]]:
    reject_unknown(request.query_params, ())
    return _health(_service(state), True)


@get(
    "/metrics",
    sync_to_thread=False,
    guards=[admin_only],
    summary="Prometheus metrics (admin keys)",
    media_type="text/plain",
)
def prometheus(request: Request[Any, Any, Any], state: State) -> Response[str]:
    reject_unknown(request.query_params, ())
    service = _service(state)
    text = service.telemetry.render(service.engine.budget.stats())
    # Litestar appends "; charset=utf-8" to text/* itself: naming it here declared it twice.
    return Response(text, media_type="text/plain; version=0.0.4")


# -- the app -----------------------------------------------------------------------------


# Swagger UI's files come from the swagger-ui-bundle-v2 package, served here: Litestar's
# default loads them from a CDN, and the page is blank without the internet.
SWAGGER_ASSETS = "/schema/assets"


def _swagger() -> SwaggerRenderPlugin:
    return SwaggerRenderPlugin(
        path="/swagger",
        js_url=f"{SWAGGER_ASSETS}/swagger-ui-bundle.js",
        css_url=f"{SWAGGER_ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{SWAGGER_ASSETS}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{SWAGGER_ASSETS}/favicon-32x32.png'>",
    )


def _schema_not_found(response: Response[Any]) -> Response[Any]:
    """Litestar answers an unknown /schema/* path (/schema/redoc) with an HTML page of its
    own: raising here sends it through the one error map instead."""
    if response.status_code == 404:
        raise NotFoundException()
    return response


def create_app(settings: Settings, database_url: str | None) -> Litestar:
    """One Engine for the app's lifetime; the catalog is loaded at startup so lake-only spans
    keep working if the warm store goes down later."""
    # Here too, not only in `stratum serve`: an app built another way (another ASGI server)
    # must not serve everything without keys beyond this machine either.
    require_auth_or_loopback(settings.access.auth, settings.server.host)
    service = Service(settings, database_url)

    async def load_catalog() -> None:
        await anyio.to_thread.run_sync(service.preload_catalog)

    async def close_engine() -> None:
        await anyio.to_thread.run_sync(service.close)

    swagger_assets = create_static_files_router(
        SWAGGER_ASSETS, directories=[swagger_ui_path], include_in_schema=False
    )
    app = Litestar(
        route_handlers=[
            data,
            plan,
            catalog,
            health,
            ready,
            prometheus,
            swagger_assets,
            *explorer.routes(),
        ],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        state=State({"service": service}),
        on_startup=[load_catalog],
        on_shutdown=[close_engine],
        middleware=[AUTHENTICATION, ADMISSION],
        openapi_config=OpenAPIConfig(
            title="stratum",
            version="0.1.0",
            description="Participant time series from a hybrid PostgreSQL + Delta Lake store.",
            path="/schema",
            openapi_router=Router(
                "/schema",
                route_handlers=[],
                include_in_schema=False,
                after_request=_schema_not_found,
            ),
            render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]), _swagger()],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
            security=[{"bearer": []}],
        ),
        logging_config=None,
    )
    # HEAD runs as GET underneath everything else. The access log sees the response as sent;
    # telemetry, outermost, counts 404s and errors raised before routing too.
    # Innermost: a body is closed as soon as the app is done with the request.
    app.asgi_handler = bodies.wrap(app.asgi_handler)
    app.asgi_handler = answer_head(app.asgi_handler)
    app.asgi_handler = audit.wrap(app.asgi_handler, service.record_audit)
    app.asgi_handler = hosts.wrap(app.asgi_handler, served_hosts(settings.server))
    app.asgi_handler = service.telemetry.wrap(app.asgi_handler)
    return app
