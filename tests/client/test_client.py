"""The Python client against a real `stratum serve`: its answers are /data's, its errors the
server's, and busy answers (429, 503) are waited out as Retry-After says, a bounded number
of times."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from stratum_client import Client, StratumError
from stratum_client.client import _retry_after_s

from sync.access import create_cohort
from tests.client.conftest import BIG_USER, Served, held_stream

USERS = [1, 2, 3]
METRICS = ["heart_rate", "steps"]
START, END = "2024-01-01", "2024-01-03"  # the first day in the lake, the second warm
RESOLUTIONS = ["raw", "1m", "1h", "1d", "auto"]


def json_rows(served: Served, key: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """/data's JSON answer, every page (following `next`), as the client's rows look: `ts` as
    an aware datetime."""
    rows: list[dict[str, Any]] = []
    query = {**params, "format": "json", "page_size": "5000"}
    headers = {"Authorization": f"Bearer {key}"}
    while True:
        response = httpx.get(served.url + "/data", params=query, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        body = response.json()
        rows += body["data"]
        if body["meta"]["next"] is None:
            break
        query["cursor"] = body["meta"]["next"]
    for row in rows:
        row["ts"] = datetime.fromisoformat(row["ts"].replace("Z", "+00:00"))
    return rows


@pytest.fixture(scope="module")
def admin_key(served: Served) -> str:
    return served.key()


@pytest.fixture(scope="module")
def stratum(served: Served, admin_key: str) -> Iterator[Client]:
    with Client(served.url, admin_key) as client:
        yield client


def hours(served: Served) -> pa.Table:
    """Participant 1's hourly heart rate, read from an idle server."""
    with Client(served.url, served.key()) as client:
        return client.read_arrow(1, "heart_rate", START, END, "1h")


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_read_is_the_answer_of_data(
    stratum: Client, served: Served, admin_key: str, resolution: str
) -> None:
    params = {
        "user_id": "1,2,3",
        "metric": "heart_rate,steps",
        "start": START,
        "end": END,
        "resolution": resolution,
    }
    expected = json_rows(served, admin_key, params)
    assert len(expected) > 10
    table = stratum.read_arrow(USERS, METRICS, START, END, resolution)
    assert table.to_pylist() == expected
    frame = stratum.read(USERS, METRICS, START, END, resolution)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(expected[0])
    assert str(frame["ts"].dt.tz) == "UTC"
    records = frame.to_dict("records")
    for record in records:
        record["ts"] = record["ts"].to_pydatetime()
    assert records == expected
    assert stratum.read_polars(USERS, METRICS, START, END, resolution).to_dicts() == expected


def test_width_asks_for_the_m4_answer(stratum: Client, served: Served, admin_key: str) -> None:
    """`width=N`: the server's M4 answer (downsample=m4), whose extrema per series are the raw
    answer's, in at most 4 rows per pixel column and series."""
    width = 50
    params = {"user_id": "1,2", "metric": "heart_rate", "start": START, "end": END}
    params["resolution"] = "raw"
    expected = json_rows(served, admin_key, {**params, "downsample": "m4", "width": str(width)})
    m4 = stratum.read_arrow([1, 2], "heart_rate", START, END, "raw", width=width)
    assert m4.to_pylist() == expected
    raw = stratum.read_arrow([1, 2], "heart_rate", START, END, "raw")
    assert m4.num_rows <= 4 * width * 2 < raw.num_rows

    def extrema(table: pa.Table) -> pa.Table:
        return table.group_by("user_id").aggregate([("value", "min"), ("value", "max")])

    assert extrema(m4).sort_by("user_id") == extrema(raw).sort_by("user_id")
    planned = stratum.plan([1, 2], "heart_rate", START, END, "raw", width=width)["query"]
    assert (planned["downsample"], planned["width"]) == ("m4", width)


def test_the_answer_comes_from_the_lake_and_the_warm_store(stratum: Client) -> None:
    plan = stratum.plan(USERS, METRICS, START, END, "raw")
    assert plan["sources"] == ["lake", "warm"]
    assert plan["query"]["users"] == USERS
    lake = [s for s in plan["segments"] if s["backend"] == "lake"]
    assert lake and all(s["files"] > 0 for s in lake)


@pytest.mark.parametrize("resolution", ["raw", "1m"])
def test_following_cursors_gives_what_one_stream_gives(stratum: Client, resolution: str) -> None:
    streamed = stratum.read_arrow(USERS, METRICS, START, END, resolution)
    paged = stratum.read_arrow(USERS, METRICS, START, END, resolution, page_size=997)
    # More rows than a page holds: the client followed the cursors through several pages.
    assert streamed.num_rows > 3 * 997
    assert paged.equals(streamed)
    assert paged.schema == streamed.schema


