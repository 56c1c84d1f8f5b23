"""/data's downsample=m4 option over HTTP: said in meta and headers, applied to raw only."""

from __future__ import annotations

from litestar.testing import TestClient

SPAN = {"user_id": "1", "metric": "heart_rate", "start": "2024-01-01", "end": "2024-01-03"}


def test_m4_answer_is_marked_and_smaller(client: TestClient) -> None:
    raw = client.get("/data", params={**SPAN, "resolution": "raw", "page_size": "50000"})
    m4 = client.get(
        "/data",
        params={**SPAN, "resolution": "raw", "downsample": "m4", "width": "100"},
    )
    assert raw.status_code == m4.status_code == 200, m4.text
    assert raw.json()["meta"]["downsample"] is None
    assert m4.json()["meta"]["downsample"] == "m4"
    assert 100 <= m4.json()["meta"]["rows"] <= 400 < raw.json()["meta"]["rows"]
    streamed = client.get(
        "/data",
        params={**SPAN, "resolution": "raw", "downsample": "m4", "width": "100", "format": "csv"},
    )
    assert streamed.headers["X-Stratum-Downsample"] == "m4"
    assert len(streamed.text.splitlines()) == m4.json()["meta"]["rows"] + 1


def test_m4_with_auto_applies_only_when_auto_answers_raw(client: TestClient) -> None:
    daily = client.get("/data", params={**SPAN, "downsample": "m4", "width": "100"})
    assert daily.json()["meta"]["resolution"] != "raw"
    assert daily.json()["meta"]["downsample"] is None
    assert "X-Stratum-Downsample" not in daily.headers


def test_m4_without_width_is_a_400_naming_width(client: TestClient) -> None:
    response = client.get("/data", params={**SPAN, "downsample": "m4"})
    assert response.status_code == 400
    assert response.json()["error"]["parameter"] == "width"
