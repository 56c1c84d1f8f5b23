"""Fixtures of the HTTP API tests: a small rolled-up cohort and a Litestar TestClient."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import psycopg
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from api.app import Service, create_app
from engine.settings import Settings, load_settings
from sync.access import create_key
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.localdb import LocalPostgres
from sync.rollups import refresh_rollups
from sync.schema import init_schema

START = date(2024, 1, 1)
USERS = 3
DAYS = 2
METRICS = ("heart_rate", "steps")
MAX_USERS = 5
MAX_PAGE_SIZE = 50_000


def api_settings(home: Path, **extra: str) -> Settings:
    env = {
        "STRATUM_HOME": str(home),
        "STRATUM_LAKE_PATH": str(home / "lake"),
        # The budget bounds the whole process, and a new app sets aside what the process
        # holds already: late in the suite the test process holds 0.9-1 GiB (the S3 tests'
        # moto server, for one, keeps its objects in it), which left a 1 GiB budget 33-67 MiB for
        # queries, less than a 50,000-row page needs.
        "STRATUM_MEMORY_BUDGET": "2GiB",
        "STRATUM_DUCKDB_THREADS": "2",
        "STRATUM_MAX_USERS": str(MAX_USERS),
        "STRATUM_MAX_PAGE_SIZE": str(MAX_PAGE_SIZE),
        # TestClient's host name (the defaults, bind address and localhost, are tested in
        # tests/api/test_hosts.py).
        "STRATUM_ALLOWED_HOSTS": "testserver.local,testserver,localhost",
        **extra,
    }
    return load_settings(env)


def load_cohort(url: str) -> None:
    """3 users x 2 days of heart rate and steps once a minute, rolled up."""
    ingest_tables(url, generate_cohort(USERS, DAYS, START, metrics=list(METRICS), every_s=60))
    refresh_rollups(url)


def new_key(url: str, *, cohorts: tuple[str, ...] = (), metrics: list[str] | None = None) -> str:
    """A fresh key's text: admin unless scoped to `cohorts`."""
    return create_key(
        url,
        f"k{uuid.uuid4().hex[:12]}",
        admin=not cohorts,
        cohorts=cohorts,
        metrics=metrics,
        expires_in=None,
    )


def keyed(client: TestClient, key_text: str) -> TestClient:
    """The client sends `Authorization: Bearer key_text` with every request."""
    client.headers["Authorization"] = f"Bearer {key_text}"
    return client


@contextmanager
def admin_client(app: Litestar, url: str) -> Iterator[TestClient]:
    """A started TestClient of `app` that sends a new admin key of the database at `url`."""
    key_text = new_key(url)
    with TestClient(app) as test_client:
        yield keyed(test_client, key_text)


def service(app: Litestar) -> Service:
    found: Service = app.state.service
    return found


@pytest.fixture(scope="module")
def cohort_url(pg_server: LocalPostgres) -> Iterator[str]:
    """A database shared by a module's read-only tests, holding the cohort."""
    name = f"api_{uuid.uuid4().hex[:12]}"
    base = pg_server.url.rsplit("/", 1)[0]
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    init_schema(url)
    load_cohort(url)
    yield url
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def client(cohort_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One app (one Engine) over the shared cohort for a module's read-only tests."""
    app = create_app(api_settings(tmp_path_factory.mktemp("api")), cohort_url)
    with admin_client(app, cohort_url) as test_client:
        yield test_client
