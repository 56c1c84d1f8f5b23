"""Answers in the participant's own calendar: tz on /data, /plan, /catalog and the CLI."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.cli import main
from sync.ingest import ingest_tables
from sync.localdb import LocalPostgres
from sync.rollups import refresh_rollups
from sync.schema import init_schema
from sync.zones import DAWN, ZoneChange, record
from tests.api.conftest import admin_client, api_settings

KOLKATA, NEW_YORK, TRAVELLER = 1, 2, 3
# A walk at 00:10 local time in Kolkata: the previous day in UTC.
WALK = datetime(2024, 3, 14, 18, 40, tzinfo=UTC)
MOVE = datetime(2024, 6, 10, 14, 0, tzinfo=UTC)  # New York -> London


def _minutes(user_id: int, first: datetime, last: datetime) -> pa.Table:
    """Steps once a minute (value 1) over [first, last)."""
    count = int((last - first).total_seconds() // 60)
    return pa.table(
        {
            "ts": pa.array(
                [first + timedelta(minutes=i) for i in range(count)], pa.timestamp("us", tz="UTC")
            ),
            "user_id": pa.array([user_id] * count, pa.int32()),
            "metric": ["steps"] * count,
            "value": [1.0] * count,
        }
    )


@pytest.fixture(scope="module")
def zones_url(pg_server: LocalPostgres) -> Iterator[str]:
    name = f"tz_{uuid.uuid4().hex[:12]}"
    base = pg_server.url.rsplit("/", 1)[0]
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    init_schema(url)
    walk = pa.table(
        {
            "ts": pa.array([WALK], pa.timestamp("us", tz="UTC")),
            "user_id": pa.array([KOLKATA], pa.int32()),
            "metric": ["steps"],
            "value": [500.0],
        }
    )
    dst = datetime(2024, 3, 9, tzinfo=UTC)
    move_day = datetime(2024, 6, 9, tzinfo=UTC)
    ingest_tables(
        url,
        [
            walk,
            _minutes(NEW_YORK, dst, dst + timedelta(days=4)),
            _minutes(TRAVELLER, move_day, move_day + timedelta(days=3)),
        ],
    )
    refresh_rollups(url)
    record(
        url,
        [
            ZoneChange(KOLKATA, DAWN, "Asia/Kolkata"),
            ZoneChange(NEW_YORK, DAWN, "America/New_York"),
            ZoneChange(TRAVELLER, DAWN, "America/New_York"),
            ZoneChange(TRAVELLER, MOVE, "Europe/London"),
        ],
    )
    yield url
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def client(zones_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(api_settings(tmp_path_factory.mktemp("tz")), zones_url)
    with admin_client(app, zones_url) as test_client:
        yield test_client


def rows(client: TestClient, **params: str) -> list[dict]:
    response = client.get("/data", params={"metric": "steps", **params})
    assert response.status_code == 200, response.text
    data: list[dict] = response.json()["data"]
    return data


def test_a_walk_after_local_midnight_is_on_that_local_day(client: TestClient) -> None:
    span = {"user_id": str(KOLKATA), "start": "2024-03-14", "end": "2024-03-16"}
    (utc,) = rows(client, **span, resolution="1d")
    assert utc["ts"] == "2024-03-14T00:00:00Z" and "local_date" not in utc  # UTC: unchanged
    (local,) = rows(client, **span, resolution="1d", tz="local")
    assert local == {
        "user_id": KOLKATA,
        "metric": "steps",
        "ts": "2024-03-14T18:30:00Z",  # Kolkata's midnight
        "count": 1,
        "sum": 500.0,
        "min": 500.0,
        "max": 500.0,
        "avg": 500.0,
        "local_date": "2024-03-15",
        "tz": "Asia/Kolkata",
        "day_minutes": 1440,
        "split": False,
    }


def test_new_yorks_spring_forward_day_is_1380_minutes(client: TestClient) -> None:
    answer = rows(
        client,
        user_id=str(NEW_YORK),
        start="2024-03-10",
        end="2024-03-12",  # dates: New York's own
        resolution="1d",
        tz="America/New_York",
    )
    assert [(r["local_date"], r["day_minutes"], r["count"]) for r in answer] == [
        ("2024-03-10", 1380, 1380),
        ("2024-03-11", 1440, 1440),
    ]
    assert answer[0]["ts"] == "2024-03-10T05:00:00Z"


def test_a_move_inside_a_day_splits_it_and_says_so(client: TestClient) -> None:
    answer = rows(
        client,
        user_id=str(TRAVELLER),
        start="2024-06-10",
        end="2024-06-11",
        resolution="1d",
        tz="local",
    )
    assert [
        (r["local_date"], r["tz"], r["ts"], r["day_minutes"], r["count"], r["split"])
        for r in answer
    ] == [
        ("2024-06-10", "America/New_York", "2024-06-10T04:00:00Z", 600, 600, True),
        ("2024-06-10", "Europe/London", "2024-06-10T14:00:00Z", 540, 540, True),
    ]


def test_weeks_and_months_in_utc(client: TestClient) -> None:
    weeks = rows(
        client, user_id=str(TRAVELLER), start="2024-06-01", end="2024-07-01", resolution="1w"
    )
    assert [(r["local_date"], r["count"], r["tz"]) for r in weeks] == [
        ("2024-06-03", 1440, "UTC"),  # 06-09 is a Sunday
        ("2024-06-10", 2 * 1440, "UTC"),  # weeks are labelled by their Monday
    ]
    (month,) = rows(
        client, user_id=str(NEW_YORK), start="2024-03-01", end="2024-04-01", resolution="1mo"
    )
    assert month["local_date"] == "2024-03-01" and month["count"] == 4 * 1440
    assert month["day_minutes"] == 31 * 1440


def test_plan_names_the_exact_tier(client: TestClient, zones_url: str) -> None:
    with psycopg.connect(zones_url, autocommit=True) as conn:
        conn.execute("DELETE FROM calendar_cache")  # what earlier tests asked is cached
    common = {"metric": "steps", "start": "2024-03-14", "end": "2024-03-16", "tz": "local"}
    kolkata = client.get("/plan", params={**common, "user_id": str(KOLKATA), "resolution": "1d"})
    assert kolkata.status_code == 200, kolkata.text
    plan = kolkata.json()
    assert plan["resolution"] == "1d" and plan["calendar"]["tier"] == "1m"
    assert plan["calendar"]["zones"] == ["Asia/Kolkata"] and plan["query"]["tz"] == "local"
    assert plan["calendar"]["cache"] == {"hits": 0, "misses": 2}
    # Kolkata's 03-14 and 03-15 span UTC 03-13 18:30 .. 03-15 18:30: three UTC days are read.
    (segment,) = plan["segments"]
    assert (segment["start"], segment["end"], segment["source"]) == (
        "2024-03-13T18:30:00+00:00",
        "2024-03-15T18:30:00+00:00",
        "data_1m",
    )
    new_york = client.get("/plan", params={**common, "user_id": str(NEW_YORK), "resolution": "1d"})
    assert new_york.json()["calendar"]["tier"] == "1h"  # whole-hour offsets


def test_plan_counts_cache_hits_and_reads_only_the_misses(
    client: TestClient, zones_url: str
) -> None:
    with psycopg.connect(zones_url, autocommit=True) as conn:
        conn.execute("DELETE FROM calendar_cache")
    params = {"user_id": str(KOLKATA), "metric": "steps", "resolution": "1d", "tz": "local"}
    rows(client, **params, start="2024-03-14", end="2024-03-15")  # fills 03-14
    plan = client.get("/plan", params={**params, "start": "2024-03-14", "end": "2024-03-16"})
    assert plan.json()["calendar"]["cache"] == {"hits": 1, "misses": 1}
    # Only Kolkata's 03-15 (UTC 03-14 18:30 .. 03-15 18:30) is read.
    (segment,) = plan.json()["segments"]
    assert (segment["start"], segment["end"]) == (
        "2024-03-14T18:30:00+00:00",
        "2024-03-15T18:30:00+00:00",
    )
    rows(client, **params, start="2024-03-14", end="2024-03-16")
    plan = client.get("/plan", params={**params, "start": "2024-03-14", "end": "2024-03-16"})
    assert plan.json()["calendar"]["cache"] == {"hits": 2, "misses": 0}
    assert plan.json()["segments"] == []


def test_cursor_pages_of_a_calendar_answer(client: TestClient) -> None:
    params = {
        "user_id": f"{NEW_YORK},{TRAVELLER}",
        "start": "2024-03-01",
        "end": "2024-07-01",
        "resolution": "1d",
        "tz": "local",
    }
    whole = rows(client, **params)
    assert len(whole) == 11  # local days with data, partial ones at the edges too
    paged, cursor = [], None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        response = client.get(
            "/data", params={"metric": "steps", **params, "page_size": "2", **extra}
        )
        assert response.status_code == 200
        paged += response.json()["data"]
        cursor = response.json()["meta"]["next"]
        if cursor is None:
            break
    assert paged == whole
    numbered = rows(client, **params, page_size="3", page_number="3")
    assert numbered == whole[6:9]


def test_csv_carries_the_calendar_columns(client: TestClient) -> None:
    response = client.get(
        "/data",
        params={
            "user_id": str(KOLKATA),
            "metric": "steps",
            "start": "2024-03-15",
            "end": "2024-03-16",
            "resolution": "1d",
            "tz": "Asia/Kolkata",
            "format": "csv",
        },
    )
    assert response.status_code == 200
    header, line = response.text.splitlines()
    assert header.endswith('"local_date","tz","day_minutes","split"')
    assert line.endswith('2024-03-15,"Asia/Kolkata",1440,false')


@pytest.mark.parametrize(
    ("params", "parameter", "text"),
    [
        ({"tz": "Mars/Olympus"}, "tz", "IANA"),
        ({"tz": "local", "start": "2024-03-14T00:00:00"}, "start", "offset"),
        ({"tz": "local", "resolution": "1h"}, "start", "calendar buckets"),
        ({"resolution": "1y"}, "resolution", "1mo"),
    ],
)
def test_bad_zone_parameters_are_400s_naming_them(
    client: TestClient, params: dict[str, str], parameter: str, text: str
) -> None:
    base = {"user_id": "1", "metric": "steps", "start": "2024-03-14", "end": "2024-03-16"}
    response = client.get("/data", params={**base, **params})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["parameter"] == parameter and text in error["message"]


def test_catalog_shows_zone_histories(client: TestClient) -> None:
    zones = client.get("/catalog").json()["time_zones"]
    assert zones["default"] == "UTC"
    traveller = next(p for p in zones["participants"] if p["user_id"] == TRAVELLER)
    assert [h["tz"] for h in traveller["history"]] == ["America/New_York", "Europe/London"]
    assert traveller["history"][1]["valid_from"] == "2024-06-10T14:00:00+00:00"


def test_cli_sets_and_loads_zones(
    warm_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STRATUM_DATABASE_URL", warm_url)
    monkeypatch.setenv("STRATUM_HOME", str(tmp_path / "home"))
    assert main(["tz", "set", "7", "asia/kathmandu"]) == 0  # names are matched case-blind
    changes = tmp_path / "moves.csv"
    changes.write_text("user_id,valid_from,tz\n7,2024-05-01T06:00:00+05:45,Pacific/Chatham\n")
    assert main(["tz", "load", str(changes)]) == 0
    assert main(["tz", "show", "7"]) == 0
    shown = capsys.readouterr().out
    assert "Asia/Kathmandu" in shown and "Pacific/Chatham" in shown
    assert "2024-05-01T00:15:00+00:00" in shown
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,valid_from,tz\n7,2024-05-01,UTC\n8,2024-05-02,Europe/Atlantis\n")
    assert main(["tz", "load", str(bad)]) != 0
    assert "bad.csv, row 3" in capsys.readouterr().err
    assert main(["tz", "set", "7", "Nowhere"]) != 0
    with psycopg.connect(warm_url) as conn:
        stored = conn.execute("SELECT count(*) FROM tz_history").fetchone()
    assert stored == (2,)  # a refused file writes nothing


def test_the_audit_row_names_the_bucket_and_zone(client: TestClient, zones_url: str) -> None:
    rows(
        client,
        user_id=str(KOLKATA),
        start="2024-03-15",
        end="2024-03-16",
        resolution="1w",
        tz="local",
    )
    with psycopg.connect(zones_url) as conn:
        logged = conn.execute(
            "SELECT resolution FROM access_audit WHERE path = '/data' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert logged == ("1w tz=local",)


def test_stratum_query_takes_tz(
    zones_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("STRATUM_DATABASE_URL", zones_url)
    monkeypatch.setenv("STRATUM_HOME", str(tmp_path / "home"))
    span = ["--user", str(KOLKATA), "--metric", "steps", "--start", "2024-03-15"]
    argv = ["query", *span, "--end", "2024-03-16", "--resolution", "1d", "--format", "csv"]
    assert main([*argv, "--tz", "local"]) == 0
    out = capfd.readouterr().out.splitlines()
    assert out[1].endswith('2024-03-15,"Asia/Kolkata",1440,false')
    assert main([*argv, "--tz", "Mars/Base"]) != 0
    assert "tz='Mars/Base' is not an IANA time zone" in capfd.readouterr().err


def test_catalog_without_the_warm_store_says_histories_are_unknown(tmp_path: Path) -> None:
    url = "postgresql://stratum@127.0.0.1:1/stratum"  # nothing listens on port 1
    settings = api_settings(tmp_path, STRATUM_AUTH="off", STRATUM_DEFAULT_TZ="Europe/Berlin")
    with TestClient(create_app(settings, url)) as down:
        response = down.get("/catalog")
    assert response.status_code == 200
    assert response.json()["time_zones"] == {"default": "Europe/Berlin", "participants": None}
