"""Every request to a keyed route leaves an access-log row, however it ends: answered,
refused (401/403/400), failed mid-stream, or cut off by the client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from litestar.exceptions import LitestarException
from litestar.testing import TestClient

from api.app import create_app
from engine.errors import ConfigurationError
from engine.settings import load_settings
from sync.access import create_cohort, read_audit
from tests.api.conftest import api_settings, new_key
from tests.api.served import HOST, served

OK = {"user_id": "1,2", "metric": "heart_rate", "start": "2024-01-01", "end": "2024-01-02"}


@pytest.fixture(scope="module")
def audit_client(cohort_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(api_settings(tmp_path_factory.mktemp("audit")), cohort_url)
    with TestClient(app) as test_client:
        yield test_client


def rows_of(url: str, key_name: str) -> list[dict[str, Any]]:
    return list(reversed(read_audit(url, key_name=key_name)))


def key_name_of(url: str, key_text: str) -> str:
    from engine.access import hash_key

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT name FROM api_keys WHERE key_hash = %s", (hash_key(key_text),))
        return str(row.fetchone()[0])  # type: ignore[index]


def test_each_request_leaves_a_row(audit_client: TestClient, cohort_url: str) -> None:
    create_cohort(cohort_url, "audited", [1, 2])
    key_text = new_key(cohort_url, cohorts=("audited",))
    name = key_name_of(cohort_url, key_text)
    headers = {"Authorization": f"Bearer {key_text}"}
    page = audit_client.get("/data", params={**OK, "page_size": "7"}, headers=headers)
    assert page.status_code == 200
    csv = audit_client.get(
        "/data", params={**OK, "format": "csv", "page_size": "0"}, headers=headers
    )
    assert csv.status_code == 200
    assert audit_client.get("/plan", params=OK, headers=headers).status_code == 200
    assert audit_client.get("/catalog", headers=headers).status_code == 200
    refused = audit_client.get("/data", params={**OK, "user_id": "3"}, headers=headers)
    assert refused.status_code == 403
    assert audit_client.get("/metrics", headers=headers).status_code == 403
    bad = audit_client.get("/data", params={**OK, "metric": "pulse"}, headers=headers)
    assert bad.status_code == 400

    logged = rows_of(cohort_url, name)
    assert [(r["path"], r["status"]) for r in logged] == [
        ("/data", 200),
        ("/data", 200),
        ("/plan", 200),
        ("/catalog", 200),
        ("/data", 403),
        ("/metrics", 403),
        ("/data", 400),
    ]
    json_row, csv_row = logged[0], logged[1]
    assert json_row["users"] == [1, 2] and json_row["metrics"] == ["heart_rate"]
    assert json_row["format"] == "json" and json_row["rows"] == 7
    assert json_row["bytes"] == len(page.content)
    assert json_row["span_start"].isoformat() == "2024-01-01T00:00:00+00:00"
    assert json_row["resolution"] is not None and json_row["client"] == "testclient"
    assert csv_row["format"] == "csv" and csv_row["bytes"] == len(csv.content)
    assert csv_row["rows"] == len(csv.text.strip().splitlines()) - 1
    assert all(r["duration_ms"] >= 0 for r in logged)
    assert logged[4]["rows"] is None and logged[4]["users"] == [3]  # what was tried


def test_requests_without_a_valid_key_are_logged_too(
    audit_client: TestClient, cohort_url: str
) -> None:
    before = len(read_audit(cohort_url, key_name="-"))
    assert audit_client.get("/data", params=OK).status_code == 401
    bad_key = {"Authorization": "Bearer stratum_guess"}
    assert audit_client.get("/catalog", headers=bad_key).status_code == 401
    assert audit_client.get("/health").status_code == 200  # no key needed: not logged
    logged = read_audit(cohort_url, key_name="-")
    assert len(logged) == before + 2
    assert {r["status"] for r in logged[:2]} == {401}
    assert not any("stratum_guess" in str(value) for r in logged for value in r.values())


def test_a_stream_that_fails_midway_is_logged(
    audit_client: TestClient, cohort_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_text = new_key(cohort_url)
    name = key_name_of(cohort_url, key_text)
    engine = audit_client.app.state.service.engine
    real_run = engine.run

    def failing_run(query: Any) -> Any:
        answer = real_run(query)
        original = answer.batches

        def batches() -> Any:
            yield from original
            raise RuntimeError("connection lost")

        answer.batches = batches()
        return answer

    params = {**OK, "page_size": "0", "format": "ndjson", "resolution": "1m"}
    headers = {"Authorization": f"Bearer {key_text}"}
    whole = audit_client.get("/data", params=params, headers=headers)
    monkeypatch.setattr(engine, "run", failing_run)
    with pytest.raises(LitestarException):
        audit_client.get("/data", params=params, headers=headers)
    answered, failed = rows_of(cohort_url, name)
    assert answered["status"] == 200 and answered["rows"] == len(whole.text.splitlines())
    # Every row was sent, then the stream broke: logged as the failure it was.
    assert failed["status"] == 500 and failed["rows"] == answered["rows"]


def test_a_client_that_goes_away_midway_is_logged_as_499() -> None:
    """The wrapper on its own: the client's socket fails after the first body chunk."""
    import anyio

    from api import audit
    from engine.audit import AuditEntry

    recorded: list[AuditEntry] = []

    async def streaming_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    sent: list[int] = []

    async def vanishing_client(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and sent:
            raise OSError("connection reset by peer")
        sent.append(1)

    scope = {"type": "http", "method": "GET", "path": "/data", "client": ("10.0.0.7", 5000)}
    wrapped = audit.wrap(streaming_app, recorded.append)
    with pytest.raises(OSError):
        anyio.run(wrapped, scope, None, vanishing_client)
    (entry,) = recorded
    assert entry.status == audit.CLIENT_CLOSED and entry.client == "10.0.0.7"
    assert entry.key_name == "-" and entry.path == "/data"


@pytest.mark.parametrize(
    ("trusted", "logged_client"),
    [("127.0.0.1,::1", "198.51.100.7"), ("10.0.0.0/8", "127.0.0.1"), ("none", "127.0.0.1")],
)
def test_forwarded_addresses_are_believed_only_from_trusted_proxies(
    cohort_url: str, tmp_path: Path, trusted: str, logged_client: str
) -> None:
    """A local user cannot name another address in the access log (nor escape the
    per-client limit) unless STRATUM_FORWARDED_ALLOW_IPS trusts loopback as a proxy."""
    settings = api_settings(
        tmp_path, STRATUM_FORWARDED_ALLOW_IPS=trusted, STRATUM_ALLOWED_HOSTS=HOST
    )
    key_text = new_key(cohort_url)
    headers = {"Authorization": f"Bearer {key_text}", "X-Forwarded-For": "198.51.100.7"}
    with served(create_app(settings, cohort_url)) as port:
        answer = httpx.get(f"http://{HOST}:{port}/catalog", headers=headers, timeout=30)
    assert answer.status_code == 200
    (row,) = rows_of(cohort_url, key_name_of(cohort_url, key_text))
    assert row["client"] == logged_client


@pytest.mark.parametrize("given", ["", "localhost", "10.0.0.300", "10.0.0.0/40"])
def test_a_proxy_list_that_is_not_addresses_is_refused_naming_the_setting(given: str) -> None:
    if not given:
        assert load_settings({"STRATUM_FORWARDED_ALLOW_IPS": given}).server.forwarded_allow_ips
        return
    with pytest.raises(ConfigurationError, match="STRATUM_FORWARDED_ALLOW_IPS=.*CIDR"):
        load_settings({"STRATUM_FORWARDED_ALLOW_IPS": given})
