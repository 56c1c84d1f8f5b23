"""A private PostgreSQL for tests and the quick start, built from the machine's binaries.

Used only when STRATUM_DATABASE_URL is unset. The server lives in `<home>/pg` and listens
only on a Unix socket inside its own 0700 data folder: no TCP port, so no other local account
can reach its trusted superuser (a TCP `trust` line would let any local user run programs as
the server's account through `COPY ... TO PROGRAM`). The socket's name, and so the URL, stays
the same across restarts. When TimescaleDB is installed for the binaries that will run, the
server preloads it (telemetry off); otherwise it runs plain PostgreSQL and says so.
PostgreSQL refuses to run as root, so as root every server command runs under the `postgres`
account, which then owns the data folder.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg

from engine.errors import ConfigurationError

log = logging.getLogger(__name__)

DB_USER = "stratum"
DB_NAME = "stratum"
# The socket's file name carries a port number; the folder is private, so any fixed one works.
SOCKET_PORT = 5432
# A Unix socket path must fit in sockaddr_un (107 bytes with the file name `.s.PGSQL.5432`).
_MAX_SOCKET_DIR = 90

# A throwaway server: durability is traded for speed (tests, demo). Production runs its own.
# `stratum.timescaledb` tells `stratum db init` that running without TimescaleDB is deliberate.
_SERVER_CONF = """
listen_addresses = ''
port = {port}
unix_socket_directories = '{socket_dir}'
unix_socket_permissions = 0700
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = '512MB'
work_mem = '64MB'
maintenance_work_mem = '256MB'
max_wal_size = '4GB'
max_connections = 200
max_locks_per_transaction = 256
log_min_messages = warning
stratum.timescaledb = '{timescaledb}'
{preload}
"""
_PRELOAD = "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off"


@dataclass(frozen=True)
class LocalPostgres:
    data_dir: Path
    socket_dir: Path
    timescaledb: bool  # the server preloads TimescaleDB

    @property
    def url(self) -> str:
        return self.url_for(DB_NAME)

    def url_for(self, database: str) -> str:
        """URL of `database` on this server (libpq reads a %-encoded host as a socket folder)."""
        host = quote(str(self.socket_dir), safe="")
        return f"postgresql://{DB_USER}@{host}:{SOCKET_PORT}/{database}"

    @property
    def flavour(self) -> str:
        """One line saying which warm store this server is."""
        if self.timescaledb:
            return "private PostgreSQL with TimescaleDB"
        return "private PostgreSQL without TimescaleDB (plain PostgreSQL tables)"


def postgres_bin_dir() -> Path:
    """Where the server binaries live: STRATUM_PG_BIN, then PATH, then the newest Debian
    install. Symlinks are resolved, so that the folder is the one the binaries run from (where
    pg_config and the extension libraries of *that* server are)."""
    explicit = os.environ.get("STRATUM_PG_BIN")
    if explicit:
        return Path(explicit).resolve()
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not candidates:
        raise ConfigurationError(
            "STRATUM_DATABASE_URL is unset and no PostgreSQL server binaries were found "
            "(looked at STRATUM_PG_BIN, PATH and /usr/lib/postgresql/*/bin); install "
            "postgresql or set STRATUM_DATABASE_URL",
            parameter="STRATUM_DATABASE_URL",
        )
    return Path(candidates[-1]).parent


def extension_dir(bin_dir: Path) -> Path:
    """The server's library folder (`pkglibdir`), asked of its own pg_config when it has one
    (Debian: /usr/lib/postgresql/N/lib beside bin)."""
    pg_config = bin_dir / "pg_config"
    if pg_config.exists():
        result = subprocess.run(
            [str(pg_config), "--pkglibdir"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.strip():
            return Path(result.stdout.strip())
    return bin_dir.parent / "lib"


def timescaledb_installed(bin_dir: Path) -> bool:
    """True when TimescaleDB's loader library is installed for these server binaries."""
    return (extension_dir(bin_dir) / "timescaledb.so").exists()


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _run(cmd: list[str]) -> None:
    result = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stdout}{result.stderr}")


def _prepare_dir(path: Path, mode: int = 0o700) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if os.geteuid() == 0:
        # The postgres account must own the folder and reach it through every parent.
        shutil.chown(path, "postgres", "postgres")
        for parent in path.parents:
            parent_mode = parent.stat().st_mode
            if not parent_mode & 0o001:
                os.chmod(parent, parent_mode | 0o001)


