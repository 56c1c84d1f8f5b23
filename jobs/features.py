"""The cohort jobs: per participant-day features, as Daft expressions over the lake's 1m tier.

Every job reads `agg_1m` (one row per user, metric and UTC minute: count, sum, min, max of
the raw samples) and answers one row per (user_id, date), the UTC day. Sums go through a
sorted list first (`_exact_sum`): a float sum then does not depend on how the rows were
split into partitions, so the answer in process and on a Ray cluster is the same to the bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:  # daft is an optional extra (`pip install stratum[jobs]`)
    from daft import DataFrame, Expression

MINUTES_PER_DAY = 1440
RESTING_LOWEST_MINUTES = 10  # resting heart rate: the mean of this many lowest minute means
NIGHT_END_HOUR = 6  # nightly HRV: samples from 00:00 up to 06:00 UTC of the day


@dataclass(frozen=True)
class Job:
    name: str
    summary: str  # one line: what a row says
    definition: str  # how it is computed (README and `stratum job list`)
    metrics: tuple[str, ...]  # what it reads from agg_1m
    columns: pa.Schema  # its columns after user_id and date
    compute: Callable[[DataFrame], DataFrame]  # agg_1m rows -> one row per (user_id, date)
    # Values for a participant-day the lake holds but with no rows of the job's metrics.
    empty: dict[str, object]


def _col(name: str) -> Expression:
    from daft import col

    return col(name)


def _lit(value: object) -> Expression:
    from daft import lit

    return lit(value)


def _exact_sum(expression: Expression) -> Expression:
    """A sum that is the same however the rows were partitioned (sorted, then added)."""
    return expression.list_agg().list_sort().list_sum()


def _heart_minutes(rows: DataFrame) -> DataFrame:
    return rows.where((_col("metric") == _lit("heart_rate")) & (_col("count") > _lit(0)))


def _wear_time(rows: DataFrame) -> DataFrame:
    minutes = _heart_minutes(rows).groupby("user_id", "date").agg(_col("ts").count().alias("n"))
    return minutes.select(
        "user_id",
        "date",
        _col("n").cast("int64").alias("wear_minutes"),
        (_col("n").cast("float64") / MINUTES_PER_DAY).alias("coverage"),
    )


def _resting_heart_rate(rows: DataFrame) -> DataFrame:
    means = _heart_minutes(rows).with_column("bpm", _col("sum") / _col("count"))
    per_day = means.groupby("user_id", "date").agg(
        _col("bpm").list_agg().alias("minute_means"), _col("bpm").count().alias("minutes")
    )
    lowest = _col("minute_means").list_sort().slice(0, RESTING_LOWEST_MINUTES)
    from daft.functions import when

    resting = when(_col("minutes") >= _lit(RESTING_LOWEST_MINUTES), lowest.list_mean())
    return per_day.select("user_id", "date", resting.cast("float64").alias("resting_hr_bpm"))


def _daily_steps(rows: DataFrame) -> DataFrame:
    steps = rows.where(_col("metric") == _lit("steps"))
    return steps.groupby("user_id", "date").agg(_exact_sum(_col("sum")).alias("steps"))


def _nightly_hrv(rows: DataFrame) -> DataFrame:
    night = rows.where(
        (_col("metric") == _lit("hrv"))
        & (_col("count") > _lit(0))
        & (_col("ts").hour() < _lit(NIGHT_END_HOUR))
    )
    totals = night.groupby("user_id", "date").agg(
        _exact_sum(_col("sum")).alias("total"), _col("count").sum().alias("samples")
    )
    return totals.select(
        "user_id",
        "date",
        (_col("total") / _col("samples")).alias("hrv_night_ms"),
        _col("samples").cast("int64").alias("hrv_night_samples"),
    )


SINGLE_JOBS: tuple[Job, ...] = (
    Job(
        name="wear_time",
        summary="minutes of the UTC day with heart-rate data, and that share of the day",
        definition=(
            "wear_minutes: the 1-minute buckets of the UTC day holding at least one "
            "heart-rate sample (what /data answers at resolution=1m for heart_rate: "
            "its rows); coverage: wear_minutes / 1440"
        ),
        metrics=("heart_rate",),
        columns=pa.schema([("wear_minutes", pa.int64()), ("coverage", pa.float64())]),
        compute=_wear_time,
        empty={"wear_minutes": 0, "coverage": 0.0},
    ),
    Job(
        name="resting_hr",
        summary="resting heart rate of the UTC day (bpm)",
        definition=(
            f"resting_hr_bpm: the mean of the {RESTING_LOWEST_MINUTES} lowest 1-minute "
            "mean heart rates of the UTC day (minutes with at least one sample); null "
            f"when the day has fewer than {RESTING_LOWEST_MINUTES} such minutes"
        ),
        metrics=("heart_rate",),
        columns=pa.schema([("resting_hr_bpm", pa.float64())]),
        compute=_resting_heart_rate,
        empty={"resting_hr_bpm": None},
    ),
    Job(
        name="daily_steps",
        summary="steps of the UTC day",
        definition=(
            "steps: the sum of the day's step samples (/data's 1d sum for steps); "
            "null when the day has no step samples"
        ),
        metrics=("steps",),
        columns=pa.schema([("steps", pa.float64())]),
        compute=_daily_steps,
        empty={"steps": None},
    ),
    Job(
        name="nightly_hrv",
        summary="mean HRV of the night ending on the morning of the UTC day (ms)",
        definition=(
            f"hrv_night_ms: the mean of the HRV samples from 00:00 to "
            f"{NIGHT_END_HOUR:02d}:00 UTC of the day (sum / count of its 1-minute "
            "buckets); hrv_night_samples: how many samples; null and 0 when none. "
            "Night is UTC, not the participant's local time"
        ),
        metrics=("hrv",),
        columns=pa.schema([("hrv_night_ms", pa.float64()), ("hrv_night_samples", pa.int64())]),
        compute=_nightly_hrv,
        empty={"hrv_night_ms": None, "hrv_night_samples": 0},
    ),
)


def _every_feature(rows: DataFrame) -> DataFrame:
    """The four jobs' columns side by side: one pass over the rows, one table."""
    joined = SINGLE_JOBS[0].compute(rows)
    for job in SINGLE_JOBS[1:]:
        joined = joined.join(job.compute(rows), on=["user_id", "date"], how="outer")
    # A day with some metrics but not others: the missing jobs' own empty values.
    filled = [
        _col(name).fill_null(_lit(value)) if value is not None else _col(name)
        for job in SINGLE_JOBS
        for name, value in job.empty.items()
    ]
    return joined.select("user_id", "date", *filled)


DAILY = Job(
    name="daily",
    summary="every feature above, one row per participant-day",
    definition="the columns of wear_time, resting_hr, daily_steps and nightly_hrv, as defined "
    "there, side by side (one pass over the lake)",
    metrics=tuple(sorted({metric for job in SINGLE_JOBS for metric in job.metrics})),
    columns=pa.schema([field for job in SINGLE_JOBS for field in job.columns]),
    compute=_every_feature,
    empty={name: value for job in SINGLE_JOBS for name, value in job.empty.items()},
)

JOBS: dict[str, Job] = {job.name: job for job in (*SINGLE_JOBS, DAILY)}

KEY_SCHEMA = pa.schema(
    [pa.field("user_id", pa.int32(), nullable=False), pa.field("date", pa.date32(), nullable=False)]
)


def output_schema(job: Job) -> pa.Schema:
    return pa.schema([*KEY_SCHEMA, *job.columns])
