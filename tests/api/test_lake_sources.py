"""/data over lake + warm store: the same rows either way, and lake-only spans keep being
served while the warm store is down (the catalog loaded earlier still plans them)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from api.app import create_app
from lake import Lake
from sync.export import sync_to_lake
from sync.tiering import tier_warm_store
from tests.api.conftest import admin_client, api_settings, load_cohort

SPAN = {"user_id": "1,2,3", "metric": "heart_rate,steps", "page_size": "50000"}
BOTH_DAYS = {**SPAN, "start": "2024-01-01", "end": "2024-01-03"}
LAKE_DAY = {**SPAN, "start": "2024-01-01", "end": "2024-01-02"}


def rows(client: TestClient, params: dict[str, str]) -> tuple[list[Any], dict[str, Any]]:
    response = client.get("/data", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["data"], body["meta"]


def refuse_connections(url: str) -> None:
    """Make the warm store unreachable for this database only: no new connections, and the
    open ones are ended (as when PostgreSQL goes down)."""
    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )


@pytest.mark.parametrize("resolution", ["raw", "1h"])
def test_lake_and_warm_answer_alike_and_lake_survives_a_warm_outage(
    warm_url: str, tmp_path: Path, resolution: str
) -> None:
    load_cohort(warm_url)
    # Small 1h answers come whole from the warm store by default: 0 makes the lake serve
    # the days it holds, so the stitching is what is tested.
    settings = api_settings(tmp_path, STRATUM_WARM_ROLLUP_ROWS="0")
    app = create_app(settings, warm_url)
    with admin_client(app, warm_url) as client:
        warm_both, meta = rows(client, {**BOTH_DAYS, "resolution": resolution})
        warm_day, _ = rows(client, {**LAKE_DAY, "resolution": resolution})
        assert meta["sources"] == ["warm"] and warm_both
        # Export 2024-01-01 (2024-01-02 stays in the warm store: inside the grace period).
        sync_to_lake(
            warm_url, Lake(settings.lake.path), grace_days=1, batch_days=8, today=date(2024, 1, 3)
        )
        hybrid, meta = rows(client, {**BOTH_DAYS, "resolution": resolution})
        assert meta["sources"] == ["lake", "warm"]
        assert hybrid == warm_both
        plan = client.get("/plan", params={**BOTH_DAYS, "resolution": resolution}).json()
        lake_segment = plan["segments"][0]
        assert lake_segment["backend"] == "lake" and lake_segment["files"] > 0
        catalog = client.get("/catalog").json()
        assert catalog["coverage"][0]["lake_watermark"] == "2024-01-01"
        assert catalog["lake"]["versions"]["raw"] is not None

        refuse_connections(warm_url)
        lake_only, meta = rows(client, {**LAKE_DAY, "resolution": resolution})
        assert meta["sources"] == ["lake"] and lake_only == warm_day
        response = client.get("/data", params={**BOTH_DAYS, "resolution": resolution})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "warm_store_unavailable"
        assert client.get("/ready").status_code == 503


def test_catalog_loaded_at_startup_serves_the_lake_through_an_outage(
    warm_url: str, tmp_path: Path
) -> None:
    load_cohort(warm_url)
    settings = api_settings(tmp_path)
    with admin_client(create_app(settings, warm_url), warm_url) as client:
        expected, _ = rows(client, {**LAKE_DAY, "resolution": "1h"})
    sync_to_lake(
        warm_url, Lake(settings.lake.path), grace_days=1, batch_days=8, today=date(2024, 1, 3)
    )
    with admin_client(
        create_app(settings, warm_url), warm_url
    ) as client:  # startup loads the catalog
        refuse_connections(warm_url)  # before the first request
        got, meta = rows(client, {**LAKE_DAY, "resolution": "1h"})
        assert meta["sources"] == ["lake"] and got == expected


def test_a_small_rollup_answer_comes_whole_from_the_warm_store(
    warm_url: str, tmp_path: Path
) -> None:
    """The warm store keeps 1h and 1d for every day, tiered ones included: a small answer
    skips the lake's files and equals the stitched lake + warm answer."""
    load_cohort(warm_url)
    home = tmp_path / "home"
    stitched = api_settings(home, STRATUM_WARM_ROLLUP_ROWS="0")
    sync_to_lake(
        warm_url, Lake(stitched.lake.path), grace_days=1, batch_days=8, today=date(2024, 1, 3)
    )
    # 2024-01-01's raw and 1m leave the warm store; its 1h and 1d stay.
    tier_warm_store(warm_url, Lake(stitched.lake.path), older_than_days=1, today=date(2024, 1, 3))
    answers = {}
    for name, settings in (("stitched", stitched), ("default", api_settings(home))):
        with admin_client(create_app(settings, warm_url), warm_url) as client:
            for resolution in ("1h", "1d"):
                got, meta = rows(client, {**BOTH_DAYS, "resolution": resolution})
                answers[name, resolution] = got, meta["sources"]
    for resolution in ("1h", "1d"):
        stitched_rows, stitched_sources = answers["stitched", resolution]
        default_rows, default_sources = answers["default", resolution]
        assert stitched_sources == ["lake", "warm"] and default_sources == ["warm"]
        assert default_rows == stitched_rows and default_rows