def test_max_points_steers_the_automatic_resolution(stratum: Client) -> None:
    """Two days: at most 5000 points per series gives minutes; 48 gives hours."""
    assert stratum.plan(1, "heart_rate", START, END)["resolution"] == "1m"
    assert stratum.plan(1, "heart_rate", START, END, max_points=48)["resolution"] == "1h"
    hourly = stratum.read_arrow(1, "heart_rate", START, END, max_points=48)
    assert hourly.equals(stratum.read_arrow(1, "heart_rate", START, END, "1h"))


def test_arguments_in_their_python_types(stratum: Client) -> None:
    as_text = stratum.read_arrow("1,2", "heart_rate", "2024-01-01T06:00:00Z", "2024-01-01T07:00Z")
    as_objects = stratum.read_arrow(
        (1, 2),
        ["heart_rate"],
        datetime(2024, 1, 1, 6, tzinfo=UTC),
        pd.Timestamp("2024-01-01T07:00", tz="UTC"),
    )
    assert as_text.num_rows > 0 and as_objects.equals(as_text)
    whole_days = stratum.read_arrow(1, "steps", date(2024, 1, 1), date(2024, 1, 2), "1h")
    assert whole_days.num_rows > 0
    assert whole_days.equals(stratum.read_arrow(1, "steps", "2024-01-01", "2024-01-02", "1h"))


def test_an_empty_answer_keeps_its_columns(stratum: Client) -> None:
    table = stratum.read_arrow(1, "heart_rate", "2030-01-01", "2030-01-02", "1h")
    assert table.num_rows == 0
    assert table.schema.names == ["user_id", "metric", "ts", "count", "sum", "min", "max", "avg"]
    assert stratum.read(1, "heart_rate", "2030-01-01", "2030-01-02", "raw").empty
    assert isinstance(
        stratum.read_polars(1, "heart_rate", "2030-01-01", "2030-01-02"), pl.DataFrame
    )


def test_the_catalog_lists_what_the_key_sees(served: Served, stratum: Client) -> None:
    catalog = stratum.catalog()
    assert catalog["users"] == [*USERS, BIG_USER]
    assert "heart_rate" in {m["name"] for m in catalog["metrics"]}
    create_cohort(served.database_url, "client_first_two", [1, 2])
    scoped = served.key(cohorts=("client_first_two",), metrics=["heart_rate"])
    with Client(served.url, scoped) as narrow:
        seen = narrow.catalog()
        assert seen["users"] == [1, 2]
        assert [m["name"] for m in seen["metrics"]] == ["heart_rate"]
        with pytest.raises(StratumError) as refused:
            narrow.read_arrow([1, 3], "heart_rate", START, END)
    error = refused.value
    assert (error.status, error.code, error.parameter) == (403, "forbidden", "user_id")
    assert "participant 3" in error.message


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda c: c.read_arrow(1, "pulse", START, END), "metric"),
        (lambda c: c.read(1, "heart_rate", END, START), "end"),
        (lambda c: c.read_arrow(1, "heart_rate", START, END, "2m"), "resolution"),
        (lambda c: c.plan(1, "heart_rate", "yesterday", END), "start"),
        (lambda c: c.read_arrow(1, "heart_rate", START, END, page_size=10**9), "page_size"),
    ],
)
def test_a_400_is_a_stratum_error_naming_the_parameter(
    stratum: Client, call: Any, parameter: str
) -> None:
    with pytest.raises(StratumError) as raised:
        call(stratum)
    error = raised.value
    assert (error.status, error.code, error.parameter) == (400, "invalid_parameter", parameter)
    assert error.message and parameter in str(error)


@pytest.mark.parametrize("key", ["", " stratum_x", "stratum_x\r\nX-Admin: 1", "a b\t"])
def test_a_key_that_cannot_be_a_header_is_refused_at_once(key: str) -> None:
    with pytest.raises(ValueError, match="^key: "):
        Client("http://127.0.0.1:9", key)


@pytest.mark.parametrize("key", [None, "stratum_not_a_key"])
def test_without_a_live_key_it_is_401(served: Served, key: str | None) -> None:
    with Client(served.url, key) as client, pytest.raises(StratumError) as raised:
        client.catalog()
    assert (raised.value.status, raised.value.code) == (401, "unauthenticated")


def test_a_server_that_is_not_there_is_a_stratum_error() -> None:
    with socket.socket() as sock:  # a port just free: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}") as client, pytest.raises(StratumError) as raised:
        client.catalog()
    assert raised.value.status is None and raised.value.code == "connection_failed"


