"""UTC time as stratum writes it: the instant a day starts, and ISO 8601 text for Arrow arrays.

The text is what the API renders (JSON, NDJSON, CSV) and what the cohort files hold, built
vectorised from lookup tables: pyarrow's strftime manages ~0.5M values/s, this an order of
magnitude more. No imports of ours, so the write side (sync) shares it.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_US = 1_000_000
_DAY_S = 86_400
# datetime64[D] text is YYYY-MM-DD only for years 1..9999.
_FIRST_DAY, _LAST_DAY = -719_162, 2_932_896
_WHOLE = len("2024-01-01T00:00:00Z")
_FRACTION = len(".ffffff")


def midnight(day: date) -> datetime:
    """The UTC instant a day starts."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@functools.cache
def _clock() -> np.ndarray:
    """'HH:MM:SS' for every second of a day, as an (86400, 8) byte table."""
    second = np.arange(_DAY_S)
    text = np.empty((_DAY_S, 8), dtype=np.uint8)
    text[:] = np.frombuffer(b"00:00:00", dtype=np.uint8)
    for value, at in ((second // 3600, 0), (second // 60 % 60, 3), (second % 60, 6)):
        text[:, at] += (value // 10).astype(np.uint8)
        text[:, at + 1] += (value % 10).astype(np.uint8)
    return text


def _dates(days: np.ndarray) -> np.ndarray:
    """'YYYY-MM-DD' per day number, as an (n, 10) byte table."""
    first = int(days.min())
    span = int(days.max()) - first + 1
    if span <= len(days) + 366:  # a calendar of the span costs less than sorting the days
        calendar, index = np.arange(first, first + span), days - first
    else:
        calendar, index = np.unique(days, return_inverse=True)
    text = calendar.astype("datetime64[D]").astype("S10").tobytes()
    return np.frombuffer(text, dtype=np.uint8).reshape(-1, 10)[index.reshape(-1)]


def iso_utc(ts: pa.Array | pa.ChunkedArray, prefix: str = "", suffix: str = "") -> pa.Array:
    """prefix + ISO 8601 UTC text + suffix per value: '2024-01-01T00:00:00Z', with '.ffffff'
    on the values that have a fraction of a second (not on their whole batch)."""
    if isinstance(ts, pa.ChunkedArray):
        ts = ts.combine_chunks()
    ts = ts.cast(pa.timestamp("us", tz="UTC"))
    if len(ts) == 0:
        return pa.array([], pa.string())
    if ts.null_count:
        return _value_by_value(ts, prefix, suffix)
    us = ts.cast(pa.int64()).to_numpy()
    seconds, fraction = np.divmod(us, _US)
    days, second_of_day = np.divmod(seconds, _DAY_S)
    if days.min() < _FIRST_DAY or days.max() > _LAST_DAY:
        return _value_by_value(ts, prefix, suffix)
    head, tail = prefix.encode(), suffix.encode()
    has_fraction = fraction != 0
    any_fraction = bool(has_fraction.any())
    body = _WHOLE + _FRACTION if any_fraction else _WHOLE
    width = len(head) + body + len(tail)
    text = np.empty((len(us), width), dtype=np.uint8)
    at = len(head)
    text[:, :at] = np.frombuffer(head, dtype=np.uint8)
    text[:, at : at + 10] = _dates(days)
    text[:, at + 10] = ord("T")
    text[:, at + 11 : at + 19] = _clock()[second_of_day]
    if any_fraction:
        text[:, at + 19] = ord(".")
        for digit in range(6):
            text[:, at + 20 + digit] = fraction // 10 ** (5 - digit) % 10 + ord("0")
    text[:, at + body - 1] = ord("Z")
    text[:, at + body :] = np.frombuffer(tail, dtype=np.uint8)
    if not any_fraction or has_fraction.all():
        return _strings(text, np.arange(len(us) + 1, dtype=np.int64) * width)
    # Mixed: drop '.000000' from the values without a fraction.
    keep = np.ones(text.shape, dtype=bool)
    keep[~has_fraction, at + 19 : at + 19 + _FRACTION] = False
    offsets = np.zeros(len(us) + 1, dtype=np.int64)
    np.cumsum(np.where(has_fraction, width, width - _FRACTION), out=offsets[1:])
    return _strings(text[keep], offsets)


def _value_by_value(ts: pa.Array, prefix: str, suffix: str) -> pa.Array:
    """The rare path, the same text one value at a time: nulls (they stay null) and years
    beyond four digits, which the day table cannot hold."""
    us = pc.fill_null(ts.cast(pa.int64()), 0).to_numpy()
    whole = np.datetime_as_string(us.astype("datetime64[us]"), unit="s")
    fraction = us % _US
    texts = [
        f"{prefix}{w}{f'.{f:06d}' if f else ''}Z{suffix}"
        for w, f in zip(whole, fraction, strict=True)
    ]
    return pc.if_else(pc.is_valid(ts), pa.array(texts, pa.string()), pa.scalar(None, pa.string()))


def _strings(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """A string array over `data` (the characters, concatenated) cut at `offsets`."""
    large = data.size >= 2**31
    kind = pa.large_string() if large else pa.string()
    offsets = offsets if large else offsets.astype(np.int32)
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))]
    return pa.Array.from_buffers(kind, len(offsets) - 1, buffers)


def string_bytes(strings: pa.Array) -> memoryview:
    """The characters of a string array without nulls, concatenated (rendered text, ready to
    send or write without a copy per row)."""
    offsets_buffer, data_buffer = strings.buffers()[1:3]
    width = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, dtype=width)
    begin, end = int(offsets[strings.offset]), int(offsets[strings.offset + len(strings)])
    return memoryview(b"") if data_buffer is None else memoryview(data_buffer)[begin:end]
