"""Commands that use the warm store say what to do when it holds no stratum schema (a new
empty private server under the wrong STRATUM_HOME, a wrong STRATUM_DATABASE_URL)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from api.cli import main
from sync.localdb import LocalPostgres, stop_local_postgres

NEEDS_SCHEMA = [
    ["status"],
    ["aggregate"],
    ["sync"],
    ["sync", "--no-refresh"],
    ["sync", "status"],
    ["tier"],
    ["maintain"],
    ["serve"],
    ["query", "--user", "1", "--metric", "steps", "--start", "2024-01-01", "--end", "2024-01-02"],
]


@pytest.fixture
def empty_url(pg_server: LocalPostgres) -> Iterator[str]:
    """A database with nothing in it: what a new private server holds."""
    name = f"empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield pg_server.url_for(name)
    with psycopg.connect(pg_server.url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def use_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Point the CLI at a database URL, with its own STRATUM_HOME."""
    monkeypatch.setenv("STRATUM_HOME", str(tmp_path / "home"))
    return lambda url: monkeypatch.setenv("STRATUM_DATABASE_URL", url)


@pytest.mark.parametrize("argv", NEEDS_SCHEMA, ids=" ".join)
def test_a_database_without_the_schema_gets_a_clear_error(
    argv: list[str],
    empty_url: str,
    pg_server: LocalPostgres,
    use_database: Callable[[str], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_database(empty_url)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""  # not even a progress bar before the error
    name = empty_url.rsplit("/", 1)[1]
    assert err.splitlines() == [
        f"error: the warm store (database {name} on {pg_server.socket_dir} port 5432) has no "
        "stratum schema: run `stratum db init` (or `make demo`), or point STRATUM_DATABASE_URL "
        "at your warm store"
    ]
    with psycopg.connect(empty_url) as conn:  # nothing was created on the way
        row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert row == (0,)


def test_ingest_into_a_database_without_the_schema(
    empty_url: str,
    use_database: Callable[[str], None],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_database(empty_url)
    data = tmp_path / "data.csv"
    data.write_text("ts,user_id,metric,value\n2024-01-01T00:00:00Z,1,steps,60\n")
    assert main(["ingest", str(data)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "has no stratum schema: run `stratum db init`" in err
    assert main(["db", "init"]) == 0
    assert main(["ingest", str(data)]) == 0


def test_a_database_missing_a_migration_names_it(
    warm_url: str, use_database: Callable[[str], None], capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(warm_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = 3")
    use_database(warm_url)
    assert main(["status"]) == 2
    assert "lacks 003_sync_jobs.sql: run `stratum db init`" in capsys.readouterr().err


def test_a_new_private_server_under_another_home_says_to_set_stratum_home(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a user met running stratum from another folder: a fresh, empty private server.
    # Its home lives outside pytest's temp tree, which pytest keeps 0700 (closed to the
    # postgres account when we run as root) and another pytest run may tighten at any time.
    elsewhere = Path(tempfile.mkdtemp(prefix="stratum-test-elsewhere-"))
    os.chmod(elsewhere, 0o755)
    home = elsewhere / ".stratum"
    monkeypatch.delenv("STRATUM_DATABASE_URL", raising=False)
    monkeypatch.setenv("STRATUM_HOME", str(home))
    try:
        assert main(["status"]) == 2
    finally:
        stop_local_postgres(home)
        shutil.rmtree(elsewhere, ignore_errors=True)
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"error: the warm store (private PostgreSQL under {home.resolve()}) has no stratum "
        "schema: run `stratum db init` (or `make demo`), or set STRATUM_HOME to your stratum folder"
    )
