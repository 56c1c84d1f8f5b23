"""Settings, built once from STRATUM_* environment variables and passed explicitly.

`SETTINGS` declares every variable once (name, default, parser, meaning); `load_settings`
reads them into one frozen dataclass per concern. tests/engine/test_settings.py fails when
the README's configuration table differs from the declaration, or when code reads a
STRATUM_* variable that is not declared.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from engine.errors import ConfigurationError, InvalidParameter
from engine.zones import zone_name

GiB = 1024**3
DEFAULT_MEMORY_BUDGET = 128 * GiB
# The budget never exceeds this share of physical RAM: the OS, PostgreSQL and the page
# cache need the rest.
MAX_RAM_SHARE = 0.8
# Connections one rollup refresh uses at once (STRATUM_REFRESH_WORKERS' default, and
# sync.rollups' when called without settings), each on its own share of the pending windows.
# The work is the database server's (aggregating raw rows), one core per connection: two ran
# the bench's 2M per-minute rows in 1.28 s against 2.64 s for one, on a 2-core machine.
REFRESH_WORKERS = 2


@dataclass(frozen=True)
class DatabaseSettings:
    url: str | None  # None: start a private PostgreSQL under `home` (tests, quick start)
    home: Path  # where the private PostgreSQL keeps its data folder
    chunk_interval: str  # TimescaleDB hypertable chunk interval
    pool_size: int
    refresh_workers: int  # connections one rollup refresh runs its batches on at once


@dataclass(frozen=True)
class LakeSettings:
    path: Path | str  # a local folder, or "s3://bucket/prefix" (see lake.storage)
    sync_grace_days: int  # days younger than this stay in the warm store: devices upload late
    sync_batch_days: int  # (user, day) pairs per Delta commit
    vacuum_retention_hours: int  # unreferenced files younger than this survive vacuum
    compact_after_days: int  # a fine-tier month is merged into one file once this settled
    tier_older_than_days: int  # scheduler's tiering horizon for raw and 1m rows
    columnstore_after_days: int  # TimescaleDB chunks this old are compressed; 0: never
    scrub_nights: int  # the nightly verify hashes every lake file at least once in this many runs


@dataclass(frozen=True)
class MemorySettings:
    budget_bytes: int
    duckdb_threads: int
    spill_path: Path
    duckdb_async_threads: int = 0


@dataclass(frozen=True)
class QuerySettings:
    max_points: int  # default points per series for auto resolution
    default_page_size: int
    max_page_size: int
    max_users: int
    default_tz: str = "UTC"  # the zone of participants without a zone history
    warm_rollup_rows: int = 10_000  # 1h/1d answers up to this many rows: the warm store alone
    calendar_cache_rows: int = 10_000_000  # calendar buckets kept computed; 0: none
    # The calendars the nightly job prefills the cache with ("local" and zone names); (): none
    calendar_prefill: tuple[str, ...] = ("local",)


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    log_level: str
    allowed_hosts: tuple[str, ...] | None  # None: the bind address and localhost
    send_timeout_s: int  # a client that accepts no 64 KiB of its answer for this long is dropped
    idle_timeout_s: int  # a connection must send a request's headers within this long
    forwarded_allow_ips: tuple[str, ...]  # proxies whose X-Forwarded-For is believed; () none


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def served_hosts(server: ServerSettings) -> tuple[str, ...]:
    """The Host names the API answers: STRATUM_ALLOWED_HOSTS, else the bind address (unless
    it is a wildcard) and localhost."""
    if server.allowed_hosts is not None:
        return server.allowed_hosts
    bound = () if server.host in ("0.0.0.0", "::", "") else (server.host.strip("[]").lower(),)
    return tuple(dict.fromkeys((*bound, *LOOPBACK_NAMES)))


@dataclass(frozen=True)
class AccessSettings:
    auth: bool  # False: every request is the local admin (a loopback bind only)
    audit_retention_days: int  # access-log rows older than this are dropped
    max_requests_per_key: int  # concurrent requests one key may have running
    max_requests_per_client: int  # concurrent requests one client address may have running


@dataclass(frozen=True)
class SchedulerSettings:
    nightly_cron: str  # crontab fields, UTC
    misfire_grace_s: int


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings
    lake: LakeSettings
    memory: MemorySettings
    query: QuerySettings
    server: ServerSettings
    scheduler: SchedulerSettings
    access: AccessSettings


Parser = Callable[[str, str], Any]  # (text, variable name) -> value, or ConfigurationError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str, name: str) -> int:
    """'512MiB', '8G', '1073741824' -> bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigurationError(
            f"{name}={text!r} is not a size; use bytes or a number with K, M, G or T "
            "(binary units), e.g. 8GiB",
            parameter=name,
        )
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "")[:1].upper()])


