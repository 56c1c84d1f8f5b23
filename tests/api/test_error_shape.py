"""Every error leaves in one shape, {"error": {"code", "message", "parameter"}}, with an
exact status (datasette's test_error_shape): bad input 400, busy or down 503 + Retry-After,
Litestar's own 404/405 mapped in, and anything unexpected 500 with a generic message."""

from __future__ import annotations

import ast
import logging
import socket
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from litestar.exceptions import NotFoundException, ValidationException
from litestar.testing import TestClient

from api.app import create_app
from api.errors import INTERNAL_MESSAGE, to_http
from engine.access import LOCAL_ADMIN
from engine.errors import (
    BudgetExhausted,
    ClientBusy,
    ConfigurationError,
    Forbidden,
    IngestRejected,
    InvalidParameter,
    KeyBusy,
    LakeDamaged,
    SyncFailed,
    Unauthenticated,
    WarmStoreBusy,
    WarmStoreUnavailable,
)
from engine.query import Key, build_query
from engine.registry import metric_names
from tests.api.conftest import MAX_PAGE_SIZE, MAX_USERS, admin_client, api_settings, service
from tests.engine.test_hostile_input import GOOD, HOSTILE

OK = {"user_id": "1", "metric": "heart_rate", "start": "2024-01-01", "end": "2024-01-02"}


def _other_query_cursor() -> str:
    """A well-formed cursor of a different query (steps instead of heart_rate)."""
    settings = api_settings(Path("/nonexistent"))
    other = build_query(
        {**{k: [v] for k, v in OK.items()}, "metric": ["steps"]},
        settings.query,
        principal=LOCAL_ADMIN,
    )
    return other.cursor_after(Key(1, "steps", 1_704_067_200_000_000))


def without(name: str) -> dict[str, str]:
    return {k: v for k, v in OK.items() if k != name}


# (case id, params, expected parameter, words the message must contain)
BAD_REQUESTS: list[tuple[str, dict[str, str], str, list[str]]] = [
    ("unknown metric", {**OK, "metric": "pulse"}, "metric", ["pulse", *metric_names()]),
    ("start equals end", {**OK, "end": "2024-01-01"}, "end", ["after start"]),
    ("start after end", {**OK, "start": "2024-02-01"}, "end", ["after start"]),
    (
        "too many users",
        {**OK, "user_id": ",".join(map(str, range(MAX_USERS + 1)))},
        "user_id",
        [f"at most {MAX_USERS}"],
    ),
    (
        "page_size over the maximum",
        {**OK, "page_size": str(MAX_PAGE_SIZE + 1)},
        "page_size",
        [str(MAX_PAGE_SIZE)],
    ),
    ("page_size not a number", {**OK, "page_size": "ten"}, "page_size", ["integer"]),
    ("page_size 0 with json", {**OK, "page_size": "0"}, "page_size", ["streaming", "ndjson"]),
    (
        "page_size 0 with explicit json",
        {**OK, "page_size": "0", "format": "json"},
        "page_size",
        ["streaming"],
    ),
    ("page_number 0", {**OK, "page_number": "0"}, "page_number", ["1.."]),
    ("malformed cursor", {**OK, "cursor": "not-a-cursor!"}, "cursor", ["malformed"]),
    (
        "cursor from another query",
        {**OK, "cursor": _other_query_cursor()},
        "cursor",
        ["different query"],
    ),
    (
        "cursor and page_number",
        {**OK, "cursor": _other_query_cursor(), "page_number": "2"},
        "cursor",
        ["either"],
    ),
    ("unknown format", {**OK, "format": "xml"}, "format", ["xml", "json", "parquet"]),
    ("bad resolution", {**OK, "resolution": "5m"}, "resolution", ["5m", "raw", "1h"]),
    ("bad start date", {**OK, "start": "2024-13-01"}, "start", ["ISO 8601"]),
    ("bad end date", {**OK, "end": "yesterday"}, "end", ["ISO 8601"]),
    # What the server receives for an unescaped '+01:00' offset.
    (
        "offset '+' sent unescaped",
        {**OK, "start": "2024-01-01T00:00:00 01:00"},
        "start",
        ["'2024-01-01T00:00:00 01:00'", "write the offset's '+' as %2B"],
    ),
    ("bad user id", {**OK, "user_id": "alice"}, "user_id", ["integer"]),
    ("bad max_points", {**OK, "max_points": "0"}, "max_points", ["out of range"]),
    ("missing user_id", without("user_id"), "user_id", ["required"]),
    ("missing metric", without("metric"), "metric", ["required", "heart_rate"]),
    ("missing start", without("start"), "start", ["required"]),
    ("missing end", without("end"), "end", ["required"]),
    (
        "unknown parameter",
        {**OK, "page": "2"},
        "page",
        ["'page'", "did you mean page_size or page_number?", "user_id", "start_date", "format"],
    ),
    (
        "start and start_date",
        {**OK, "start_date": "2024-01-01"},
        "start_date",
        ["start and start_date"],
    ),
    ("end and end_date", {**OK, "end_date": "2024-01-01"}, "end_date", ["end and end_date"]),
    (
        "end_date with a time",
        {**without("end"), "end_date": "2024-01-02T00:00:00Z"},
        "end_date",
        ["is a date-time", "takes a date (YYYY-MM-DD)", "use end"],
    ),
    (
        "start_date not a date",
        {**without("start"), "start_date": "soon"},
        "start_date",
        ["not a date", "takes a date"],
    ),
    (
        "end_date before start_date",
        {
            "user_id": "1",
            "metric": "heart_rate",
            "start_date": "2024-01-03",
            "end_date": "2024-01-02",
        },
        "end_date",
        ["on or after start_date"],
    ),
]


