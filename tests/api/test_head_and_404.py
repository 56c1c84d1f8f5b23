"""HEAD answers every GET route with the GET's status and headers and no body; every 404,
/schema/* included, has the one error shape."""

from __future__ import annotations

from litestar.handlers import HTTPRouteHandler
from litestar.testing import TestClient

from tests.api.conftest import service
from tests.api.test_error_shape import OK, assert_error_shape

# Bodies that measure the request itself, so their length differs between two calls:
# /metrics counts the requests, /plan carries stage timings ("0.12" vs "0.123" ms).
MEASURING_BODIES = {"/metrics", "/plan"}

SAMPLE_PATHS = {"/schema/assets/{file_path:path}": "/schema/assets/swagger-ui.css"}


def get_paths(client: TestClient) -> list[str]:
    """Every GET route of the app, with a concrete path."""
    paths = []
    for route in client.app.routes:
        handlers = getattr(route, "route_handlers", [])
        if any("GET" in h.http_methods for h in handlers if isinstance(h, HTTPRouteHandler)):
            path = SAMPLE_PATHS.get(route.path, route.path.replace("{path:str}", "nope"))
            paths.append(path)
    return sorted(set(paths))


def test_head_on_every_get_route(client: TestClient) -> None:
    paths = get_paths(client)
    assert {"/data", "/plan", "/catalog", "/health", "/ready", "/metrics", "/schema"} <= set(paths)
    for path in paths:
        params = OK if path in ("/data", "/plan") else None
        got = client.get(path, params=params)
        head = client.head(path, params=params)
        assert head.status_code == got.status_code, (path, head.status_code, got.status_code)
        assert head.content == b"", path
        assert head.headers.get("content-type") == got.headers.get("content-type"), path
        if path in MEASURING_BODIES:
            assert head.headers.get("content-length"), path
        else:
            assert head.headers.get("content-length") == got.headers.get("content-length"), path


def test_head_of_a_stream_releases_its_reservation(client: TestClient) -> None:
    budget = service(client.app).engine.budget
    head = client.head("/data", params={**OK, "format": "ndjson", "page_size": "0"})
    assert head.status_code == 200 and head.content == b""
    assert head.headers["x-stratum-resolution"]
    assert budget.in_use == 0


def test_every_404_has_the_error_shape(client: TestClient) -> None:
    for path in ("/nope", "/schema/redoc", "/schema/elements", "/schema/nope", "/data/x"):
        assert_error_shape(client.get(path), 404, "not_found", None)
        assert client.head(path).status_code == 404
