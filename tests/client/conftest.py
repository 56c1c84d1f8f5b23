"""Fixtures of the Python client's tests: a real `stratum serve` process over a real socket,
a real warm store and a real lake (the client is tested from outside, as a notebook uses it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from urllib.parse import urlencode

import httpx
import psycopg
import pytest

from lake import Lake
from sync.export import sync_to_lake
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.localdb import LocalPostgres
from sync.rollups import refresh_rollups
from sync.schema import init_schema
from tests.api.conftest import load_cohort, new_key

# Participant 9: two days of heart rate at 1 Hz (over 100,000 rows, ~10 MB as NDJSON), enough
# to fill the socket buffers so a stream of it stays open while its reader holds back.
BIG_USER = 9
BIG_SPAN = {
    "user_id": str(BIG_USER),
    "metric": "heart_rate",
    "start": "2024-01-01",
    "end": "2024-01-03",
    "resolution": "raw",
    "format": "ndjson",
    "page_size": "0",
}
STARTUP_LIMIT_S = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """`stratum serve` in a subprocess over `database_url`, with extra STRATUM_* settings."""

    def __init__(self, database_url: str, home: Path, **settings: str) -> None:
        self.database_url = database_url
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRATUM_")}
        env |= {
            "STRATUM_HOME": str(home),
            "STRATUM_DATABASE_URL": database_url,
            "STRATUM_LAKE_PATH": str(home / "lake"),
            "STRATUM_HOST": "127.0.0.1",
            "STRATUM_PORT": str(self.port),
            "STRATUM_LOG_LEVEL": "warning",
            "STRATUM_DUCKDB_THREADS": "2",
            **settings,
        }
        self.log_path = home / "serve.log"
        stratum = Path(sys.executable).parent / "stratum"  # the installed console script
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(stratum), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"stratum serve exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=5.0).status_code == 200:
                    return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def key(self, **scope: object) -> str:
        return new_key(self.database_url, **scope)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


@contextmanager
def held_stream(served: Served, key: str) -> Iterator[Callable[[], None]]:
    """A /data stream of BIG_SPAN that has begun (200 and its headers are sent: the key's
    request slot and the query's memory are taken) and is not read further, so the server
    stays blocked on the full socket until the connection closes: at the block's end, or
    earlier when the yielded function is called."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    try:
        sock.connect(("127.0.0.1", served.port))
        request = (
            f"GET /data?{urlencode(BIG_SPAN)} HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
            f"Authorization: Bearer {key}\r\n\r\n"
        )
        sock.sendall(request.encode())
        head = sock.recv(64)
        assert head.startswith(b"HTTP/1.1 200"), head
        yield sock.close
    finally:
        sock.close()


def _database(server: LocalPostgres) -> str:
    name = f"client_{uuid.uuid4().hex[:12]}"
    base = server.url.rsplit("/", 1)[0]
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


@pytest.fixture(scope="package")
def served_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="package")
def served_url(pg_server: LocalPostgres, served_home: Path) -> Iterator[str]:
    """The API tests' cohort (participants 1-3, two days, once a minute) with its first day
    in the lake, and participant BIG_USER's two days at 1 Hz."""
    url = _database(pg_server)
    init_schema(url)
    load_cohort(url)
    big = generate_cohort(
        1, 2, date(2024, 1, 1), metrics=["heart_rate"], every_s=1, first_user_id=BIG_USER
    )
    ingest_tables(url, big)
    refresh_rollups(url)
    # 2024-01-01 goes to the lake; 2024-01-02 stays warm (inside the grace period).
    sync_to_lake(
        url, Lake(served_home / "lake"), grace_days=1, batch_days=8, today=date(2024, 1, 3)
    )
    yield url
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.fixture(scope="package")
def served(served_url: str, served_home: Path) -> Iterator[Served]:
    """A server with the default settings."""
    server = Served(served_url, served_home)
    yield server
    server.stop()


@pytest.fixture(scope="package")
def tight(served_url: str, served_home: Path) -> Iterator[Served]:
    """A server where one stream fills the memory budget and a key runs one request at once."""
    home = served_home / "tight"
    home.mkdir()
    server = Served(
        served_url,
        home,
        STRATUM_LAKE_PATH=str(served_home / "lake"),
        STRATUM_MEMORY_BUDGET="64MiB",
        STRATUM_MAX_REQUESTS_PER_KEY="1",
    )
    yield server
    server.stop()
