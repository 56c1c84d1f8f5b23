"""Shared fixtures: real private PostgreSQL servers for the whole run, a fresh database per test.

Two warm-store flavours exist: `timescaledb` (the extension preloaded, hypertables) and
`postgresql` (plain tables). The primary flavour, which `warm_url` and every fixture built on
it use, is TimescaleDB when it is installed for the server binaries, else plain PostgreSQL;
STRATUM_TEST_FLAVOUR=postgresql|timescaledb chooses it (the whole suite on one flavour).
`flavour_url` runs a test once per installed flavour. Each flavour's server starts on first
use and is stopped at the end of the run, whether it passed, failed or was interrupted.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sync.localdb import (
    LocalPostgres,
    ensure_local_postgres,
    postgres_bin_dir,
    stop_local_postgres,
    timescaledb_installed,
)
from sync.schema import init_schema
from tests.s3server import LocalS3

TEMPLATE = "stratum_template"
STORAGES = ("file", "s3")
FLAVOURS = ("timescaledb", "postgresql")


def installed_flavours() -> tuple[str, ...]:
    return FLAVOURS if timescaledb_installed(postgres_bin_dir()) else ("postgresql",)


def primary_flavour() -> str:
    chosen = os.environ.get("STRATUM_TEST_FLAVOUR") or installed_flavours()[0]
    if chosen not in installed_flavours():
        raise pytest.UsageError(
            f"STRATUM_TEST_FLAVOUR={chosen!r}: installed flavours are {installed_flavours()}"
        )
    return chosen


class Servers:
    """One private server per flavour, started on first use, each with a migrated template."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="stratum-test-pg-"))
        os.chmod(self.root, 0o755)  # the postgres account must reach it when we run as root
        self._servers: dict[str, LocalPostgres] = {}
        self._homes: list[Path] = []  # recorded before a start: one failing half-way is stopped
        atexit.register(self.stop)  # also when the run dies outside pytest's teardown

    def get(self, flavour: str) -> LocalPostgres:
        if flavour not in self._servers:
            home = self.root / flavour
            self._homes.append(home)
            server = ensure_local_postgres(home, timescaledb=flavour == "timescaledb")
            _make_template(server)
            self._servers[flavour] = server
        return self._servers[flavour]

    def fresh_database(self, flavour: str) -> str:
        server = self.get(flavour)
        name = f"t_{uuid.uuid4().hex[:12]}"
        create_from_template(server, name)
        return server.url_for(name)

    def drop_database(self, url: str) -> None:
        server_url, name = url.rsplit("/", 1)
        with psycopg.connect(server_url + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        for home in self._homes:
            stop_local_postgres(home)
        self._homes.clear()
        self._servers.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _make_template(server: LocalPostgres) -> None:
    with psycopg.connect(server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
    init_schema(server.url_for(TEMPLATE))
    with psycopg.connect(server.url_for("postgres"), autocommit=True) as conn:
        # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template, and
        # TimescaleDB's background-worker launcher visits every database that accepts
        # connections: closing the template to connections keeps it out.
        conn.execute(f'ALTER DATABASE "{TEMPLATE}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (TEMPLATE,),
        )


def create_from_template(server: LocalPostgres, name: str) -> None:
    deadline = time.monotonic() + 30
    with psycopg.connect(server.url_for("postgres"), autocommit=True) as conn:
        while True:
            try:
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
                return
            except psycopg.errors.ObjectInUse:
                # A background worker still leaving the template: it is gone in moments.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def pg_servers() -> Iterator[Servers]:
    # A run killed with SIGTERM (a CI or `timeout` limit) is treated as Ctrl-C: pytest then
    # tears its fixtures down, and these servers with them, instead of dying around them.
    previous = signal.signal(signal.SIGTERM, _interrupted)
    servers = Servers()
    try:
        yield servers
    finally:
        servers.stop()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def pg_server(pg_servers: Servers) -> LocalPostgres:
    """The primary flavour's private server."""
    return pg_servers.get(primary_flavour())


@pytest.fixture
def warm_url(pg_servers: Servers) -> Iterator[str]:
    """URL of a fresh, migrated database on the primary flavour's server."""
    url = pg_servers.fresh_database(primary_flavour())
    yield url
    pg_servers.drop_database(url)


@pytest.fixture(params=installed_flavours())
def flavour(request: pytest.FixtureRequest) -> str:
    """Each installed warm-store flavour in turn."""
    return str(request.param)


@pytest.fixture
def flavour_url(flavour: str, pg_servers: Servers) -> Iterator[str]:
    """URL of a fresh, migrated database, once per installed warm-store flavour."""
    url = pg_servers.fresh_database(flavour)
    yield url
    pg_servers.drop_database(url)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3]:
    server = LocalS3()
    yield server
    server.stop()


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest) -> str:
    """Each kind of lake storage in turn: a local folder, a local S3 server."""
    return str(request.param)


@pytest.fixture
def s3_root(s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh lake root on the local S3 server; the AWS_* variables point every Lake the
    test (or stratum code under test) opens at that server."""
    for name, value in s3_server.options.items():
        monkeypatch.setenv(name, value)
    return s3_server.fresh_root()


@pytest.fixture
def lake_root(storage: str, tmp_path: Path, request: pytest.FixtureRequest) -> str | Path:
    """Where a test's lake lives, once per storage."""
    if storage == "file":
        return tmp_path / "lake"
    return str(request.getfixturevalue("s3_root"))
