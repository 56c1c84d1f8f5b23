"""A private PostgreSQL for tests and the quick start, built from the machine's binaries.

Used only when STRATUM_DATABASE_URL is unset. The server lives in `<home>/pg`, listens on
127.0.0.1 on a free port, trusts local connections and, when TimescaleDB's library is
installed, preloads it. PostgreSQL refuses to run as root, so as root every server command
runs under the `postgres` account, which then owns the data folder.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from engine.errors import ConfigurationError

DB_USER = "stratum"
DB_NAME = "stratum"

# A throwaway server: durability is traded for speed (tests, demo). Production runs its own.
_SERVER_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
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
{preload}
"""


@dataclass(frozen=True)
class LocalPostgres:
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"


def postgres_bin_dir() -> Path:
    """Where pg_ctl lives: STRATUM_PG_BIN, then PATH, then the newest Debian install."""
    explicit = os.environ.get("STRATUM_PG_BIN")
    if explicit:
        return Path(explicit)
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent
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


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _run(cmd: list[str]) -> None:
    result = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stdout}{result.stderr}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _timescaledb_installed(bin_dir: Path) -> bool:
    pg_config = bin_dir / "pg_config"
    if not pg_config.exists():
        return False
    libdir = subprocess.run(
        [str(pg_config), "--pkglibdir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return bool(libdir) and bool(glob.glob(f"{libdir}/timescaledb*.so"))


def _prepare_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # The postgres account must be able to reach the folder through every parent.
        shutil.chown(path, "postgres", "postgres")
        for parent in [path, *path.parents]:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)


def _is_running(server: LocalPostgres) -> bool:
    try:
        with psycopg.connect(server.url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def ensure_local_postgres(home: Path) -> LocalPostgres:
    """Start (initialising on first use) the private server under `home`; return it."""
    bin_dir = postgres_bin_dir()
    data_dir = (home / "pg").resolve()
    port_file = home / "pg.port"
    if port_file.exists():
        server = LocalPostgres(data_dir, int(port_file.read_text()))
        if _is_running(server):
            return server
    home.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "PG_VERSION").exists():
        _prepare_dir(data_dir)
        _run(
            [
                str(bin_dir / "initdb"),
                "-D", str(data_dir),
                "-U", DB_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ]
        )  # fmt: skip
    port = _free_port()
    preload = "shared_preload_libraries = 'timescaledb'" if _timescaledb_installed(bin_dir) else ""
    conf = _SERVER_CONF.format(port=port, socket_dir=data_dir, preload=preload)
    conf_path = data_dir / "stratum.conf"
    _write_as_server_user(conf_path, conf)
    main_conf = data_dir / "postgresql.conf"
    if "include_if_exists = 'stratum.conf'" not in main_conf.read_text():
        _write_as_server_user(
            main_conf, main_conf.read_text() + "\ninclude_if_exists = 'stratum.conf'\n"
        )
    _run(
        [
            str(bin_dir / "pg_ctl"),
            "-D", str(data_dir),
            "-l", str(data_dir / "server.log"),
            "-w", "-t", "60",
            "start",
        ]
    )  # fmt: skip
    port_file.write_text(str(port))
    server = LocalPostgres(data_dir, port)
    _create_database(server)
    return server


def _write_as_server_user(path: Path, text: str) -> None:
    path.write_text(text)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _create_database(server: LocalPostgres) -> None:
    admin_url = server.url.rsplit("/", 1)[0] + "/postgres"
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(admin_url, autocommit=True) as conn:
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


def database_url(url: str | None, home: Path) -> str:
    """The configured URL, or the private server's (started on demand) when none is set."""
    return url if url else ensure_local_postgres(home).url