def physical_ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # not on every platform
        return DEFAULT_MEMORY_BUDGET


def integer(minimum: int = 0) -> Parser:
    """A parser of whole numbers of at least `minimum`."""

    def parse(text: str, name: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ConfigurationError(f"{name}={text!r} is not an integer", parameter=name) from None
        if value < minimum:
            raise ConfigurationError(f"{name}={value} must be >= {minimum}", parameter=name)
        return value

    return parse


def text(value: str, name: str) -> str:
    return value


def lowercase(value: str, name: str) -> str:
    return value.lower()


def on_off(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("on", "true", "1", "yes"):
        return True
    if lowered in ("off", "false", "0", "no"):
        return False
    raise ConfigurationError(f"{name}={value!r}: use on or off", parameter=name)


def prefill_zones(value: str, name: str) -> tuple[str, ...]:
    """`local` and/or IANA names (not UTC: UTC days are the stored 1d tier), comma-separated;
    `none` (or empty): an empty tuple."""
    given = [z.strip() for z in value.split(",") if z.strip()]
    if [z.lower() for z in given] in ([], ["none"], ["off"]):
        return ()
    zones: list[str] = []
    for text in given:
        zone = "local" if text.lower() == "local" else time_zone(text, name)
        if zone == "UTC":
            raise ConfigurationError(
                f"{name}={value!r}: UTC days need no prefill (they are the stored 1d tier); "
                "list local and/or IANA zones, or none",
                parameter=name,
            )
        if zone not in zones:
            zones.append(zone)
    return tuple(zones)


def host_list(value: str, name: str) -> tuple[str, ...]:
    hosts = tuple(h.strip().strip("[]").lower() for h in value.split(",") if h.strip())
    if not hosts:
        raise ConfigurationError(f"{name}={value!r}: give host names, comma-separated")
    return hosts


def proxy_list(value: str, name: str) -> tuple[str, ...]:
    """Addresses or networks (CIDR) of trusted proxies, `*`, or `none` (an empty tuple)."""
    if value.strip().lower() == "none":
        return ()
    given = tuple(a.strip() for a in value.split(",") if a.strip())
    for address in given:
        if address == "*":
            continue
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError:
            raise ConfigurationError(
                f"{name}={value!r}: {address!r} is not an IP address or network; give "
                "addresses or networks (CIDR), comma-separated, `*` or `none`",
                parameter=name,
            ) from None
    return given


def time_zone(value: str, name: str) -> str:
    """A canonical IANA name."""
    try:
        return zone_name(name, value)
    except InvalidParameter as exc:
        raise ConfigurationError(str(exc), parameter=name) from None


def path(value: str, name: str) -> Path:
    return Path(value).resolve()


def lake_location(value: str, name: str) -> Path | str:
    """A local folder (resolved), or an S3 URI kept as given."""
    if value.startswith("s3://"):
        bucket = value[len("s3://") :].split("/", 1)[0]
        if not bucket:
            raise ConfigurationError(
                f"{name}={value!r} names no bucket: use s3://bucket/prefix", parameter=name
            )
        return value.rstrip("/")
    if "://" in value:
        raise ConfigurationError(
            f"{name}={value!r}: use a local folder or s3://bucket/prefix", parameter=name
        )
    return path(value, name)


def memory_budget(value: str, name: str) -> int:
    """A size, capped to a share of physical RAM, and never below a working minimum."""
    ram_cap = int(physical_ram_bytes() * MAX_RAM_SHARE)
    return max(64 * 1024**2, min(parse_size(value, name), ram_cap))


def cpu_count() -> str:
    return str(os.cpu_count() or 1)


@dataclass(frozen=True)
class Setting:
    """One STRATUM_* variable: the README's configuration table has a row per Setting."""

    name: str
    # The value when the variable is unset or empty: text handed to `parse` (where
    # `$STRATUM_HOME` stands for that earlier setting's value), a function giving that text,
    # or None (unset).
    default: str | Callable[[], str] | None
    parse: Parser
    meaning: str
    field: str | None  # "concern.attribute" of Settings; None: read where it is used
    shown: str | None = None  # the README's default when `default` is not literal text

    @property
    def documented_default(self) -> str:
        if self.shown is not None:
            return self.shown
        assert isinstance(self.default, str), f"{self.name} needs `shown`"
        return self.default


SETTINGS: tuple[Setting, ...] = (
    Setting(
        name="STRATUM_DATABASE_URL",
        default=None,
        parse=text,
        meaning="PostgreSQL URL of the warm store. Unset: a private server under `STRATUM_HOME/pg`",
        field="database.url",
        shown="unset",
    ),
    Setting(
        name="STRATUM_HOME",
        default=".stratum",
        parse=path,
        meaning="working folder: private PostgreSQL, default lake and spill folders",
        field="database.home",
    ),
    Setting(
        name="STRATUM_PG_BIN",
        default=None,
        parse=path,
        meaning="folder of `pg_ctl`/`initdb` for the private server (else `PATH`, then "
        "`/usr/lib/postgresql/*/bin`); symlinks are resolved, and TimescaleDB counts as "
        "installed when that server's `pkglibdir` holds it",
        field=None,
        shown="auto",
    ),
    Setting(
        name="STRATUM_CHUNK_INTERVAL",
        default="1 day",
        parse=text,
        meaning="TimescaleDB chunk interval of `raw_data` and `data_1m_stored`",
        field="database.chunk_interval",
    ),
    Setting(
        name="STRATUM_DB_POOL_SIZE",
        default="8",
        parse=integer(minimum=1),
        meaning="connections the API keeps to the warm store",
        field="database.pool_size",
    ),
    Setting(
        name="STRATUM_REFRESH_WORKERS",
        default=str(REFRESH_WORKERS),
        parse=integer(minimum=1),
        meaning="connections a rollup refresh works on at once, each on its own share of the "
        "changed (user, day) windows (the work is PostgreSQL's: about one core each)",
        field="database.refresh_workers",
    ),
    Setting(
        name="STRATUM_LAKE_PATH",
        default="$STRATUM_HOME/lake",
        parse=lake_location,
        meaning="root of the Delta Lake tables: a folder, or `s3://bucket/prefix` on "
        "S3-compatible storage (endpoint and credentials: the standard `AWS_*` variables, "
        "see [the lake on S3](#the-lake-on-s3))",
        field="lake.path",
    ),
    Setting(
        name="STRATUM_SYNC_GRACE_DAYS",
        default="1",
        parse=integer(),
        meaning="days younger than this are not exported (devices upload late)",
        field="lake.sync_grace_days",
    ),
    Setting(
        name="STRATUM_SYNC_BATCH_DAYS",
        default="64",
        parse=integer(minimum=1),
        meaning="(user, day) pairs per Delta commit",
        field="lake.sync_batch_days",
    ),
    Setting(
        name="STRATUM_VACUUM_RETENTION_HOURS",
        default="168",
        parse=integer(),
        meaning="unreferenced lake files younger than this survive vacuum",
        field="lake.vacuum_retention_hours",
    ),
    Setting(
        name="STRATUM_COMPACT_AFTER_DAYS",
        default="7",
        parse=integer(),
        meaning="`stratum maintain` merges a participant-month of the raw and 1m lake tiers "
        "into one file once its last day is this many days old (later data into it rewrites "
        "that month)",
        field="lake.compact_after_days",
    ),
    Setting(
        name="STRATUM_SCRUB_NIGHTS",
        default="7",
        parse=integer(minimum=1),
        meaning="the nightly `verify` hashes the lake files new since its last run and a "
        "rolling share of the others, so that each file is hashed again within this many "
        "runs (1: every file every night); every file's presence and size are checked each run",
        field="lake.scrub_nights",
    ),
    Setting(
        name="STRATUM_TIER_OLDER_THAN_DAYS",
        default="30",
        parse=integer(minimum=1),
        meaning="the scheduler's tiering horizon for raw and 1m rows",
        field="lake.tier_older_than_days",
    ),
    Setting(
        name="STRATUM_COLUMNSTORE_AFTER_DAYS",
        default="2",
        parse=integer(),
        meaning="on TimescaleDB, the nightly job compresses `raw_data` and `data_1m_stored` chunks "
        "older than this many days (late rows still land, exactly); `0`: never",
        field="lake.columnstore_after_days",
    ),
    Setting(
        name="STRATUM_MEMORY_BUDGET",
        default="128GiB",
        parse=memory_budget,
        meaning="memory for queries, capped to 80% of physical RAM; accepts `512MiB`, `8G`, bytes",
        field="memory.budget_bytes",
    ),
    Setting(
        name="STRATUM_DUCKDB_THREADS",
        default=cpu_count,
        parse=integer(minimum=1),
        meaning="DuckDB worker threads",
        field="memory.duckdb_threads",
        shown="CPU count",
    ),
    Setting(
        name="STRATUM_DUCKDB_ASYNC_THREADS",
        default="0",
        parse=integer(minimum=0),
        meaning="DuckDB threads that keep file reads in flight (0: its workers read); raise it "
        "for a lake on a network filesystem",
        field="memory.duckdb_async_threads",
    ),
    Setting(
        name="STRATUM_SPILL_PATH",
        default="$STRATUM_HOME/spill",
        parse=path,
        meaning="where DuckDB spills when a query exceeds its memory share",
        field="memory.spill_path",
    ),
    Setting(
        name="STRATUM_MAX_POINTS",
        default="5000",
        parse=integer(minimum=1),
        meaning="most points per series `resolution=auto` allows: hours come raw, days at 1m, "
        "weeks and months at 1h, years at 1d",
        field="query.max_points",
    ),
    Setting(
        name="STRATUM_DEFAULT_PAGE_SIZE",
        default="10000",
        parse=integer(minimum=1),
        meaning="rows per page when `page_size` is not given",
        field="query.default_page_size",
    ),
    Setting(
        name="STRATUM_MAX_PAGE_SIZE",
        default="1000000",
        parse=integer(minimum=1),
        meaning="largest accepted `page_size`",
        field="query.max_page_size",
    ),
    Setting(
        name="STRATUM_DEFAULT_TZ",
        default="UTC",
        parse=time_zone,
        meaning="IANA time zone of participants without a zone history (`stratum tz set`), "
        "for `tz=local` answers",
        field="query.default_tz",
    ),
    Setting(
        name="STRATUM_WARM_ROLLUP_ROWS",
        default="10000",
        parse=integer(minimum=0),
        meaning="1h and 1d answers of up to this many rows come from the warm store alone (it "
        "keeps those tiers for every day; an index scan there beats opening lake files); "
        "larger ones read the lake, which is faster beyond ~10-20k rows (the warm store costs "
        "~3 us a row, the lake's few large rollup files little more per row than per file). "
        "Small raw and 1m answers (up to 2,048 rows) come from the warm store too while it "
        "holds their days. 0: the lake wherever it holds the days, for every resolution",
        field="query.warm_rollup_rows",
    ),
    Setting(
        name="STRATUM_CALENDAR_CACHE_ROWS",
        default="10000000",
        parse=integer(minimum=0),
        meaning="calendar buckets (local days, weeks, months per participant and metric) kept "
        "computed in the warm store's calendar_cache, so a repeated calendar answer reads them "
        "instead of 1m/1h rows; the nightly job drops those beyond this many, the ones "
        "filled by answers first (oldest first), the ones it prefilled last. 0: none kept, "
        "every calendar answer is computed from the rows",
        field="query.calendar_cache_rows",
    ),
    Setting(
        name="STRATUM_CALENDAR_PREFILL",
        default="local",
        parse=prefill_zones,
        meaning="the calendars the nightly job computes into the calendar cache after the "
        "sync, for the days written (or whose zone history changed) since its last prefill, so "
        "the first answer of the day reads them: `local` (each participant's own days) and/or "
        "IANA zones analysts ask in (e.g. `local,Asia/Kathmandu`), daily buckets; `none`: no "
        "prefill",
        field="query.calendar_prefill",
    ),
    Setting(
        name="STRATUM_MAX_USERS",
        default="1000",
        parse=integer(minimum=1),
        meaning="most participants in one request",
        field="query.max_users",
    ),
    Setting(
        name="STRATUM_HOST",
        default="127.0.0.1",
        parse=text,
        meaning="address `stratum serve` binds",
        field="server.host",
    ),
    Setting(
        name="STRATUM_PORT",
        default="8000",
        parse=integer(minimum=1),
        meaning="port `stratum serve` binds",
        field="server.port",
    ),
    Setting(
        name="STRATUM_LOG_LEVEL",
        default="info",
        parse=lowercase,
        meaning="log level of the server",
        field="server.log_level",
    ),
    Setting(
        name="STRATUM_ALLOWED_HOSTS",
        default=None,
        parse=host_list,
        meaning="comma-separated `Host` names the API answers (`*`: any); others get 400, so a "
        "DNS-rebinding page cannot read a loopback server; `Link` headers carry the request's "
        "(allowed) host",
        field="server.allowed_hosts",
        shown="the bind address and localhost (`localhost`, `127.0.0.1`, `::1`)",
    ),
    Setting(
        name="STRATUM_SEND_TIMEOUT_S",
        default="10",
        parse=integer(minimum=1),
        meaning="`stratum serve` drops a connection whose client has not accepted 64 KiB of its "
        "answer in this many seconds (a stalled reader): the request ends and its memory "
        "reservation and concurrency slots are released",
        field="server.send_timeout_s",
    ),
    Setting(
        name="STRATUM_IDLE_TIMEOUT_S",
        default="5",
        parse=integer(minimum=1),
        meaning="`stratum serve` closes a connection that has not sent a whole request's headers "
        "this many seconds after it opened or after its previous answer (idle keep-alive "
        "connections, slow or silent clients)",
        field="server.idle_timeout_s",
    ),
    Setting(
        name="STRATUM_FORWARDED_ALLOW_IPS",
        default="127.0.0.1,::1",
        parse=proxy_list,
        meaning="proxies (addresses or CIDR networks, comma-separated; `*` any; `none`) whose "
        "`X-Forwarded-For` and `X-Forwarded-Proto` `stratum serve` believes: a request from one "
        "of them counts as from the address it names (per-client limits, the access log). The "
        "default trusts a proxy on this machine, so set `none` where local users are not all "
        "trusted, or the proxy's address when it runs elsewhere",
        field="server.forwarded_allow_ips",
    ),
    Setting(
        name="STRATUM_NIGHTLY_CRON",
        default="0 2 * * *",
        parse=text,
        meaning="crontab (UTC) of the nightly refresh + sync + maintenance",
        field="scheduler.nightly_cron",
    ),
    Setting(
        name="STRATUM_MISFIRE_GRACE_S",
        default="3600",
        parse=integer(minimum=1),
        meaning="how late a scheduled job may still start",
        field="scheduler.misfire_grace_s",
    ),
    Setting(
        name="STRATUM_AUTH",
        default="on",
        parse=on_off,
        meaning="`on`: every endpoint but `/health` and `/ready` needs `Authorization: Bearer "
        "KEY`; `off` (every request is an admin) is refused unless the server binds a "
        "loopback address",
        field="access.auth",
    ),
    Setting(
        name="STRATUM_AUDIT_RETENTION_DAYS",
        default="365",
        parse=integer(minimum=1),
        meaning="access-log rows older than this are dropped (by the server, hourly, and by "
        "`stratum audit --prune`)",
        field="access.audit_retention_days",
    ),
    Setting(
        name="STRATUM_MAX_REQUESTS_PER_KEY",
        default="4",
        parse=integer(minimum=1),
        meaning="requests one key may have running at once (streams count until their last "
        "byte); beyond it 429 + `Retry-After`, so one key cannot take the whole memory budget",
        field="access.max_requests_per_key",
    ),
    Setting(
        name="STRATUM_MAX_REQUESTS_PER_CLIENT",
        default="16",
        parse=integer(minimum=1),
        meaning="requests one client address may have running at once, whatever its keys "
        "(streams count until their last byte); beyond it 429 `client_busy` + `Retry-After`. "
        "A trusted proxy's requests count as from the address it forwards "
        "(`STRATUM_FORWARDED_ALLOW_IPS`)",
        field="access.max_requests_per_client",
    ),
)

_CONCERNS = {
    "database": DatabaseSettings,
    "lake": LakeSettings,
    "memory": MemorySettings,
    "query": QuerySettings,
    "server": ServerSettings,
    "scheduler": SchedulerSettings,
    "access": AccessSettings,
}


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def require_auth_or_loopback(auth: bool, host: str) -> None:
    """STRATUM_AUTH=off serves every participant to whoever connects: only a loopback bind
    keeps that to this machine."""
    if not auth and not is_loopback(host):
        raise ConfigurationError(
            f"STRATUM_AUTH=off serves all data without a key, so the server binds only a "
            f"loopback address (127.0.0.1, ::1, localhost), not {host}: turn auth on "
            "(unset STRATUM_AUTH) and give clients keys (`stratum key create`), or bind "
            "127.0.0.1",
            parameter="STRATUM_AUTH",
        )


def read_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Every declared setting's value: the variable if set and not empty, else its default."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.name) or None
        if raw is None:
            default = setting.default() if callable(setting.default) else setting.default
            if default is not None:
                earlier = {name: str(value) for name, value in values.items()}
                raw = Template(default).substitute(earlier)
        values[setting.name] = None if raw is None else setting.parse(raw, setting.name)
    return values


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    values = read_settings(os.environ if env is None else env)
    fields: dict[str, dict[str, Any]] = {concern: {} for concern in _CONCERNS}
    for setting in SETTINGS:
        if setting.field is not None:
            concern, attribute = setting.field.split(".")
            fields[concern][attribute] = values[setting.name]
    return Settings(**{concern: cls(**fields[concern]) for concern, cls in _CONCERNS.items()})
