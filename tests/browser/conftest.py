"""Fixtures of the browser tests: a real `stratum serve` over a known cohort, and headless
Chromium (Debian's `chromium`, which `make install` installs) driven by Playwright.

The known cohort: participants 1 and 2, 2024-01-01 to 2024-01-03 (3 days), heart rate and
steps once a minute, rolled up; days 1 and 2 are in the lake, day 3 only in the warm store.
Screenshots go to test-artifacts/explorer/ at the repository root (ignored by git).
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import psycopg
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from benchmarks.server import ServerProcess
from lake import Lake
from sync.access import create_cohort, create_key
from sync.export import sync_to_lake
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.localdb import LocalPostgres
from sync.rollups import refresh_rollups

CHROMIUM = Path("/usr/bin/chromium")  # Debian's, which `make install` installs
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "explorer"
START = date(2024, 1, 1)
USERS = (1, 2)
DAYS = 3
METRICS = ("heart_rate", "steps")


@dataclass(frozen=True)
class Served:
    base_url: str
    admin_key: str
    scoped_key: str  # the cohort of participant 1 only
    url: str  # the warm store


@dataclass(frozen=True)
class _Dataset:
    """What benchmarks.server.ServerProcess reads of a dataset."""

    url: str
    home: Path
    lake_path: Path


@pytest.fixture(scope="module")
def served(pg_server: LocalPostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    name = f"browser_{uuid.uuid4().hex[:12]}"
    base = pg_server.url.rsplit("/", 1)[0]
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    from sync.schema import init_schema

    init_schema(url)
    ingest_tables(
        url, generate_cohort(len(USERS), DAYS, START, seed=5, metrics=list(METRICS), every_s=60)
    )
    refresh_rollups(url)
    home = tmp_path_factory.mktemp("served")
    sync_to_lake(url, Lake(home / "lake"), grace_days=1, batch_days=8, today=date(2024, 1, 4))
    create_cohort(url, "first", [1])
    scoped = create_key(
        url, "scoped", admin=False, cohorts=("first",), metrics=None, expires_in=None
    )
    serve = [str(Path(sys.executable).with_name("stratum")), "serve"]
    dataset = _Dataset(url, home, home / "lake")
    # The lake wherever it holds the days (small hourly answers would otherwise be read
    # from the warm store alone): the page shows both stores.
    server = ServerProcess(
        serve,
        dataset,  # type: ignore[arg-type]
        home / "server.log",
        STRATUM_WARM_ROLLUP_ROWS="0",
    )
    try:
        yield Served(server.base_url, server.key, scoped, url)
    finally:
        server.stop()
        with psycopg.connect(base + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make install` installs Debian's chromium (`make chromium`)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Tab:
    """A page of a fresh browser context, with the console errors it logged."""

    page: Page
    errors: list[str]


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield Tab(page, errors)
    finally:
        context.close()


def data_rows(served: Served, key: str, **params: str) -> list[dict[str, object]]:
    """/data's JSON rows for `params`, asked directly (not through the page)."""
    response = httpx.get(
        served.base_url + "/data",
        params={"page_size": "50000", **params},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200, response.text
    rows: list[dict[str, object]] = response.json()["data"]
    return rows


def allow_connections(url: str) -> None:
    """Undo tests.api.test_lake_sources.refuse_connections."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
