"""`stratum sync`, `sync status`, `tier`, `maintain` and `scheduler --once` end to end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from api.cli import main
from lake import TIERS, Lake
from sync.runs import SYNC_LOCK, recent_runs
from tests.sync.lakesync import assert_lake_equals_source, day_state

USERS, DAYS = 2, 4  # the cohort ends yesterday (UTC)


@pytest.fixture
def env(warm_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("STRATUM_DATABASE_URL", warm_url)
    monkeypatch.setenv("STRATUM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STRATUM_LAKE_PATH", str(tmp_path / "lake"))
    monkeypatch.setenv("STRATUM_SYNC_GRACE_DAYS", "1")
    monkeypatch.setenv("STRATUM_SYNC_BATCH_DAYS", "2")
    monkeypatch.setenv("STRATUM_VACUUM_RETENTION_HOURS", "0")
    assert main(["generate", "--users", str(USERS), "--days", str(DAYS), "--every", "60"]) == 0
    return warm_url


def test_sync_status_tier_maintain(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    today = datetime.now(UTC).date()
    capsys.readouterr()

    assert main(["sync"]) == 0  # refreshes the rollups first
    out = capsys.readouterr().out
    assert f"synced {USERS * (DAYS - 1)} user-days" in out and "rows/s" in out
    lake = Lake(tmp_path / "lake")
    assert all(lake.version(tier) is not None for tier in TIERS)
    assert_lake_equals_source(env, lake, before=today - timedelta(days=1))

    assert main(["tier", "--older-than", "2"]) == 0
    assert f"tiered {USERS * (DAYS - 2)} user-days" in capsys.readouterr().out
    assert sum(s[3] is not None for s in day_state(env).values()) == USERS * (DAYS - 2)

    assert main(["maintain", "--retention-hours", "0"]) == 0
    assert "vacuum deleted" in capsys.readouterr().out

    assert main(["sync", "status"]) == 0
    status = capsys.readouterr().out
    for text in (
        "last runs",
        "maintain",
        "tier",
        "sync",
        "refresh",
        "coverage per user",
        "days tiered",
        "agg_1h",
    ):
        assert text in status
    yesterday_but_one = (today - timedelta(days=2)).isoformat()
    assert status.count(yesterday_but_one) >= USERS  # last lake day of each user
    assert [r.status for r in recent_runs(env)] == ["ok"] * 4


def test_second_sync_exits_2_with_a_clear_message(
    env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with psycopg.connect(env, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (SYNC_LOCK,))
        assert main(["sync", "--no-refresh"]) == 2
    err = capsys.readouterr().err
    assert "another sync or tiering run is running" in err and "Traceback" not in err
    assert [(r.job, r.status) for r in recent_runs(env)] == [("sync", "failed")]


def test_scheduler_once_runs_the_nightly_job(env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scheduler", "--once"]) == 0
    assert "nightly job: ok" in capsys.readouterr().out
    jobs = {r.job: r.status for r in recent_runs(env)}
    steps = ("nightly", "refresh", "sync", "tier", "compress", "maintain", "verify")
    assert jobs == dict.fromkeys((*steps, "prefill_cache", "prune_cache"), "ok")


def test_verify_and_repair(env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A truncated lake file: `verify` names it (exit 2), `sync status` too, `repair`
    re-exports the day from the warm store (exit 0) and `verify` is clean again."""
    assert main(["sync"]) == 0
    assert main(["verify"]) == 0
    capsys.readouterr()
    day = datetime.now(UTC).date() - timedelta(days=DAYS)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    (damaged,) = Lake(tmp_path / "lake").files("raw", [1], start, start + timedelta(days=1)).files
    path = Path(damaged.path)
    path.write_bytes(path.read_bytes()[:100])
    days = (damaged.last_day - damaged.first_day).days + 1  # the file's days are all damaged

    assert main(["verify"]) == 2
    out = capsys.readouterr()
    assert f"{days} damaged lake days" in out.out and str(day) in out.out + out.err
    assert main(["sync", "status"]) == 2
    assert "damaged lake days" in capsys.readouterr().out

    assert main(["repair"]) == 0
    assert f"re-exported {days} damaged lake days" in capsys.readouterr().out
    assert main(["verify"]) == 0
    assert main(["sync", "status"]) == 0


def test_prefill_computes_the_changed_days_once(
    env: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["sync"]) == 0  # rolls the days up: the prefill takes rolled-up days
    with psycopg.connect(env) as conn:
        row = conn.execute("SELECT count(*) FROM day_state").fetchone()
    days = int(row[0]) if row else 0
    capsys.readouterr()

    assert main(["prefill"]) == 0
    out = capsys.readouterr().out
    assert f"prefilled {days} participant-days" in out and "0 already cached" in out
    assert main(["prefill"]) == 0
    assert "prefilled 0 participant-days in 0 requests" in capsys.readouterr().out
    assert main(["prefill", "--all"]) == 0
    out = capsys.readouterr().out
    assert f"{days} days marked" in out and "0 entries computed" in out
    assert [r.job for r in recent_runs(env)].count("prefill_cache") == 3

    monkeypatch.setenv("STRATUM_CALENDAR_PREFILL", "none")
    assert main(["prefill"]) == 0
    assert "no prefill" in capsys.readouterr().out
