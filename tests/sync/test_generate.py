"""The synthetic cohort: deterministic, realistic enough, and written faithfully."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pj
import pyarrow.parquet as pq
import pytest

from engine.errors import InvalidParameter
from engine.registry import METRICS
from sync.cohort_files import write_cohort
from sync.generate import COHORT_SCHEMA, generate_cohort

START = date(2024, 1, 1)
DAY_US = 86_400 * 1_000_000
NIGHT_HOURS = {22, 23, 0, 1, 2, 3, 4, 5, 6, 7}


def _cohort(**kwargs: object) -> pa.Table:
    args: dict = {"users": 2, "days": 3, "start": START, "seed": 3, **kwargs}
    return pa.concat_tables(generate_cohort(**args))


@pytest.fixture(scope="module")
def cohort() -> pa.Table:
    return _cohort()


def _metric(table: pa.Table, name: str) -> pa.Table:
    return table.filter(pc.equal(table["metric"], name))


def _us(table: pa.Table) -> np.ndarray:
    return pc.cast(table["ts"], pa.int64()).to_numpy()


def _hours(table: pa.Table) -> set[int]:
    return set((_us(table) // 3_600_000_000 % 24).tolist())


def _values(table: pa.Table) -> np.ndarray:
    return table["value"].to_numpy()


def test_same_arguments_give_identical_chunks() -> None:
    first = list(generate_cohort(2, 2, START, seed=11))
    second = list(generate_cohort(2, 2, START, seed=11))
    assert len(first) == len(second) == 4
    assert all(a.equals(b) for a, b in zip(first, second, strict=True))


def test_different_seeds_differ(cohort: pa.Table) -> None:
    other = _cohort(seed=4)
    assert not cohort.equals(other)
    hr, other_hr = _metric(cohort, "heart_rate"), _metric(other, "heart_rate")
    assert hr.num_rows != other_hr.num_rows or not hr["value"].equals(other_hr["value"])


def test_chunks_are_independent_of_the_cohort_around_them(cohort: pa.Table) -> None:
    """User 2's third day alone equals that user-day inside the bigger cohort."""
    alone = _cohort(users=1, days=1, start=date(2024, 1, 3), first_user_id=2)
    day3 = DAY_US * (date(2024, 1, 3) - date(1970, 1, 1)).days
    us = _us(cohort)
    inside = cohort.filter(
        pa.array((cohort["user_id"].to_numpy() == 2) & (us >= day3) & (us < day3 + DAY_US))
    )
    assert alone.equals(inside)


def test_metric_subset_gives_the_same_values(cohort: pa.Table) -> None:
    subset = _cohort(metrics=["spo2", "heart_rate"])
    for name in ("spo2", "heart_rate"):
        assert _metric(subset, name).equals(_metric(cohort, name))


