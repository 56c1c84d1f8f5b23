"""Fitbit Web API intraday responses (heart rate, steps) as validated raw rows.

A file is one response body as downloaded from Get Heart Rate Intraday by Date or Get
Activity Intraday by Date (resource `steps`), e.g.

    {"activities-heart": [{"dateTime": "2019-01-01", "value": {...}}],
     "activities-heart-intraday": {"dataset": [{"time": "00:00:00", "value": 64}, ...],
                                   "datasetInterval": 1, "datasetType": "second"}}

The response names neither the participant nor the time zone: its times are the wall-clock
time of the participant's device on `activities-<resource>[0].dateTime`. The caller gives the
participant (`--user`) and the IANA zone (`--tz`). On the day clocks go back, an hour's times
occur twice: while the dataset's times increase they are read as the first occurrence, and
once they step back (the repeated hour listed again) as the second. A time the clocks skipped
(the day they go forward) is refused. The rows then go through the ingest checks
(readers.validate_table).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa

from engine.errors import IngestRejected, InvalidParameter
from sync.readers import RAW_SCHEMA, validate_table

# Fitbit resource -> our metric.
RESOURCES = {"heart": "heart_rate", "steps": "steps"}
_SNIFF_BYTES = 64 << 10
_MAX_BYTES = 256 << 20  # one day at 1 s is ~3 MB; anything this large is not one response
_KEY = re.compile(rb'"activities-[a-z-]+"\s*:')
_TIME = re.compile(r"^(\d\d):(\d\d)(?::(\d\d))?$")
_MICROS = 1_000_000


def time_zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (e.g. Europe/Berlin), or InvalidParameter naming --tz."""
    text = name.strip()
    if not text or text.startswith(("/", ".")) or ".." in text:
        raise InvalidParameter("--tz", f"{name!r} is not an IANA time zone name (Europe/Berlin)")
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidParameter(
            "--tz", f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin or UTC"
        ) from None


def is_fitbit_response(path: Path) -> bool:
    """Whether a .json file is a Fitbit Web API response (one JSON object with an
    `activities-...` key) rather than NDJSON rows."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with path.open("rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    return head.lstrip().startswith(b"{") and _KEY.search(head) is not None


def read_fitbit(path: Path, user_id: int, zone: ZoneInfo) -> pa.Table:
    """The response's samples as validated raw rows (RAW_SCHEMA) of participant `user_id`."""
    file = str(path)
    if path.stat().st_size > _MAX_BYTES:
        raise IngestRejected(file, None, f"larger than {_MAX_BYTES >> 20} MiB: not one response")
    try:
        body = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IngestRejected(file, None, f"not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise IngestRejected(file, None, "a Fitbit response is one JSON object")
    resource = _resource(body, file)
    day = _day(body, resource, file)
    intraday = body[f"activities-{resource}-intraday"]
    dataset = intraday.get("dataset") if isinstance(intraday, dict) else None
    if not isinstance(dataset, list):
        raise IngestRejected(
            file, None, f"activities-{resource}-intraday has no dataset list of samples"
        )
    seconds, values = _samples(dataset, file)
    ts = _utc_micros(day, seconds, zone, file)
    table = pa.table(
        {
            "ts": pa.array(ts, pa.int64()).cast(RAW_SCHEMA.field("ts").type),
            "user_id": pa.array(np.full(len(ts), user_id, dtype=np.int64)),
            "metric": pa.array([RESOURCES[resource]] * len(ts), pa.string()),
            "value": pa.array(values, pa.float64()),
        }
    )
    return validate_table(table, file)


def _resource(body: dict[str, Any], file: str) -> str:
    found = [k for k in body if k.startswith("activities-") and k.endswith("-intraday")]
    supported = ", ".join(f"activities-{r}-intraday" for r in RESOURCES)
    if not found:
        raise IngestRejected(
            file, None, f"no intraday data (an activities-...-intraday key); supported: {supported}"
        )
    if len(found) > 1:
        raise IngestRejected(file, None, f"several intraday series ({', '.join(found)}); one only")
    resource = found[0].removeprefix("activities-").removesuffix("-intraday")
    if resource not in RESOURCES:
        raise IngestRejected(file, None, f"unsupported series {found[0]}; supported: {supported}")
    return resource


def _day(body: dict[str, Any], resource: str, file: str) -> date:
    summary = body.get(f"activities-{resource}")
    key = f"activities-{resource}[0].dateTime"
    if not isinstance(summary, list) or not summary or not isinstance(summary[0], dict):
        raise IngestRejected(file, None, f"missing {key}: the date the times belong to")
    if len(summary) > 1:
        raise IngestRejected(
            file, None, f"activities-{resource} lists {len(summary)} days; download one day a file"
        )
    text = summary[0].get("dateTime")
    if isinstance(text, str) and re.fullmatch(r"\d{4}-\d\d-\d\d", text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise IngestRejected(file, None, f"{key} {text!r} is not a date (YYYY-MM-DD)")


def _samples(dataset: list[Any], file: str) -> tuple[np.ndarray, list[float]]:
    """Seconds after local midnight and values, one per dataset entry (rows count from 1)."""
    seconds = np.empty(len(dataset), dtype=np.int64)
    values: list[float] = []
    for index, entry in enumerate(dataset):
        row = index + 1
        if not isinstance(entry, dict):
            raise IngestRejected(file, row, 'a dataset entry must be {"time": ..., "value": ...}')
        text = entry.get("time")
        match = _TIME.match(text) if isinstance(text, str) else None
        if match is None:
            raise IngestRejected(file, row, f"time {text!r} is not HH:MM:SS")
        hours, minutes, secs = int(match[1]), int(match[2]), int(match[3] or 0)
        if hours > 23 or minutes > 59 or secs > 59:
            raise IngestRejected(
                file, row, f"time {text!r} is not a time of day (00:00:00-23:59:59)"
            )
        value = entry.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise IngestRejected(file, row, f"value {value!r} is not a number")
        seconds[index] = hours * 3600 + minutes * 60 + secs
        values.append(float(value))
    return seconds, values


def _utc_micros(day: date, seconds: np.ndarray, zone: ZoneInfo, file: str) -> np.ndarray:
    """UTC epoch microseconds of local times `seconds` after midnight of `day` in `zone`."""
    midnight = datetime.combine(day, time(), zone)
    following = datetime.combine(day + timedelta(days=1), time(), zone)
    offset = midnight.utcoffset() or timedelta(0)
    if offset == following.utcoffset() and following - midnight == timedelta(days=1):
        # No transition this day: one offset for every sample (the common, fast case).
        base = int((datetime.combine(day, time(), UTC) - offset).timestamp()) * _MICROS
        return base + seconds * _MICROS
    out = np.empty(len(seconds), dtype=np.int64)
    fold, previous = 0, -1
    for index, second in enumerate(seconds.tolist()):
        fold = 1 if second < previous else fold  # the repeated hour, listed a second time
        previous = second
        local = datetime.combine(day, time(), zone) + timedelta(seconds=second)
        local = local.replace(fold=fold)
        instant = local.astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None, fold=0) != local.replace(
            tzinfo=None, fold=0
        ):
            raise IngestRejected(
                file,
                index + 1,
                f"{local.replace(tzinfo=None).isoformat()} does not exist in {zone.key} "
                "(the clocks skipped it)",
            )
        out[index] = int(instant.timestamp()) * _MICROS
    return out
