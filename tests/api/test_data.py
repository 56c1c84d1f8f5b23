"""GET /data over a real warm store: every format round-trips, Accept negotiation, paging."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from litestar.exceptions import LitestarException
from litestar.testing import TestClient

from tests.api.conftest import USERS

BASE = {
    "user_id": "1,2,3",
    "metric": "heart_rate,steps",
    "start": "2024-01-01",
    "end": "2024-01-03",
}
RAW_KEYS = ["user_id", "metric", "ts", "value"]
ROLLUP_KEYS = ["user_id", "metric", "ts", "count", "sum", "min", "max", "avg"]


def get(client: TestClient, headers: dict[str, str] | None = None, **params: str) -> Any:
    response = client.get("/data", params={**BASE, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response


def _iso(value: datetime) -> str:
    text = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return text


def normalise(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows as comparable tuples: numbers as float, ts as ISO text with Z."""
    out = []
    for row in rows:
        values = []
        for key, value in row.items():
            if key == "ts":
                values.append(_iso(value) if isinstance(value, datetime) else value)
            elif key == "metric":
                values.append(value)
            else:
                values.append(float(value))
        out.append(tuple(values))
    return out


def parse(format_name: str, body: bytes) -> list[dict[str, Any]]:
    if format_name == "json":
        return list(json.loads(body)["data"])
    if format_name == "ndjson":
        return [json.loads(line) for line in body.decode().splitlines()]
    if format_name == "csv":
        return list(csv.DictReader(io.StringIO(body.decode())))
    if format_name == "arrow":
        return list(ipc.open_stream(body).read_all().to_pylist())
    if format_name == "parquet":
        return list(pq.read_table(io.BytesIO(body)).to_pylist())
    raise AssertionError(format_name)


@pytest.mark.parametrize("resolution", ["raw", "1h"])
@pytest.mark.parametrize("format_name", ["ndjson", "csv", "arrow", "parquet"])
def test_every_format_round_trips_to_the_json_rows(
    client: TestClient, format_name: str, resolution: str
) -> None:
    expected = get(client, resolution=resolution, page_size="50000").json()
    assert not expected["meta"]["has_more"]
    rows = expected["data"]
    assert rows and list(rows[0]) == (RAW_KEYS if resolution == "raw" else ROLLUP_KEYS)
    assert all(r["ts"].endswith("Z") and "T" in r["ts"] for r in rows)
    for page_size in ("50000", "0"):  # a page, and the whole answer streamed
        body = get(client, resolution=resolution, page_size=page_size, format=format_name)
        got = parse(format_name, body.content)
        assert list(got[0]) == list(rows[0])
        assert normalise(got) == normalise(rows)


def test_json_shape_and_meta(client: TestClient) -> None:
    body = get(client, resolution="1h", page_size="10").json()
    assert set(body) == {"data", "meta"}
    meta = body["meta"]
    assert {"resolution", "page_number", "page_size", "has_more", "next", "sources"} <= set(meta)
    assert meta["resolution"] == "1h" and meta["page_number"] == 1 and meta["page_size"] == 10
    assert meta["has_more"] is True and isinstance(meta["next"], str)
    assert meta["sources"] == ["warm"]
    first = body["data"][0]
    assert first["user_id"] == 1 and first["metric"] == "heart_rate"
    assert first["ts"] == "2024-01-01T00:00:00Z"
    assert first["avg"] == pytest.approx(first["sum"] / first["count"])
    last = get(client, resolution="1d", page_size="1000").json()["meta"]
    assert last["has_more"] is False and last["next"] is None
    assert (
        len(get(client, resolution="1d").json()["data"]) == USERS * 2 * 2
    )  # users x metrics x days


def test_auto_resolution_and_single_user_forms(client: TestClient) -> None:
    repeated = client.get(
        "/data?user_id=1&user_id=2&metric=steps&start=2024-01-01&end=2024-01-02&resolution=1h"
    ).json()
    comma = client.get(
        "/data?user_id=1,2&metric=steps&start=2024-01-01&end=2024-01-02&resolution=1h"
    ).json()
    assert repeated == comma and {r["user_id"] for r in comma["data"]} == {1, 2}
    auto = get(client, max_points="10").json()["meta"]
    assert auto["resolution"] == "1d"