def test_schema_and_one_table_per_user_day() -> None:
    tables = list(generate_cohort(2, 3, START, seed=1, first_user_id=7))
    assert len(tables) == 6
    for table in tables:
        assert table.schema.equals(COHORT_SCHEMA)
        assert table.schema.field("metric").type == pa.string()  # not dictionary
        assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
        assert len(set(table["user_id"].to_pylist())) == 1
        assert len(set((_us(table) // DAY_US).tolist())) == 1
    assert [t["user_id"][0].as_py() for t in tables] == [7, 7, 7, 8, 8, 8]


def test_default_is_every_registry_metric(cohort: pa.Table) -> None:
    assert set(cohort["metric"].to_pylist()) == set(METRICS)


def test_timestamps_inside_their_day_aligned_and_increasing() -> None:
    for day_index, table in enumerate(generate_cohort(1, 3, START, seed=2)):
        day_start = DAY_US * ((START - date(1970, 1, 1)).days + day_index)
        for name, metric in METRICS.items():
            us = _us(_metric(table, name))
            assert len(us) > 0
            assert us.min() >= day_start and us.max() < day_start + DAY_US
            assert np.all(us % (metric.native_interval_s * 1_000_000) == 0)
            assert np.all(np.diff(us) > 0)


def test_values_are_plausible(cohort: pa.Table) -> None:
    ranges = {
        "heart_rate": (38, 200),
        "steps": (0, 180),
        "spo2": (85, 100),
        "hrv": (5, 250),
        "respiratory_rate": (8, 40),
        "skin_temperature": (28, 37.5),
        "sleep_stage": (0, 3),
    }
    for name, (low, high) in ranges.items():
        values = _values(_metric(cohort, name))
        assert values.min() >= low and values.max() <= high, name
    for name in ("heart_rate", "steps", "sleep_stage"):
        values = _values(_metric(cohort, name))
        assert np.array_equal(values, np.round(values)), f"{name} reports integers"
    assert set(_values(_metric(cohort, "sleep_stage")).tolist()) == {0, 1, 2, 3}


def test_heart_rate_has_a_circadian_rhythm_and_activity(cohort: pa.Table) -> None:
    hr = _metric(cohort, "heart_rate")
    hour = _us(hr) // 3_600_000_000 % 24
    values = _values(hr)
    night = np.median(values[(hour >= 1) & (hour < 5)])
    day = np.median(values[(hour >= 9) & (hour < 21)])
    assert 48 <= night <= 64
    assert 65 <= day <= 85
    assert values.max() >= 120  # exercise bursts


def test_night_only_metrics_are_only_at_night(cohort: pa.Table) -> None:
    for name in ("spo2", "hrv", "sleep_stage"):
        assert _hours(_metric(cohort, name)) <= NIGHT_HOURS, name
    steps = _metric(cohort, "steps")
    small_hours = (_us(steps) // 3_600_000_000 % 24) < 5
    assert _values(steps)[small_hours].max() == 0
    assert _values(steps).sum() > 0


def test_off_wrist_gaps_silence_every_metric(cohort: pa.Table) -> None:
    for user_id in (1, 2):
        mine = cohort.filter(pc.equal(cohort["user_id"], user_id))
        hr = np.sort(_us(_metric(mine, "heart_rate"))) // 1_000_000
        step = np.diff(hr)
        gaps = step[step > 1]
        assert 3 <= len(gaps) <= 12  # 1-4 a day over 3 days
        assert gaps.min() >= 600 and gaps.max() <= 5401  # 10-90 min
        # nothing else is reported while heart rate is missing
        begins, ends = hr[:-1][step > 1], hr[1:][step > 1]
        other = _us(mine.filter(pc.not_equal(mine["metric"], "heart_rate"))) // 1_000_000
        which = np.searchsorted(begins, other, side="right") - 1
        inside = (which >= 0) & (other > begins[which]) & (other < ends[which])
        assert not inside.any()


def test_every_s_changes_density_and_keeps_step_totals(cohort: pa.Table) -> None:
    coarse = _cohort(every_s=300)
    for name in METRICS:
        dense_rows, coarse_rows = _metric(cohort, name).num_rows, _metric(coarse, name).num_rows
        if METRICS[name].native_interval_s < 300:
            assert coarse_rows < dense_rows, name
        assert np.all(_us(_metric(coarse, name)) % 300_000_000 == 0)
    hr_per_day = _metric(coarse, "heart_rate").num_rows / 6
    assert 200 < hr_per_day <= 288
    # steps count what happened in each window, so daily totals barely move
    dense_total = _values(_metric(cohort, "steps")).sum()
    coarse_total = _values(_metric(coarse, "steps")).sum()
    assert abs(coarse_total - dense_total) / dense_total < 0.05


def test_every_s_not_dividing_a_day_stays_aligned_to_the_epoch() -> None:
    table = _cohort(users=1, days=2, metrics=["heart_rate"], every_s=7)
    assert np.all(_us(table) % 7_000_000 == 0)


def test_metrics_filter_keeps_order_and_drops_duplicates() -> None:
    table = _cohort(users=1, days=1, metrics=["steps", "hrv", "steps"])
    names = table["metric"].to_pylist()
    assert list(dict.fromkeys(names)) == ["steps", "hrv"]


def test_unknown_metric_names_the_valid_ones_before_iterating() -> None:
    with pytest.raises(InvalidParameter) as caught:
        generate_cohort(1, 1, START, metrics=["heart_rate", "blood_sugar"])
    assert caught.value.parameter == "metrics"
    assert "blood_sugar" in caught.value.message
    assert all(name in caught.value.message for name in METRICS)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"users": -1}, "users"),
        ({"days": 1.5}, "days"),
        ({"every_s": 0}, "every_s"),
        ({"seed": -3}, "seed"),
        ({"first_user_id": 2**31}, "first_user_id"),
        ({"metrics": "heart_rate"}, "metrics"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict, parameter: str) -> None:
    args: dict = {"users": 1, "days": 1, "start": START, **kwargs}
    with pytest.raises(InvalidParameter) as caught:
        generate_cohort(**args)
    assert caught.value.parameter == parameter


# --- writers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small() -> list[pa.Table]:
    return list(generate_cohort(2, 1, START, seed=5, every_s=30))


def _read(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    if path.suffix == ".csv":
        table = pcsv.read_csv(path)
        ts_type = table.schema.field("ts").type
        assert pa.types.is_timestamp(ts_type) and ts_type.tz in ("UTC", "+00:00")
        return table.cast(COHORT_SCHEMA)
    options = pj.ParseOptions(explicit_schema=COHORT_SCHEMA)
    return pj.read_json(path, parse_options=options)


@pytest.mark.parametrize("ext", [".parquet", ".csv", ".ndjson", ".jsonl"])
def test_write_read_round_trip(tmp_path: Path, small: list[pa.Table], ext: str) -> None:
    path = tmp_path / f"cohort{ext}"
    rows = write_cohort(path, iter(small))
    expected = pa.concat_tables(small)
    assert rows == expected.num_rows
    back = _read(path)
    assert back.schema.equals(COHORT_SCHEMA)
    assert back.equals(expected)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left


def test_csv_and_ndjson_timestamps_are_iso_8601_with_zone(
    tmp_path: Path, small: list[pa.Table]
) -> None:
    write_cohort(tmp_path / "c.csv", small)
    write_cohort(tmp_path / "c.ndjson", small)
    csv_lines = (tmp_path / "c.csv").read_text().splitlines()
    assert csv_lines[0] == '"ts","user_id","metric","value"'
    assert re.match(r'^"2024-01-01T00:00:00Z",1,"heart_rate",\d+$', csv_lines[1])
    with open(tmp_path / "c.ndjson") as lines:
        for line, _ in zip(lines, range(100), strict=False):
            row = json.loads(line)
            assert set(row) == {"ts", "user_id", "metric", "value"}
            ts = datetime.fromisoformat(row["ts"])
            assert ts.tzinfo is not None and ts.utcoffset() is not None
            assert ts.astimezone(UTC).date() == START


def test_ndjson_writes_non_finite_values_as_null(tmp_path: Path) -> None:
    table = pa.table(
        {
            "ts": pa.array([0, 1_500_000], pa.timestamp("us", tz="UTC")),
            "user_id": pa.array([1, 2], pa.int32()),
            "metric": ['odd "name"', "x"],
            "value": [float("nan"), 1.5],
        }
    )
    write_cohort(tmp_path / "odd.jsonl", [table])
    rows = [json.loads(line) for line in (tmp_path / "odd.jsonl").read_text().splitlines()]
    assert rows == [
        {"ts": "1970-01-01T00:00:00Z", "user_id": 1, "metric": 'odd "name"', "value": None},
        {"ts": "1970-01-01T00:00:01.500000Z", "user_id": 2, "metric": "x", "value": 1.5},
    ]


def test_write_nothing_gives_an_empty_readable_file(tmp_path: Path) -> None:
    assert write_cohort(tmp_path / "empty.parquet", []) == 0
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0


def test_unknown_extension_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter) as caught:
        write_cohort(tmp_path / "cohort.xlsx", [])
    assert caught.value.parameter == "out"
    assert ".parquet" in caught.value.message and ".csv" in caught.value.message
    assert list(tmp_path.iterdir()) == []