def _socket_dir(data_dir: Path) -> Path:
    """The data folder itself (0700, the server's own), or a private folder in the system's
    temp when the data folder's path is too long for a socket address."""
    if len(str(data_dir)) <= _MAX_SOCKET_DIR:
        return data_dir
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"stratum-pg-{digest}"


def _is_running(server: LocalPostgres) -> bool:
    try:
        with psycopg.connect(server.url_for("postgres"), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _preloads_timescaledb(server: LocalPostgres) -> bool:
    with psycopg.connect(server.url_for("postgres")) as conn:
        row = conn.execute("SHOW shared_preload_libraries").fetchone()
    return row is not None and "timescaledb" in row[0]


def ensure_local_postgres(
    home: Path,
    timescaledb: bool | None = None,
    announce: Callable[[str], None] | None = None,
) -> LocalPostgres:
    """Start (initialising on first use) the private server under `home`; return it.

    `timescaledb`: None preloads TimescaleDB when it is installed; False runs plain PostgreSQL
    even then (the tests cover both flavours); True requires it. `announce` is told, in one
    line, which flavour a server it starts runs.
    """
    bin_dir = postgres_bin_dir()
    installed = timescaledb_installed(bin_dir)
    if timescaledb and not installed:
        raise ConfigurationError(
            f"TimescaleDB is not installed for the PostgreSQL server in {bin_dir} "
            f"(no timescaledb.so in {extension_dir(bin_dir)})",
            parameter="STRATUM_PG_BIN",
        )
    wanted = installed if timescaledb is None else timescaledb
    data_dir = (home / "pg").resolve()
    socket_dir = _socket_dir(data_dir)
    server = LocalPostgres(data_dir, socket_dir, wanted)
    if (data_dir / "postmaster.pid").exists():
        if _is_running(server) and _preloads_timescaledb(server) == wanted:
            return server
        # Ours, but from an older layout (a TCP port) or the other flavour: restart it.
        subprocess.run(
            _as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "stop"]),
            capture_output=True,
            check=False,
        )
    home.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "PG_VERSION").exists():
        _prepare_dir(data_dir)
        _run(
            [
                str(bin_dir / "initdb"),
                f"--pgdata={data_dir}",
                f"--username={DB_USER}",
                "--auth-local=trust",
                "--auth-host=reject",
                "--encoding=UTF8",
                "--locale=C",
            ]
        )
    if socket_dir != data_dir:
        _prepare_dir(socket_dir)
    conf = _SERVER_CONF.format(
        port=SOCKET_PORT,
        socket_dir=socket_dir,
        timescaledb="on" if wanted else "off",
        preload=_PRELOAD if wanted else "",
    )
    _write_as_server_user(data_dir / "stratum.conf", conf)
    main_conf = data_dir / "postgresql.conf"
    if "include_if_exists = 'stratum.conf'" not in main_conf.read_text():
        _write_as_server_user(
            main_conf, main_conf.read_text() + "\ninclude_if_exists = 'stratum.conf'\n"
        )
    log_file = data_dir / "server.log"
    try:
        pg_ctl = str(bin_dir / "pg_ctl")
        _run([pg_ctl, f"--pgdata={data_dir}", f"--log={log_file}", "-w", "--timeout=60", "start"])
    except RuntimeError as exc:
        raise ConfigurationError(
            f"the private PostgreSQL in {data_dir} did not start: {exc}; its log is {log_file}",
            parameter="STRATUM_HOME",
        ) from None
    log.info("started the %s in %s", server.flavour, data_dir)
    if announce is not None:
        announce(f"started the {server.flavour} in {data_dir}")
    _create_database(server)
    return server


def _write_as_server_user(path: Path, text: str) -> None:
    path.write_text(text)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _create_database(server: LocalPostgres) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(server.url_for("postgres"), autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)
                ).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{DB_NAME}"')
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop_local_postgres(home: Path) -> bool:
    """Stop the private server under `home` if it runs; True when one was stopped."""
    data_dir = (home / "pg").resolve()
    if not (data_dir / "postmaster.pid").exists():
        return False
    _run([str(postgres_bin_dir() / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "stop"])
    return True


def database_url(url: str | None, home: Path, announce: Callable[[str], None] | None = None) -> str:
    """The configured URL, or the private server's (started on demand) when none is set."""
    return url if url else ensure_local_postgres(home, announce=announce).url