@pytest.mark.parametrize(
    ("accept", "format_name", "media_type"),
    [
        (None, "json", "application/json"),
        ("*/*", "json", "application/json"),
        ("application/json", "json", "application/json"),
        ("application/x-ndjson", "ndjson", "application/x-ndjson"),
        ("text/csv", "csv", "text/csv"),
        ("application/vnd.apache.arrow.stream", "arrow", "application/vnd.apache.arrow.stream"),
        ("application/vnd.apache.parquet", "parquet", "application/vnd.apache.parquet"),
        (
            "text/csv;q=0.4, application/vnd.apache.parquet;q=0.9",
            "parquet",
            "application/vnd.apache.parquet",
        ),
        ("text/html, */*;q=0.1", "json", "application/json"),
        ("image/png", "json", "application/json"),
    ],
)
def test_accept_negotiation(
    client: TestClient, accept: str | None, format_name: str, media_type: str
) -> None:
    headers = {"Accept": accept} if accept else None
    response = get(client, headers=headers, resolution="1h", page_size="100")
    assert response.headers["content-type"].split(";")[0] == media_type
    assert len(parse(format_name, response.content)) == 100


def test_explicit_format_wins_over_accept(client: TestClient) -> None:
    response = get(client, headers={"Accept": "text/csv"}, resolution="1h", format="ndjson")
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert json.loads(response.text.splitlines()[0])["user_id"] == 1


def test_streaming_meta_headers(client: TestClient) -> None:
    response = get(client, resolution="1h", page_size="7", format="csv")
    headers = response.headers
    assert headers["x-stratum-resolution"] == "1h"
    assert headers["x-stratum-has-more"] == "true"
    assert headers["x-stratum-sources"] == "warm"
    cursor = headers["x-stratum-next"]
    link = headers["link"]
    assert link.endswith('>; rel="next"') and f"cursor={cursor}" in link
    whole = get(client, resolution="1h", page_size="0", format="csv").headers
    assert whole["x-stratum-has-more"] == "false" and "x-stratum-next" not in whole