def test_tz_is_sent_only_when_given(stratum: Client, served: Served, admin_key: str) -> None:
    """Without tz the request is the one every server knows; with it, the server sees it
    (one that knows tz answers as /data does, one that does not names the parameter)."""
    params = {"user_id": "1", "metric": "steps", "start": START, "end": END}
    plain = stratum.read_arrow(1, "steps", START, END, "1h")
    assert plain.to_pylist() == json_rows(served, admin_key, {**params, "resolution": "1h"})
    probe = httpx.get(
        served.url + "/data",
        params={**params, "tz": "Europe/Paris"},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    if probe.status_code == 400:
        with pytest.raises(StratumError) as raised:
            stratum.read_arrow(1, "steps", START, END, "1h", tz="Europe/Paris")
        assert raised.value.parameter == "tz"
    else:
        expected = json_rows(
            served, admin_key, {**params, "resolution": "1h", "tz": "Europe/Paris"}
        )
        got = stratum.read_arrow(1, "steps", START, END, "1h", tz="Europe/Paris")
        assert got.to_pylist() == expected


# -- busy servers: real 429s and 503s ------------------------------------------------------


def test_a_busy_key_is_retried_after_its_retry_after(tight: Served) -> None:
    """STRATUM_MAX_REQUESTS_PER_KEY=1 and a stream of the same key running: 429."""
    key = tight.key()
    waited: list[float] = []
    with held_stream(tight, key) as release:

        def wait(seconds: float) -> None:
            waited.append(seconds)
            release()  # the stream that holds the key's one slot ends while we wait
            time.sleep(seconds)

        with Client(tight.url, key, sleep=wait) as client:
            table = client.read_arrow(1, "heart_rate", START, END, "1h")
    assert table.num_rows > 0 and table.equals(hours(tight))
    assert waited and set(waited) == {1.0}  # KeyBusy's Retry-After


def test_a_full_memory_budget_is_retried_after_its_retry_after(tight: Served) -> None:
    """STRATUM_MEMORY_BUDGET=64MiB and another key's stream holding it: 503 budget_exhausted."""
    waited: list[float] = []
    with held_stream(tight, tight.key()) as release:

        def wait(seconds: float) -> None:
            waited.append(seconds)
            release()
            time.sleep(seconds)

        with Client(tight.url, tight.key(), sleep=wait) as client:
            table = client.read_arrow(1, "heart_rate", START, END, "1h")
    assert table.num_rows > 0 and table.equals(hours(tight))
    assert waited and set(waited) == {2.0}  # BudgetExhausted's Retry-After


@pytest.mark.parametrize("retries", [0, 2])
def test_retries_are_bounded(tight: Served, retries: int) -> None:
    key = tight.key()
    waited: list[float] = []
    with (
        held_stream(tight, key),
        Client(tight.url, key, retries=retries, sleep=waited.append) as client,
        pytest.raises(StratumError) as raised,
    ):
        client.read_arrow(1, "heart_rate", START, END, "1h")
    error = raised.value
    assert (error.status, error.code, error.retry_after_s) == (429, "key_busy", 1.0)
    assert waited == [1.0] * retries
    # The stream is over, the slot free: the same key reads again.
    with Client(tight.url, key) as client:
        assert client.read_arrow(1, "heart_rate", START, END, "1h").equals(hours(tight))


def test_arrow_tables_keep_the_server_types(stratum: Client) -> None:
    raw = stratum.read_arrow(1, "heart_rate", START, END, "raw")
    assert raw.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert raw.schema.field("user_id").type == pa.int32()
    assert raw.schema.field("value").type == pa.float64()


def test_each_wait_is_capped(tight: Served) -> None:
    key = tight.key()
    waited: list[float] = []
    with (
        held_stream(tight, key),
        Client(tight.url, key, retries=1, max_retry_wait_s=0.25, sleep=waited.append) as client,
        pytest.raises(StratumError),
    ):
        client.read_arrow(1, "heart_rate", START, END, "1h")
    assert waited == [0.25]  # the server asked for 1 s


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("2", 2.0), ("0", 0.0), ("-3", 0.0), (None, None), ("soon", None), ("", None)],
)
def test_retry_after_is_read_as_seconds(header: str | None, seconds: float | None) -> None:
    assert _retry_after_s(header) == seconds


def test_retry_after_may_be_an_http_date() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert 0 < (_retry_after_s(later) or 0) <= 120
    assert _retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: at once


def test_a_stream_left_half_read_does_not_spoil_the_next_answer(stratum: Client) -> None:
    """Its unread bytes would be taken for the next answer on a kept-alive connection: the
    connection of a stream abandoned early is closed, not reused."""
    expected = stratum.read_arrow(1, "heart_rate", START, END, "1h")
    batches = stratum.iter_batches(BIG_USER, "heart_rate", START, END, "raw")
    assert next(batches).num_rows > 0
    batches.close()  # most of the two days at 1 Hz is still unread
    assert stratum.read_arrow(1, "heart_rate", START, END, "1h").equals(expected)


def test_one_client_serves_threads_at_once(stratum: Client) -> None:
    expected = stratum.read_arrow(USERS, METRICS, START, END, "1m")
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: stratum.read_arrow(USERS, METRICS, START, END, "1m"), range(8))
        )
    assert all(answer.equals(expected) for answer in answers)
