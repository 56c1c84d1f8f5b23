"""/plan, /catalog, /health, /ready, /metrics and /schema respond with what they promise."""

from __future__ import annotations

import re

from litestar.testing import TestClient

from engine.query import QUERY_PARAMETERS
from engine.registry import METRICS
from tests.api.conftest import DAYS, USERS

SPAN = {"user_id": "1,2", "metric": "heart_rate", "start": "2024-01-01", "end": "2024-01-03"}


def test_plan_describes_segments(client: TestClient) -> None:
    response = client.get("/plan", params={**SPAN, "resolution": "1h"})
    assert response.status_code == 200
    plan = response.json()
    assert plan["resolution"] == "1h" and plan["sources"] == ["warm"]
    assert plan["query"]["users"] == [1, 2] and plan["query"]["metrics"] == ["heart_rate"]
    (segment,) = plan["segments"]
    assert segment["backend"] == "warm" and segment["source"] == "data_1h"
    assert {"users", "start", "end", "files", "estimated_rows", "lake_version"} <= set(segment)
    # Where planning's time went (issue 13): the catalog load and the planner, in ms.
    timings = plan["timings"]
    assert {"catalog", "plan"} <= set(timings["ms"]) and timings["counts"]["warm_statements"] >= 1


def test_catalog_lists_metrics_users_and_coverage(client: TestClient) -> None:
    response = client.get("/catalog")
    assert response.status_code == 200
    catalog = response.json()
    assert {m["name"]: m["unit"] for m in catalog["metrics"]} == {
        name: metric.unit for name, metric in METRICS.items()
    }
    assert catalog["warm_store"] is True
    assert catalog["users"] == list(range(1, USERS + 1))
    first = catalog["coverage"][0]
    assert first["warm"] == {"first_day": "2024-01-01", "last_day": "2024-01-02", "days": DAYS}
    assert first["lake"] == {} and first["lake_watermark"] is None
    assert set(catalog["lake"]["versions"]) == {"raw", "agg_1m", "agg_1h", "agg_1d"}
    assert "last_sync" in catalog and "last_runs" in catalog


def test_health_and_ready(client: TestClient) -> None:
    for path in ("/health", "/health?ready=1", "/ready"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json() == {
            "status": "ok",
            "warm_store": True,
            "lake": True,
            "lake_damaged": [],
        }


def test_metrics_in_prometheus_text(client: TestClient) -> None:
    client.get("/data", params={**SPAN, "resolution": "1h", "page_size": "5"})
    csv = client.get(
        "/data", params={**SPAN, "resolution": "1h", "format": "csv", "page_size": "0"}
    )
    csv_rows = len(csv.text.splitlines()) - 1  # the header
    client.get("/data", params={**SPAN, "metric": "pulse"})
    client.get("/nowhere")
    response = client.get("/metrics")
    assert response.status_code == 200
    # Prometheus' text exposition format, charset declared once.
    assert response.headers.get_list("content-type") == ["text/plain; version=0.0.4; charset=utf-8"]
    text = response.text

    def value(pattern: str) -> float:
        match = re.search("^" + re.escape(pattern) + r" (\S+)$", text, re.MULTILINE)
        assert match, pattern
        return float(match.group(1))

    assert value('stratum_http_requests_total{route="/data",method="GET",status="200"}') >= 2
    assert value('stratum_http_requests_total{route="/data",method="GET",status="400"}') >= 1
    assert value('stratum_http_requests_total{route="unmatched",method="GET",status="404"}') >= 1
    count = value('stratum_http_request_duration_seconds_count{route="/data",method="GET"}')
    inf = value(
        'stratum_http_request_duration_seconds_bucket{route="/data",method="GET",le="+Inf"}'
    )
    assert count == inf >= 3
    assert value('stratum_rows_served_total{format="json"}') >= 5
    assert value('stratum_rows_served_total{format="csv"}') >= csv_rows > 0
    assert value('stratum_render_seconds_total{format="json"}') > 0
    assert value('stratum_bytes_served_total{route="/data"}') > 0
    assert value("stratum_memory_budget_bytes") > 0
    assert value("stratum_memory_in_use_bytes") == 0  # every stream has released its share
    assert value("stratum_memory_peak_bytes") > 0
    assert "# TYPE stratum_http_request_duration_seconds histogram" in text


def test_openapi_schema_documents_data_parameters_with_examples(client: TestClient) -> None:
    for path in ("/schema", "/schema/openapi.json"):
        response = client.get(path)
        assert response.status_code == 200
    spec = client.get("/schema/openapi.json").json()
    assert {"/data", "/plan", "/catalog", "/health", "/ready", "/metrics"} <= set(spec["paths"])
    expected = {
        "user_id",
        "metric",
        "start",
        "end",
        "start_date",
        "end_date",
        "resolution",
        "max_points",
        "page_size",
        "page_number",
        "cursor",
        "downsample",
        "width",
        "tz",
        "format",
    }
    # What is documented is exactly what the engine (and the API's format) accepts.
    assert expected == {*QUERY_PARAMETERS, "format"}
    for path in ("/data", "/plan"):
        parameters = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        assert expected == set(parameters)
        for name in expected - {"cursor"}:
            assert parameters[name].get("examples"), name
            assert parameters[name].get("description"), name
    assert "inclusive" in parameters["end_date"]["description"]


def test_swagger_ui_is_served_from_the_package_not_a_cdn(client: TestClient) -> None:
    page = client.get("/schema/swagger")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "://" not in page.text  # no asset (nor anything else) from another host
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    kinds = {"js": "javascript", "css": "text/css", "png": "image/png"}
    assert sorted(a.rsplit(".", 1)[1] for a in assets) == ["css", "js", "js", "png"]
    for asset in assets:
        assert asset.startswith("/schema/assets/"), asset
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert kinds[asset.rsplit(".", 1)[1]] in response.headers["content-type"], asset
        assert len(response.content) > 0
    assert "/schema/assets" not in client.get("/schema/openapi.json").json()["paths"]