@pytest.mark.parametrize("resolution", ["raw", "1m", "1d"])
def test_pages_and_cursor_walks_concatenate_to_the_whole_stream(
    client: TestClient, resolution: str
) -> None:
    whole = parse(
        "ndjson", get(client, resolution=resolution, page_size="0", format="ndjson").content
    )
    assert whole
    size = str(max(1, len(whole) // 5 + 3))
    by_number: list[dict[str, Any]] = []
    page = 1
    while True:
        body = get(client, resolution=resolution, page_size=size, page_number=str(page)).json()
        by_number += body["data"]
        if not body["meta"]["has_more"]:
            break
        page += 1
    assert by_number == whole
    by_cursor: list[dict[str, Any]] = []
    extra: dict[str, str] = {}
    while True:
        body = get(client, resolution=resolution, page_size=size, **extra).json()
        by_cursor += body["data"]
        if body["meta"]["next"] is None:
            break
        extra = {"cursor": body["meta"]["next"]}
    assert by_cursor == whole


def test_link_header_walk_in_parquet(client: TestClient) -> None:
    whole = parse("parquet", get(client, resolution="1h", page_size="0", format="parquet").content)
    rows: list[dict[str, Any]] = []
    response = get(client, resolution="1h", page_size="40", format="parquet")
    while True:
        rows += parse("parquet", response.content)
        if "link" not in response.headers:
            break
        next_url = response.headers["link"].split(">")[0].lstrip("<")
        query = {k: v[-1] for k, v in parse_qs(urlsplit(next_url).query).items()}
        response = client.get("/data", params=query)
        assert response.status_code == 200
    assert rows == whole


def test_empty_answer_in_every_format(client: TestClient) -> None:
    span = {"start": "2030-01-01", "end": "2030-01-02", "resolution": "1h"}
    assert get(client, **span).json()["data"] == []
    for format_name in ("ndjson", "csv", "arrow", "parquet"):
        body = get(client, format=format_name, page_size="0", **span).content
        assert parse(format_name, body) == []
    schema = ipc.open_stream(get(client, format="arrow", **span).content).schema
    assert schema.field("ts").type == pa.timestamp("us", tz="UTC")


def test_streams_render_in_slices_and_still_round_trip(client: TestClient) -> None:
    from api import render
    from engine.access import LOCAL_ADMIN
    from engine.query import build_query

    expected = get(client, resolution="1m", page_size="50000").json()["data"]
    assert len(expected) > 10 * 97
    engine = client.app.state.service.engine
    params = {**BASE, "resolution": "1m", "page_size": "0"}
    query = build_query(
        {k: [v] for k, v in params.items()}, engine.settings.query, principal=LOCAL_ADMIN
    )

    def rendered(format_name: str) -> bytes:
        answer = engine.run(query)
        chunks = render.stream(format_name, answer.batches, answer.schema, query.metrics, 97)
        return b"".join(chunks)

    for format_name in render.STREAMING_FORMATS:
        body = rendered(format_name)
        assert normalise(parse(format_name, body)) == normalise(expected), format_name
    parquet = rendered("parquet")
    metadata = pq.ParquetFile(io.BytesIO(parquet)).metadata
    assert metadata.num_row_groups == -(-len(expected) // 97)


def test_a_failure_mid_stream_aborts_the_response(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once headers are sent a failure cannot become a status: the response must break,
    never end cleanly with rows missing."""
    from api.app import Service
    from engine.run import Answer

    engine = client.app.state.service.engine
    real_run = engine.run

    def failing_run(query: Any) -> Answer:
        answer = real_run(query)
        original = answer.batches

        def batches() -> Any:
            yield from original
            raise RuntimeError("warm store connection lost")

        answer.batches = batches()
        return answer

    assert isinstance(client.app.state.service, Service)
    monkeypatch.setattr(engine, "run", failing_run)
    # Litestar re-raises to the server, which drops the connection (uvicorn: no final chunk).
    with pytest.raises(LitestarException, match="after response started") as raised:
        client.get(
            "/data", params={**BASE, "resolution": "1h", "page_size": "0", "format": "ndjson"}
        )
    causes, cause = [], raised.value.__cause__
    while cause is not None:  # each middleware layer (authentication) re-wraps it
        causes.append(repr(cause))
        cause = cause.__cause__
    assert any("connection lost" in text for text in causes), causes


def test_start_date_and_end_date_take_days_with_end_date_inclusive(client: TestClient) -> None:
    # A dashboard written for the original /data sends the last day it wants as end_date.
    dated = {
        "user_id": "1,2,3",
        "metric": "heart_rate,steps",
        "start_date": "2024-01-01",
        "end_date": "2024-01-02",
        "page_size": "50000",
        "resolution": "raw",
    }
    response = client.get("/data", params=dated)
    assert response.status_code == 200, response.text
    rows = response.json()["data"]
    whole = get(client, page_size="50000", resolution="raw").json()["data"]  # end=2024-01-03
    assert rows == whole
    last_of_jan_2 = max(row["ts"] for row in rows)
    assert last_of_jan_2.startswith("2024-01-02T23:59")  # every minute of Jan 2 is in
    plan = client.get("/plan", params=dated).json()
    assert plan["query"]["end"] == "2024-01-03T00:00:00+00:00"
    # The cursor of a dated page walks the same answer as one given start/end.
    page = client.get("/data", params={**dated, "page_size": "10"})
    assert page.json()["meta"]["next"] and "end_date=2024-01-02" in page.headers["link"]
    second = client.get(page.headers["link"].split(">")[0].lstrip("<"))
    assert second.json()["data"] == rows[10:20]
