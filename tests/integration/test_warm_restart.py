"""A restarted warm store: the same URL, and the API answers again at once."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from api.app import create_app
from sync.localdb import LocalPostgres, ensure_local_postgres, stop_local_postgres
from sync.schema import init_schema
from tests.api.conftest import admin_client, api_settings, load_cohort

SPAN = {"user_id": "1,2", "metric": "heart_rate", "start": "2024-01-01", "end": "2024-01-02"}
QUERIES = [{**SPAN, "resolution": "raw"}, {**SPAN, "resolution": "1h"}]


@pytest.fixture
def own_server() -> Iterator[tuple[Path, LocalPostgres]]:
    """A private server of this test's own (the test restarts it)."""
    home = Path(tempfile.mkdtemp(prefix="stratum-test-restart-"))
    os.chmod(home, 0o755)
    try:
        server = ensure_local_postgres(home, timescaledb=False)  # either flavour would do
        init_schema(server.url)
        load_cohort(server.url)
        yield home, server
    finally:
        stop_local_postgres(home)
        shutil.rmtree(home, ignore_errors=True)


def test_queries_answer_right_after_a_restart(own_server: tuple[Path, LocalPostgres]) -> None:
    home, server = own_server
    with admin_client(create_app(api_settings(home), server.url), server.url) as client:
        # Several requests at once leave several pooled connections, all dead after a restart.
        with ThreadPoolExecutor(4) as pool:
            warm = list(pool.map(lambda p: client.get("/data", params=p), QUERIES * 4))
        assert all(r.status_code == 200 for r in warm)
        expected = [client.get("/data", params=p).json()["data"] for p in QUERIES]

        stop_local_postgres(home)
        restarted = ensure_local_postgres(home, timescaledb=False)
        assert restarted.url == server.url  # the same address: a running API needs no restart

        for params, rows in zip(QUERIES, expected, strict=True):
            response = client.get("/data", params=params)
            assert response.status_code == 200, response.text
            assert response.json()["data"] == rows
        assert client.get("/ready").status_code == 200


def test_an_outage_answer_carries_no_driver_text(own_server: tuple[Path, LocalPostgres]) -> None:
    home, server = own_server
    with admin_client(create_app(api_settings(home), server.url), server.url) as client:
        assert client.get("/data", params=QUERIES[0]).status_code == 200
        stop_local_postgres(home)
        response = client.get("/data", params=QUERIES[0])
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert message.startswith("the warm store is unreachable"), message
    for leak in ("socket", "connection to server", str(server.socket_dir), "FATAL"):
        assert leak not in response.text
