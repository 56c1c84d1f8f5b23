"""docker-compose.yml says what the README's Production section says (no container runs here):
services, images, health checks, volumes, the STRATUM_* settings and the published port; and
its TimescaleDB image is the version CI tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else len(README)]


PRODUCTION = section("Production")
TABLE_ROW = re.compile(r"^\| `([a-z]+)` \| (.*?) \| (.*?) \| (.*?) \|$", re.M)
# service -> (runs, health check, volumes), from the Production section's table.
ROWS = {row[0]: row[1:] for row in TABLE_ROW.findall(PRODUCTION)}
SETTING_DEFAULTS = dict(re.findall(r"^\| `(STRATUM_[A-Z_]+)` \| `?([^|`]*?)`? \|", README, re.M))
INTERPOLATION = re.compile(r"\$\{(STRATUM_[A-Z_]+)(?::-([^}]*))?\}")


def ticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


def test_the_services_are_the_ones_the_readme_lists() -> None:
    assert set(ROWS) == set(SERVICES)


def test_the_timescaledb_image_is_the_version_ci_tests() -> None:
    pattern = r"installs the\s+TimescaleDB (\d+\.\d+\.\d+) build for PostgreSQL (\d+)"
    tested = re.search(pattern, section("Development"))
    assert tested, "the Development section names the TimescaleDB and PostgreSQL CI tests"
    version, pg_major = tested.groups()
    assert (version, pg_major) == ("2.28.3", "15")  # the build ../shared/timescaledb ships
    image = f"timescale/timescaledb:{version}-pg{pg_major}"  # the official image's tag format
    assert SERVICES["timescaledb"]["image"] == image
    assert ticked(ROWS["timescaledb"][0]) == {image}
    assert f"TimescaleDB {version} on PostgreSQL {pg_major}" in " ".join(PRODUCTION.split())


def test_health_checks_are_the_ones_the_readme_claims() -> None:
    for name, (_, health, _) in ROWS.items():
        check = SERVICES[name].get("healthcheck")
        if health == "none":
            assert check is None, name
            continue
        assert check is not None, name
        command = " ".join(check["test"])
        assert all(claim in command for claim in ticked(health)), (name, command)


def test_volumes_are_the_ones_the_readme_names() -> None:
    for name, (_, _, volumes) in ROWS.items():
        mounted = {mount.split(":")[0] for mount in SERVICES[name].get("volumes", [])}
        assert mounted == ticked(volumes), name
    assert set(COMPOSE["volumes"]) == {v for _, _, vols in ROWS.values() for v in ticked(vols)}
    lake_mounts = {m for s in SERVICES.values() for m in s.get("volumes", []) if m[:5] == "lake:"}
    assert lake_mounts == {"lake:/data"} and "`lake` is mounted at `/data`" in PRODUCTION


def test_stratum_settings_are_documented_with_their_defaults() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    named = {key for service in SERVICES.values() for key in service.get("environment", {})}
    named = {key for key in named if key.startswith("STRATUM_")}
    interpolated = dict(INTERPOLATION.findall(text))
    dockerfile = set(re.findall(r"\b(STRATUM_[A-Z_]+)=", (ROOT / "Dockerfile").read_text()))
    assert named and interpolated
    for name in named | set(interpolated) | dockerfile:
        assert name in SETTING_DEFAULTS, f"{name} is not in the README's Configuration table"
        assert f"`{name}`" in PRODUCTION, f"{name} is not named in the Production section"
    for name, default in interpolated.items():
        assert default == SETTING_DEFAULTS[name], name  # "defaults as in Configuration"


def test_only_the_api_publishes_a_port_where_the_readme_says() -> None:
    published = {name: s["ports"] for name, s in SERVICES.items() if s.get("ports")}
    assert list(published) == ["api"]
    (mapping,) = published["api"]
    *host, container = INTERPOLATION.sub(lambda m: m.group(1), mapping).split(":")
    bind, host_port = (host[0], host[1]) if len(host) == 2 else ("", host[0])
    command = SERVICES["api"]["command"]
    assert container == command[command.index("--port") + 1] == "8000"
    assert host_port == "STRATUM_PORT"
    assert "port 8000, published on the host's `STRATUM_PORT` (default 8000)" in ROWS["api"][0]
    # Bound to one address only if the README says so (which address is access control).
    assert (bind in PRODUCTION) if bind else ("127.0.0.1" not in PRODUCTION)


def test_services_start_in_the_order_the_readme_says() -> None:
    for name in ("init", "api", "scheduler"):
        waits = SERVICES[name]["depends_on"]
        assert waits["timescaledb"] == {"condition": "service_healthy"}, name
    assert "once the database is healthy" in ROWS["init"][0]
    for name in ("api", "scheduler"):
        assert SERVICES[name]["depends_on"]["init"] == {
            "condition": "service_completed_successfully"
        }
        assert "once `init` has finished" in ROWS[name][0]
    assert SERVICES["init"]["command"] == ["db", "init"]


def test_access_defaults_are_safe_and_documented() -> None:
    """Auth on, no password in the file, the port on the host's loopback only."""
    text = (ROOT / "docker-compose.yml").read_text()
    environment = SERVICES["api"]["environment"]
    assert environment["STRATUM_AUTH"] == "on" and "`STRATUM_AUTH` `on`" in PRODUCTION
    password = SERVICES["timescaledb"]["environment"]["POSTGRES_PASSWORD"]
    assert password == "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"  # required, no default
    assert "${POSTGRES_PASSWORD:?" in environment["STRATUM_DATABASE_URL"]
    assert not re.search(r"POSTGRES_PASSWORD:-", text) and "stratum:stratum@" not in text
    assert "`POSTGRES_PASSWORD`" in PRODUCTION
    (mapping,) = SERVICES["api"]["ports"]
    assert mapping.startswith("127.0.0.1:") and "loopback only (`127.0.0.1:" in PRODUCTION
