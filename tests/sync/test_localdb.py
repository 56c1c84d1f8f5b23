"""The private PostgreSQL: which binaries and flavour it runs, and that it is no open door."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
import pytest

from sync.localdb import (
    LocalPostgres,
    extension_dir,
    postgres_bin_dir,
    timescaledb_installed,
)


def test_bin_dir_resolves_a_symlinked_pg_ctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = postgres_bin_dir()
    (tmp_path / "pg_ctl").symlink_to(real / "pg_ctl")  # as /usr/local/bin/pg_ctl on Debian
    monkeypatch.delenv("STRATUM_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert postgres_bin_dir() == real.resolve()


def test_timescaledb_is_detected_where_the_server_loads_libraries() -> None:
    bin_dir = postgres_bin_dir()
    pkglibdir = subprocess.run(
        [str(bin_dir / "pg_config"), "--pkglibdir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert extension_dir(bin_dir) == Path(pkglibdir)
    assert timescaledb_installed(bin_dir) == (Path(pkglibdir) / "timescaledb.so").exists()


def test_the_server_runs_the_flavour_it_says(pg_server: LocalPostgres) -> None:
    with psycopg.connect(pg_server.url) as conn:
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()
        assert preload is not None
        assert ("timescaledb" in preload[0]) == pg_server.timescaledb
        if pg_server.timescaledb:
            telemetry = conn.execute("SHOW timescaledb.telemetry_level").fetchone()
            assert telemetry == ("off",)
    assert ("without" in pg_server.flavour) != pg_server.timescaledb


def test_no_tcp_listener_and_a_private_socket_folder(pg_server: LocalPostgres) -> None:
    with psycopg.connect(pg_server.url) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        # Even if TCP were switched on, no host line would let anyone in.
        rules = conn.execute(
            "SELECT type, auth_method FROM pg_hba_file_rules WHERE type LIKE 'host%%'"
        ).fetchall()
    assert all(method == "reject" for _, method in rules), rules
    socket_dir = Path(unquote(urlsplit(pg_server.url).hostname or ""))
    assert socket_dir == pg_server.socket_dir
    assert (socket_dir / ".s.PGSQL.5432").is_socket()
    assert socket_dir.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root")
def test_another_local_account_cannot_reach_the_server(pg_server: LocalPostgres) -> None:
    # The probe: another account asking for the trusted superuser.
    psql = postgres_bin_dir() / "psql"
    conninfo = f"host={pg_server.socket_dir} dbname=postgres user=stratum"
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(psql), conninfo, "-c", "SELECT 1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "Permission denied" in result.stderr, result.stderr
