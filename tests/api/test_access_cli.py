"""`stratum cohort`, `stratum key`: keys are shown once, stored hashed, scoped, revocable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from api.cli import main
from engine.access import authenticate, hash_key
from engine.errors import InvalidParameter, Unauthenticated
from sync.access import parse_user_ranges


@pytest.fixture
def cli_url(warm_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("STRATUM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STRATUM_DATABASE_URL", warm_url)
    return warm_url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_user_ranges() -> None:
    assert parse_user_ranges("1-3,52, 2") == [1, 2, 3, 52]
    for bad in ("", "a", "3-1", "-1", "1-x"):
        with pytest.raises(InvalidParameter):
            parse_user_ranges(bad)


def test_a_key_is_printed_once_stored_hashed_and_scoped(
    cli_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "cohort", "create", "study", "--users", "1-3,7")[0] == 0
    assert run(capsys, "cohort", "remove", "study", "--users", "2")[0] == 0
    assert run(capsys, "cohort", "add", "study", "--users", "9")[0] == 0
    code, out, _ = run(capsys, "cohort", "list")
    assert code == 0 and "study" in out and "4" in out
    code, out, _ = run(
        capsys, "key", "create", "--name", "ana", "--cohort", "study", "--metrics", "steps"
    )
    assert code == 0
    key_text = out.splitlines()[-1]
    assert key_text.startswith("stratum_") and len(key_text) > 40
    with psycopg.connect(cli_url) as conn:
        stored = conn.execute("SELECT key_hash FROM api_keys WHERE name = 'ana'").fetchone()
        assert stored == (hash_key(key_text),)
        principal = authenticate(conn, key_text)
    assert principal.users == frozenset({1, 3, 7, 9})
    assert principal.metrics == frozenset({"steps"}) and not principal.admin
    code, out, _ = run(capsys, "key", "list")
    assert code == 0 and "ana" in out and key_text not in out and "live" in out
    assert run(capsys, "key", "revoke", "ana")[0] == 0
    with psycopg.connect(cli_url) as conn, pytest.raises(Unauthenticated):
        authenticate(conn, key_text)


def test_admin_keys_and_expiry(cli_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "key", "create", "--name", "root", "--admin", "--expires", "1h")
    assert code == 0
    key_text = out.splitlines()[-1]
    with psycopg.connect(cli_url, autocommit=True) as conn:
        assert authenticate(conn, key_text).admin
        conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 s'")
        with pytest.raises(Unauthenticated):
            authenticate(conn, key_text)
    code, out, _ = run(capsys, "key", "list")
    assert "expired" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["key", "create", "--name", "x", "--cohort", "nope"], "no cohort named 'nope'"),
        (["key", "create", "--name", "bad name", "--admin"], "a name is"),
        (["key", "create", "--name", "x", "--admin", "--metrics", "pulse"], "unknown metric"),
        (["key", "revoke", "ghost"], "no key named 'ghost'"),
        (["cohort", "add", "ghost", "--users", "1"], "no cohort named 'ghost'"),
    ],
)
def test_bad_access_commands_say_why(
    argv: list[str], message: str, cli_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and "stratum_" not in out


def test_duplicate_names_are_refused(cli_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "key", "create", "--name", "dup", "--admin")[0] == 0
    code, out, err = run(capsys, "key", "create", "--name", "dup", "--admin")
    assert code == 2 and "exists" in err and out == ""
    assert run(capsys, "cohort", "create", "c", "--users", "1")[0] == 0
    assert run(capsys, "cohort", "create", "c", "--users", "1")[0] == 2


def test_audit_reads_filters_and_prunes(cli_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.audit import AuditEntry, write_entry

    with psycopg.connect(cli_url, autocommit=True) as conn:
        for name, users, status in (("ana", (1, 2), 200), ("bob", (7,), 403)):
            write_entry(
                conn,
                AuditEntry(name, "GET", "/data", "10.0.0.1", users=users, status=status),
            )
        conn.execute(
            "INSERT INTO access_audit (at, key_name, method, path, status, duration_ms) "
            "VALUES (now() - interval '400 days', 'old', 'GET', '/catalog', 200, 1)"
        )
    code, out, _ = run(capsys, "audit")
    assert code == 0 and all(name in out for name in ("ana", "bob", "old"))
    code, out, _ = run(capsys, "audit", "--key", "bob")
    assert "bob" in out and "ana" not in out and "403" in out
    code, out, _ = run(capsys, "audit", "--user", "2")
    assert "ana" in out and "bob" not in out
    since = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    code, out, _ = run(capsys, "audit", "--since", since)
    assert "ana" in out and "/catalog" not in out
    code, out, _ = run(capsys, "audit", "--prune")
    assert code == 0 and "dropped 1 access-log rows older than 365 days" in out
    assert "old" not in out.splitlines()[-1]
    code, out, _ = run(capsys, "audit", "--key", "old")
    assert "/catalog" not in out


def test_the_audit_log_is_append_only(cli_url: str) -> None:
    from engine.audit import AuditEntry, write_entry

    with psycopg.connect(cli_url, autocommit=True) as conn:
        write_entry(conn, AuditEntry("ana", "GET", "/data", None, status=200))
        for statement in (
            "UPDATE access_audit SET key_name = 'someone else'",
            "DELETE FROM access_audit",
            "TRUNCATE access_audit",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)
        assert conn.execute("SELECT key_name FROM access_audit").fetchall() == [("ana",)]
