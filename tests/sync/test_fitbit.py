"""Fitbit Web API intraday responses: local times to UTC with --tz, the participant from --user,
and clear refusals of anything else."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.errors import IngestRejected, InvalidParameter
from sync.fitbit import is_fitbit_response, read_fitbit, time_zone

FIXTURES = Path(__file__).parent / "fitbit"
BERLIN = time_zone("Europe/Berlin")


def rows(path: Path, user_id: int = 7, zone: str = "Europe/Berlin") -> list[tuple]:
    table = read_fitbit(path, user_id, time_zone(zone))
    return [(r["ts"], r["user_id"], r["metric"], r["value"]) for r in table.to_pylist()]


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_heart_rate_at_one_hertz_in_the_participants_zone() -> None:
    read = rows(FIXTURES / "heart_1sec.json")
    # 2019-01-01 in Berlin is UTC+1: local midnight is 23:00 UTC the day before.
    assert read[0] == (utc(2018, 12, 31, 23, 0, 0), 7, "heart_rate", 64.0)
    assert read[3] == (utc(2018, 12, 31, 23, 0, 5), 7, "heart_rate", 65.0)
    assert read[-1] == (utc(2019, 1, 1, 22, 59, 59), 7, "heart_rate", 58.0)
    assert len(read) == 6


def test_steps_per_minute_and_a_utc_download() -> None:
    read = rows(FIXTURES / "steps_1min.json", user_id=3, zone="UTC")
    assert read[1] == (utc(2019, 1, 1, 8, 15), 3, "steps", 61.0)
    assert [r[3] for r in read] == [0.0, 61.0, 72.0, 0.0]


def test_the_repeated_hour_of_the_fall_back_day_is_read_in_order() -> None:
    read = rows(FIXTURES / "heart_fall_back.json")
    # 2023-10-29 Berlin: 03:00 CEST (UTC+2) became 02:00 CET (UTC+1).
    assert [r[0] for r in read] == [
        utc(2023, 10, 28, 23, 59),  # 01:59 CEST
        utc(2023, 10, 29, 0, 0),  # 02:00 CEST, the first time
        utc(2023, 10, 29, 0, 30),
        utc(2023, 10, 29, 1, 0),  # 02:00 CET, listed again
        utc(2023, 10, 29, 1, 30),
        utc(2023, 10, 29, 2, 0),  # 03:00 CET
    ]


def test_a_time_the_clocks_skipped_is_refused() -> None:
    path = FIXTURES / "heart_spring_forward.json"
    with pytest.raises(IngestRejected) as caught:
        read_fitbit(path, 1, BERLIN)
    assert caught.value.row == 2
    assert "2023-03-26T02:30:00 does not exist in Europe/Berlin" in caught.value.message


def response(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((FIXTURES / "steps_1min.json").read_text())
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "row", "reason"),
    [
        ({"activities-steps": [{"dateTime": "2019-01-01"}]}, None, "no intraday data"),
        (
            response(**{"activities-calories-intraday": {"dataset": []}}),
            None,
            "several intraday series",
        ),
        (
            {"activities-calories-intraday": {"dataset": []}},
            None,
            "unsupported series activities-calories-intraday; supported: "
            "activities-heart-intraday, activities-steps-intraday",
        ),
        (response(**{"activities-steps": []}), None, "missing activities-steps[0].dateTime"),
        (
            response(**{"activities-steps": [{"dateTime": "2019-02-30"}]}),
            None,
            "activities-steps[0].dateTime '2019-02-30' is not a date",
        ),
        (
            response(**{"activities-steps": [{"dateTime": "2019-01-01"}, {"dateTime": "x"}]}),
            None,
            "lists 2 days; download one day a file",
        ),
        (
            response(**{"activities-steps-intraday": {"dataset": [{"time": "24:00:00"}]}}),
            1,
            "time '24:00:00' is not a time of day",
        ),
        (
            response(
                **{
                    "activities-steps-intraday": {
                        "dataset": [{"time": "00:00:00", "value": 1}, {"time": "1pm", "value": 2}]
                    }
                }
            ),
            2,
            "time '1pm' is not HH:MM:SS",
        ),
        (
            response(
                **{"activities-steps-intraday": {"dataset": [{"time": "00:01", "value": "12"}]}}
            ),
            1,
            "value '12' is not a number",
        ),
        (
            response(
                **{"activities-steps-intraday": {"dataset": [{"time": "00:01", "value": True}]}}
            ),
            1,
            "value True is not a number",
        ),
        (
            response(
                **{"activities-steps-intraday": {"dataset": [{"time": "00:01", "value": -1e400}]}}
            ),
            1,
            "value -inf is not a finite number",
        ),
        (response(**{"activities-steps-intraday": {}}), None, "has no dataset list"),
    ],
)
def test_a_malformed_response_is_refused_naming_the_entry(
    tmp_path: Path, body: dict[str, Any], row: int | None, reason: str
) -> None:
    path = tmp_path / "response.json"
    path.write_text(json.dumps(body))
    assert is_fitbit_response(path)
    with pytest.raises(IngestRejected) as caught:
        read_fitbit(path, 1, BERLIN)
    assert caught.value.row == row
    assert reason in caught.value.message


def test_only_responses_count_as_fitbit_files(tmp_path: Path) -> None:
    ndjson = tmp_path / "rows.json"
    ndjson.write_text(
        '{"ts": "2024-01-01T00:00:00Z", "user_id": 1, "metric": "steps", "value": 1}\n'
    )
    assert not is_fitbit_response(ndjson)
    assert is_fitbit_response(FIXTURES / "heart_1sec.json")
    assert not is_fitbit_response(tmp_path / "missing.json")


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "/usr/share/zoneinfo/UTC"])
def test_an_unknown_zone_is_refused_naming_the_option(name: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        time_zone(name)
    assert caught.value.parameter == "--tz"