def assert_error_shape(response: Any, status: int, code: str, parameter: str | None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "parameter"}
    assert error["code"] == code
    assert error["parameter"] == parameter
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


@pytest.mark.parametrize(
    ("params", "parameter", "words"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_error_shape_400(
    client: TestClient, params: dict[str, str], parameter: str, words: list[str]
) -> None:
    for path in ("/data", "/plan"):
        if path == "/plan" and (parameter == "format" or params.get("page_size") == "0"):
            continue  # /plan has no format, so the whole answer (page_size=0) is fine there
        error = assert_error_shape(
            client.get(path, params=params), 400, "invalid_parameter", parameter
        )
        for word in words:
            assert word in error["message"], (word, error["message"])


def _hostile_params(changes: dict[str, list[str]]) -> dict[str, str]:
    params = {**{k: v[-1] for k, v in GOOD.items()}, **{k: v[-1] for k, v in changes.items() if v}}
    return {k: v for k, v in params.items() if changes.get(k, [None])}


@pytest.mark.parametrize(
    ("changes", "parameter"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_values_are_a_400_naming_the_parameter(
    client: TestClient, changes: dict[str, list[str]], parameter: str
) -> None:
    """Year 1 and 9999, forged cursors (huge numbers, NUL, lone surrogates, deep nesting):
    each was a 500 (OverflowError, RecursionError, a driver's DataError)."""
    params = _hostile_params(changes)
    for path in ("/data", "/plan"):
        assert_error_shape(client.get(path, params=params), 400, "invalid_parameter", parameter)


def test_an_unescaped_plus_in_an_offset_gets_the_hint(client: TestClient) -> None:
    url = "/data?user_id=1&metric=heart_rate&start=2024-01-01T00:00:00+01:00&end=2024-01-02"
    error = assert_error_shape(client.get(url), 400, "invalid_parameter", "start")
    assert "%2B" in error["message"]
    escaped = url.replace("+", "%2B")
    assert client.get(escaped).status_code == 200


@pytest.mark.parametrize(
    ("path", "params", "valid"),
    [
        ("/health", {"ready": "1", "verbose": "1"}, "valid: ready"),
        ("/catalog", {"user_id": "1"}, "takes no parameters"),
        ("/ready", {"x": "1"}, "takes no parameters"),
        ("/metrics", {"x": "1"}, "takes no parameters"),
    ],
)
def test_unknown_parameters_of_the_other_endpoints(
    client: TestClient, path: str, params: dict[str, str], valid: str
) -> None:
    unknown = [name for name in params if name != "ready"][0]
    error = assert_error_shape(client.get(path, params=params), 400, "invalid_parameter", unknown)
    assert f"unknown parameter {unknown!r}" in error["message"] and valid in error["message"]


def test_error_shape_404_and_405(client: TestClient) -> None:
    assert_error_shape(client.get("/no/such/route"), 404, "not_found", None)
    response = client.post("/data", json={})
    assert_error_shape(response, 405, "method_not_allowed", None)
    assert "GET" in response.headers["allow"]


def test_error_shape_500_is_generic_and_logged(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(query: Any) -> Any:
        raise RuntimeError("secret internals: password=hunter2")

    monkeypatch.setattr(service(client.app).engine, "run", explode)
    with caplog.at_level(logging.ERROR, logger="api.errors"):
        response = client.get("/data", params=OK)
    error = assert_error_shape(response, 500, "internal_error", None)
    assert error["message"] == INTERNAL_MESSAGE
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert any(r.exc_info and "hunter2" in str(r.exc_info[1]) for r in caplog.records)


def test_error_shape_503_when_the_budget_is_full(cohort_url: str, tmp_path: Path) -> None:
    app = create_app(api_settings(tmp_path), cohort_url)
    with admin_client(app, cohort_url) as test_client:
        budget = service(app).engine.budget
        budget.wait_s = 0.05
        # Other queries hold all of it: a large one, and a small one in the small queries' lane.
        held = budget.reserve(budget.largest_bytes) + budget.reserve(budget.lane_bytes)
        try:
            for extra in ({}, {"format": "parquet", "page_size": "0"}):
                response = test_client.get("/data", params={**OK, **extra})
                assert_error_shape(response, 503, "budget_exhausted", None)
                assert int(response.headers["retry-after"]) >= 1
        finally:
            budget.release(held)
        assert test_client.get("/data", params=OK).status_code == 200
        assert budget.stats()["refused"] == 2 and budget.in_use == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def down_client(tmp_path: Path) -> Iterator[TestClient]:
    """An app whose warm store refuses connections (nothing listens on the port)."""
    url = f"postgresql://stratum@127.0.0.1:{_closed_port()}/stratum"
    # Keys live in the warm store: with it down from the start none can be checked (a 503,
    # tests/api/test_access.py). These tests are about the outage, so auth is off.
    settings = api_settings(tmp_path, STRATUM_AUTH="off")
    with TestClient(create_app(settings, url)) as test_client:
        yield test_client


def test_error_shape_503_when_the_warm_store_is_down(down_client: TestClient) -> None:
    response = down_client.get("/data", params=OK)
    error = assert_error_shape(response, 503, "warm_store_unavailable", None)
    assert "warm store" in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["retry-after"] == str(WarmStoreUnavailable.retry_after_s)
    health = down_client.get("/health")
    assert health.status_code == 200
    assert health.json() == {
        "status": "degraded",
        "warm_store": False,
        "lake": True,
        "lake_damaged": [],
    }
    for path in ("/ready", "/health?ready=1"):
        ready = down_client.get(path)
        assert ready.status_code == 503 and ready.json()["warm_store"] is False
        assert "retry-after" in ready.headers
        assert ready.headers["retry-after"] == response.headers["retry-after"]
    catalog = down_client.get("/catalog")
    assert catalog.status_code == 200 and catalog.json()["warm_store"] is False


@pytest.mark.parametrize(
    ("exc", "status", "code", "parameter", "retry_after"),
    [
        (InvalidParameter("metric", "no"), 400, "invalid_parameter", "metric", None),
        (IngestRejected("a.csv", 3, "bad"), 400, "ingest_rejected", "file", None),
        (BudgetExhausted("full"), 503, "budget_exhausted", None, "2"),
        (WarmStoreUnavailable("down"), 503, "warm_store_unavailable", None, "10"),
        (WarmStoreBusy("busy"), 503, "warm_store_unavailable", None, "2"),
        (SyncFailed("lock held"), 503, "sync_failed", None, "30"),
        (KeyBusy("4 running"), 429, "key_busy", None, "1"),
        (ClientBusy("16 running"), 429, "client_busy", None, "1"),
        (Unauthenticated("no key"), 401, "unauthenticated", None, None),
        (Forbidden("outside", parameter="user_id"), 403, "forbidden", "user_id", None),
        (
            LakeDamaged("raw", [(1, date(2024, 1, 10), date(2024, 1, 10))]),
            503,
            "lake_damaged",
            None,
            "300",
        ),
        (
            ConfigurationError("STRATUM_X=1", parameter="STRATUM_X"),
            500,
            "configuration_error",
            None,
            None,
        ),
        (NotFoundException(), 404, "not_found", None, None),
        (
            ValidationException(
                detail="Validation failed", extra=[{"key": "ready", "message": "Expected `bool`"}]
            ),
            400,
            "invalid_parameter",
            "ready",
            None,
        ),
        (KeyError("internals"), 500, "internal_error", None, None),
    ],
)
def test_the_one_exception_map(
    exc: Exception, status: int, code: str, parameter: str | None, retry_after: str | None
) -> None:
    error = to_http(exc)
    assert (error.status, error.code, error.parameter) == (status, code, parameter)
    assert (error.headers or {}).get("Retry-After") == retry_after
    assert (error.headers or {}).get("WWW-Authenticate") == ("Bearer" if status == 401 else None)
    assert set(error.body()["error"]) == {"code", "message", "parameter"}
    if status == 500:
        assert "internals" not in error.message and "STRATUM_X" not in error.message


def test_only_the_error_classes_decide_a_retry_after() -> None:
    """The wait lives on each Unavailable class; api/errors.py alone turns it into a header,
    so no raise site, handler or job picks its own number."""
    root = Path(__file__).resolve().parents[2]
    deciders = []
    for package in ("engine", "lake", "sync", "api"):
        for path in sorted((root / package).rglob("*.py")):
            where = str(path.relative_to(root))
            for node in ast.walk(ast.parse(path.read_text())):
                header = isinstance(node, ast.Constant) and str(node.value).lower() == "retry-after"
                if header and where != "api/errors.py":
                    deciders.append(f"{where}:{node.lineno}")  # type: ignore[attr-defined]
                named = isinstance(node, ast.Name) and node.id == "retry_after_s"
                keyword = isinstance(node, ast.keyword) and node.arg == "retry_after_s"
                if (named or keyword) and where != "engine/errors.py":
                    deciders.append(f"{where}:{node.lineno}")  # type: ignore[attr-defined]
    assert deciders == []
