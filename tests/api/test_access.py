"""Keys at the HTTP API: 401 without a live key, 403 outside its scope (the same words whether
the participant exists or not), /catalog and /plan show only the key's scope, /metrics needs
an admin key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from api.app import create_app
from sync.access import create_cohort, revoke_key
from tests.api.conftest import api_settings, keyed, new_key

OK = {"user_id": "1", "metric": "heart_rate", "start": "2024-01-01", "end": "2024-01-02"}
ENDPOINTS = ["/data", "/plan", "/catalog", "/metrics"]


@pytest.fixture(scope="module")
def app_client(cohort_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(api_settings(tmp_path_factory.mktemp("access")), cohort_url)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def scoped_key(cohort_url: str) -> str:
    """Participants 1 and 2 (of 1..3 in the store), heart rate only."""
    create_cohort(cohort_url, "first_two", [1, 2])
    return new_key(cohort_url, cohorts=("first_two",), metrics=["heart_rate"])


def params_for(path: str) -> dict[str, str]:
    return OK if path in ("/data", "/plan") else {}


def assert_401(response: object) -> None:
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert response.headers["www-authenticate"] == "Bearer"  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and body["error"]["code"] == "unauthenticated"
    assert set(body["error"]) == {"code", "message", "parameter"}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer stratum_not_a_key", "Basic dXNlcjpwYXNz", "stratum_x"]
)
def test_every_endpoint_needs_a_live_key(
    app_client: TestClient, path: str, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    assert_401(app_client.get(path, params=params_for(path), headers=headers))


def test_health_and_ready_need_no_key(app_client: TestClient) -> None:
    assert app_client.get("/health").status_code == 200
    assert app_client.get("/ready").status_code == 200
    assert app_client.get("/schema/openapi.json").status_code == 200


def test_a_revoked_key_stops_at_once(app_client: TestClient, cohort_url: str) -> None:
    key_text = new_key(cohort_url)
    headers = {"Authorization": f"Bearer {key_text}"}
    assert app_client.get("/data", params=OK, headers=headers).status_code == 200
    name = key_name(cohort_url, key_text)
    revoke_key(cohort_url, name)
    assert_401(app_client.get("/data", params=OK, headers=headers))


def key_name(url: str, key_text: str) -> str:
    import psycopg

    from engine.access import hash_key

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT name FROM api_keys WHERE key_hash = %s", (hash_key(key_text),))
        return str(row.fetchone()[0])  # type: ignore[index]


@pytest.mark.parametrize("path", ["/data", "/plan"])
def test_outside_the_cohort_is_403_whether_the_participant_exists_or_not(
    app_client: TestClient, scoped_key: str, path: str
) -> None:
    keyed(app_client, scoped_key)
    try:
        assert app_client.get(path, params={**OK, "user_id": "1,2"}).status_code == 200
        existing = app_client.get(path, params={**OK, "user_id": "2,3"})  # 3 exists
        missing = app_client.get(path, params={**OK, "user_id": "2,777"})  # 777 does not
        assert existing.status_code == missing.status_code == 403
        assert existing.json()["error"]["code"] == "forbidden"
        assert existing.text.replace("777", "3") == missing.text.replace("777", "3")
        assert existing.headers.get("content-length") is not None
        metric = app_client.get(path, params={**OK, "metric": "steps"})
        assert metric.status_code == 403 and metric.json()["error"]["parameter"] == "metric"
    finally:
        app_client.headers.pop("Authorization", None)


def test_catalog_shows_only_the_scope(app_client: TestClient, scoped_key: str) -> None:
    catalog = app_client.get("/catalog", headers={"Authorization": f"Bearer {scoped_key}"})
    assert catalog.status_code == 200
    body = catalog.json()
    assert body["users"] == [1, 2]
    assert [c["user_id"] for c in body["coverage"]] == [1, 2]
    assert [m["name"] for m in body["metrics"]] == ["heart_rate"]
    assert body["last_runs"] is None and body["last_sync"] is None


def test_metrics_need_an_admin_key(
    app_client: TestClient, scoped_key: str, cohort_url: str
) -> None:
    refused = app_client.get("/metrics", headers={"Authorization": f"Bearer {scoped_key}"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    admin = new_key(cohort_url)
    allowed = app_client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert allowed.status_code == 200


def test_a_key_unseen_while_the_store_is_down_is_503_not_401(tmp_path: Path) -> None:
    """Keys live in the warm store: an outage must not look like a bad key."""
    url = "postgresql://stratum@127.0.0.1:1/stratum"
    with TestClient(create_app(api_settings(tmp_path), url)) as test_client:
        response = test_client.get(
            "/data", params=OK, headers={"Authorization": "Bearer stratum_x"}
        )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "warm_store_unavailable"


def cursor_of(client: TestClient, key_text: str, **extra: str) -> str:
    response = client.get(
        "/data",
        params={**OK, "page_size": "5", **extra},
        headers={"Authorization": f"Bearer {key_text}"},
    )
    assert response.status_code == 200, response.text
    cursor = response.json()["meta"]["next"]
    assert isinstance(cursor, str)
    return cursor


def test_a_cursor_works_only_for_its_key_and_unaltered(
    app_client: TestClient, cohort_url: str
) -> None:
    import base64
    import json

    first, second = new_key(cohort_url), new_key(cohort_url)
    cursor = cursor_of(app_client, first)
    params = {**OK, "page_size": "5", "cursor": cursor}
    own = app_client.get("/data", params=params, headers={"Authorization": f"Bearer {first}"})
    assert own.status_code == 200
    other = app_client.get("/data", params=params, headers={"Authorization": f"Bearer {second}"})
    assert other.status_code == 400 and other.json()["error"]["parameter"] == "cursor"
    # The same position with its tag kept but the timestamp moved: a forgery.
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    payload["t"] += 60_000_000
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    response = app_client.get(
        "/data",
        params={**params, "cursor": forged},
        headers={"Authorization": f"Bearer {first}"},
    )
    assert response.status_code == 400 and response.json()["error"]["parameter"] == "cursor"


def test_a_key_with_its_requests_all_running_gets_429(
    app_client: TestClient, cohort_url: str
) -> None:
    from api.errors import retry_after
    from engine.errors import KeyBusy

    key_text = new_key(cohort_url)
    name = key_name(cohort_url, key_text)
    slots = app_client.app.state.service.key_slots
    headers = {"Authorization": f"Bearer {key_text}"}
    for _ in range(slots.limit):  # that many requests of this key are running
        slots.acquire(name)
    try:
        busy = app_client.get("/data", params=OK, headers=headers)
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "key_busy"
        assert busy.headers["retry-after"] == retry_after(KeyBusy)["Retry-After"]
        other = new_key(cohort_url)  # another key is not held back
        free = app_client.get("/data", params=OK, headers={"Authorization": f"Bearer {other}"})
        assert free.status_code == 200
    finally:
        for _ in range(slots.limit):
            slots.release(name)
    assert app_client.get("/data", params=OK, headers=headers).status_code == 200
    assert name not in slots.running  # every request gave its slot back
