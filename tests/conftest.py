"""Shared fixtures: a real private PostgreSQL for the whole run, a fresh database per test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sync.localdb import LocalPostgres, ensure_local_postgres, stop_local_postgres
from sync.schema import init_schema

_TEMPLATE = "stratum_template"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    """A private PostgreSQL started from the machine's binaries, removed after the run."""
    home = Path(tempfile.mkdtemp(prefix="stratum-test-pg-"))
    os.chmod(home, 0o755)  # the postgres account must reach it when we run as root
    server = ensure_local_postgres(home)
    admin = server.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{_TEMPLATE}"')
    init_schema(server.url.rsplit("/", 1)[0] + f"/{_TEMPLATE}")
    try:
        yield server
    finally:
        stop_local_postgres(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def warm_url(pg_server: LocalPostgres) -> Iterator[str]:
    """URL of a fresh, migrated database for one test (cloned from a migrated template)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    base = pg_server.url.rsplit("/", 1)[0]
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_TEMPLATE}"')
    yield f"{base}/{name}"
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
