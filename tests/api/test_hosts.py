"""Only the Host names the server is served under are answered (DNS rebinding)."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.hosts import host_name
from engine.settings import load_settings, served_hosts


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:8000", "localhost"),
        ("LOCALHOST", "localhost"),
        ("[::1]:8000", "::1"),
        ("::1", "::1"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("evil.example:8000", "evil.example"),
        ("", ""),
    ],
)
def test_host_names(header: str, name: str) -> None:
    assert host_name(header) == name


def settings(tmp_path: Path, **extra: str):  # type: ignore[no-untyped-def]
    return load_settings({"STRATUM_HOME": str(tmp_path), **extra})


def test_defaults_are_the_bind_address_and_localhost(tmp_path: Path) -> None:
    assert served_hosts(settings(tmp_path).server) == ("127.0.0.1", "localhost", "::1")
    wild = settings(tmp_path, STRATUM_HOST="0.0.0.0").server
    assert served_hosts(wild) == ("localhost", "127.0.0.1", "::1")
    named = settings(tmp_path, STRATUM_HOST="10.1.2.3", STRATUM_ALLOWED_HOSTS="a.org, B.org")
    assert served_hosts(named.server) == ("a.org", "b.org")


@pytest.mark.parametrize("path", ["/health", "/data", "/catalog", "/nowhere"])
def test_another_host_is_400_in_the_error_shape(tmp_path: Path, path: str) -> None:
    app = create_app(settings(tmp_path), None)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
        response = client.get(path, headers={"Host": "rebound.attacker.example"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter" and error["parameter"] == "Host"
    assert "STRATUM_ALLOWED_HOSTS" in error["message"]


def test_a_star_answers_any_host(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path, STRATUM_ALLOWED_HOSTS="*"), None)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        response = client.get("/health", headers={"Host": "anything.example"})
    assert response.status_code == 200


def test_an_app_with_auth_off_is_refused_beyond_loopback(tmp_path: Path) -> None:
    from engine.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="STRATUM_AUTH=off"):
        create_app(settings(tmp_path, STRATUM_AUTH="off", STRATUM_HOST="0.0.0.0"), None)
    create_app(settings(tmp_path, STRATUM_AUTH="off"), None)  # 127.0.0.1: allowed
