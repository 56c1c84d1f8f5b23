"""A synthetic, deterministic wearable cohort for tests, demos and benchmarks.

`generate_cohort` yields one Arrow table per user-day (bounded memory) in `COHORT_SCHEMA`;
`sync.cohort_files.write_cohort` writes them to a file.
Every random number of a user-day comes from streams keyed by (seed, user_id, day), so a
chunk is the same whichever cohort, metric subset or chunk order produced it.

The model, per user-day:
- user traits (resting heart rate, fitness, chronotype, SpO2/HRV/... baselines) keyed by
  (seed, user_id) only;
- a night starts each evening (bedtime 22:00-24:00) and ends the next morning (wake
  05:30-08:00) with a hypnogram of ~90-minute sleep cycles; night-only metrics (spo2, hrv,
  sleep_stage) are sampled only while in bed;
- during the day: walking bouts, 0-2 exercise sessions, and 1-4 off-wrist gaps (shower,
  charging: 10-90 min) during which the device reports nothing at all, for every metric.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa

from engine.errors import InvalidParameter
from engine.registry import METRICS

COHORT_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("user_id", pa.int32()),
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
    ]
)

DAY_S = 86_400
_MINUTES = DAY_S // 60
_US = 1_000_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_MAX_USER_ID = 2**31 - 1


def _tag(name: str) -> int:
    """A stable stream id for a name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode())


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


@dataclass(frozen=True)
class _Traits:
    """What makes one participant differ from another, for the whole study."""

    resting_hr: float
    peak_hr: float
    walk_bouts: float  # mean walking bouts per day
    exercise_p: float  # chance of an exercise session on a given day
    chronotype_s: float  # bedtime/wake shift, seconds
    spo2: float
    hrv_ms: float
    resp: float
    skin_c: float


def _traits(seed: int, user_id: int) -> _Traits:
    rng = _rng(seed, user_id, _tag("traits"))
    return _Traits(
        resting_hr=float(np.clip(rng.normal(61.0, 3.0), 54.0, 69.0)),
        peak_hr=float(rng.uniform(150.0, 172.0)),
        walk_bouts=float(rng.uniform(6.0, 14.0)),
        exercise_p=float(rng.uniform(0.3, 0.9)),
        chronotype_s=float(np.clip(rng.normal(0.0, 1800.0), -3600.0, 3600.0)),
        spo2=float(rng.uniform(95.0, 98.0)),
        hrv_ms=float(np.clip(rng.lognormal(np.log(45.0), 0.35), 15.0, 120.0)),
        resp=float(np.clip(rng.normal(14.5, 1.2), 11.0, 18.0)),
        skin_c=float(rng.normal(33.6, 0.4)),
    )


@dataclass(frozen=True)
class _Night:
    """The night that starts on the evening of its day and ends the next morning."""

    bed_s: int  # seconds after the day's midnight, in [22:00, 24:00)
    wake_s: int  # seconds after the next day's midnight, in [05:30, 08:00]
    stages: np.ndarray  # hypnogram, one stage per 30 s epoch from bedtime


def _night(seed: int, user_id: int, ordinal: int, traits: _Traits) -> _Night:
    rng = _rng(seed, user_id, ordinal, _tag("night"))
    bed = int(np.clip(23 * 3600 + traits.chronotype_s + rng.normal(0.0, 1200.0), 79_200, 86_399))
    sleep = rng.normal(7.6 * 3600, 0.6 * 3600)
    wake = int(np.clip(bed + sleep - DAY_S, 5.5 * 3600, 8 * 3600))
    epochs = -(-(wake + DAY_S - bed) // 30)
    return _Night(bed, wake, _hypnogram(rng, epochs))


def _hypnogram(rng: np.random.Generator, epochs: int) -> np.ndarray:
    """Sleep onset, then ~90 min cycles: deep sleep early in the night, REM later.

    Lengths are in 30 s epochs; a night has a handful of cycles, so this loop is tiny.
    """
    stages, lengths = [0], [int(rng.integers(10, 40))]
    cycle = 0
    while sum(lengths) < epochs:
        light, light_again = int(rng.integers(60, 100)), int(rng.integers(20, 50))
        deep = max(0, int(rng.normal(60 - 15 * cycle, 10)))
        rem = max(6, int(rng.normal(16 + 12 * cycle, 6)))
        stages += [1, 2, 1, 3]
        lengths += [light, deep, light_again, rem]
        if rng.random() < 0.35:  # a brief awakening between cycles
            stages.append(0)
            lengths.append(int(rng.integers(2, 10)))
        cycle += 1
    return np.repeat(np.array(stages, dtype=np.int8), lengths)[:epochs]


def _smooth(x: np.ndarray, tau: float, length: int) -> np.ndarray:
    """Causal exponential smoothing by convolution (tau in samples), no Python loop."""
    kernel = np.exp(-np.arange(length) / tau)
    return np.convolve(x, kernel / kernel.sum())[: len(x)]


def _slow_noise(rng: np.random.Generator, t: np.ndarray, sd: float, tau_min: float) -> np.ndarray:
    """Correlated noise: per-minute white noise smoothed over ~tau_min, read at seconds t.

    Draws a fixed amount of randomness, so the values do not depend on the sampling grid.
    """
    white = rng.normal(0.0, 1.0, _MINUTES + 1)
    kernel = np.exp(-np.arange(int(5 * tau_min) + 1) / tau_min)
    kernel /= np.sqrt((kernel**2).sum())  # unit variance after smoothing
    walk = np.convolve(white, kernel)[: _MINUTES + 1] * sd
    return np.interp(t / 60.0, np.arange(_MINUTES + 1), walk)


@dataclass(frozen=True)
class _Day:
    """The latent state of one user-day that every metric reads from."""

    traits: _Traits
    wake_s: int  # this morning
    bed_s: int  # tonight
    prev: _Night
    tonight: _Night
    off_wrist: np.ndarray  # bool per second
    effort_min: np.ndarray  # 0..1 fraction of heart-rate reserve, per minute, smoothed
    steps_min: np.ndarray  # steps counted in each minute
    hr_offset: float  # day-to-day variation

    def asleep(self, t: np.ndarray) -> np.ndarray:
        return (t < self.wake_s) | (t >= self.bed_s)

    def stage(self, t: np.ndarray) -> np.ndarray:
        """Sleep stage at seconds t; -1 while out of bed."""
        out = np.full(len(t), -1, dtype=np.int8)
        morning = t < self.wake_s
        out[morning] = self.prev.stages[(t[morning] + DAY_S - self.prev.bed_s) // 30]
        evening = t >= self.bed_s
        out[evening] = self.tonight.stages[(t[evening] - self.bed_s) // 30]
        return out

    def effort(self, t: np.ndarray) -> np.ndarray:
        return np.interp(t / 60.0, np.arange(_MINUTES) + 0.5, self.effort_min)

    def awake_level(self, t: np.ndarray) -> np.ndarray:
        """0 asleep, 1 up and about, ramping over 30 min around wake and bedtime."""
        return np.clip(np.minimum(t - self.wake_s, self.bed_s - t) / 1800.0 + 0.5, 0.0, 1.0)


def _day(
    seed: int, user_id: int, ordinal: int, traits: _Traits, prev: _Night, tonight: _Night
) -> _Day:
    rng = _rng(seed, user_id, ordinal, _tag("day"))
    wake, bed = prev.wake_s, tonight.bed_s
    up_from, up_to = wake // 60 + 15, bed // 60 - 30  # minutes when activity can start

    cadence = np.zeros(_MINUTES)
    effort = np.zeros(_MINUTES)
    for _ in range(rng.poisson(traits.walk_bouts)):
        start = int(rng.integers(up_from, up_to))
        length = int(np.clip(rng.lognormal(np.log(6.0), 0.7), 1, 45))
        cadence[start : start + length] = np.clip(rng.normal(105.0, 8.0), 80.0, 125.0)
        effort[start : start + length] = rng.uniform(0.12, 0.3)
    sessions = int(rng.random() < traits.exercise_p) + int(rng.random() < 0.15)
    for _ in range(sessions):
        length = int(rng.integers(5, 61))
        start = int(rng.integers(up_from, up_to - length))
        running = rng.random() < 0.6
        cadence[start : start + length] = np.clip(rng.normal(160.0, 8.0), 140.0, 178.0) * running
        # ramp intensity within the session: warm-up, peak, cool-down
        shape = np.sin(np.linspace(0.15, np.pi - 0.15, length)) ** 0.5
        effort[start : start + length] = rng.uniform(0.55, 1.0) * shape
    awake_min = np.zeros(_MINUTES, dtype=bool)
    awake_min[wake // 60 + 1 : bed // 60] = True
    pottering = awake_min & (cadence == 0) & (rng.random(_MINUTES) < 0.3)
    steps = np.where(cadence > 0, rng.normal(cadence, 6.0), 0.0)
    steps = np.where(pottering, rng.poisson(12.0, _MINUTES), steps)

    # Off-wrist gaps, one per equal slot of the waking day so that they never merge.
    off_wrist = np.zeros(DAY_S, dtype=bool)
    gaps = int(rng.integers(1, 5))
    slot = (bed - wake) // gaps  # >= 3.5 h, room for a 90 min gap
    for i in range(gaps):
        length = int(rng.integers(600, 5401))
        start = wake + i * slot + int(rng.integers(0, slot - length))
        off_wrist[start : start + length] = True
    # A device off the wrist counts no steps, so coarser step windows stay consistent.
    worn_min = ~off_wrist.reshape(_MINUTES, 60).any(axis=1)
    steps = np.clip(np.round(steps), 0, 180) * (awake_min & worn_min)

    return _Day(
        traits=traits,
        wake_s=wake,
        bed_s=bed,
        prev=prev,
        tonight=tonight,
        off_wrist=off_wrist,
        effort_min=_smooth(effort * awake_min, tau=1.5, length=10),
        steps_min=steps,
        hr_offset=float(rng.normal(0.0, 1.5)),
    )


# --- one function per metric: values at sample seconds t (already on the wrist) ---------

_STAGE_HR = np.array([6.0, 0.0, -3.0, 3.0, 0.0])  # awake-in-bed, light, deep, REM, (out of bed)
_STAGE_HRV = np.array([0.8, 1.0, 1.25, 0.9, 1.0])


def _heart_rate(day: _Day, t: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
    tr = day.traits
    circadian = np.cos(2 * np.pi * (t / DAY_S - 16 / 24))  # peak mid-afternoon
    base = tr.resting_hr + day.hr_offset + 15.0 * day.awake_level(t) + 2.5 * circadian
    base += _STAGE_HR[day.stage(t)]
    effort = day.effort(t)
    hr = base + effort * (tr.peak_hr - base)
    hr += _slow_noise(rng, t, 2.5, 4.0) * (1.0 + effort) + rng.normal(0.0, 1.2, len(t))
    return np.clip(np.round(hr), 38.0, 200.0)


def _steps(day: _Day, t: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
    """Steps in [t, t + step): read off the cumulative count so totals never depend on step."""
    cumulative = np.concatenate([[0.0], np.cumsum(day.steps_min)])
    minutes = np.arange(_MINUTES + 1)
    at = np.floor(np.interp(t / 60.0, minutes, cumulative))
    return np.floor(np.interp((t + step) / 60.0, minutes, cumulative)) - at


def _spo2(day: _Day, t: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
    value = day.traits.spo2 + _slow_noise(rng, t, 0.6, 10.0) + rng.normal(0.0, 0.4, len(t))
    in_bed = rng.uniform(day.bed_s, day.wake_s + DAY_S, rng.poisson(3)) % DAY_S
    for centre in in_bed:  # brief desaturations
        width = rng.uniform(60.0, 180.0)
        value -= rng.uniform(2.0, 5.0) * np.clip(1.0 - np.abs(t - centre) / width, 0.0, None)
    return np.clip(np.round(value, 1), 85.0, 100.0)


def _hrv(day: _Day, t: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
    factor = _STAGE_HRV[day.stage(t)] * np.exp(rng.normal(0.0, 0.18, len(t)))
    return np.clip(np.round(day.traits.hrv_ms * factor, 1), 5.0, 250.0)


def _respiratory_rate(day: _Day, t: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
    rem = day.stage(t) == 3
    value = day.traits.resp + np.where(day.asleep(t), -1.0, 0.5) + 14.0 * day.effort(t)
    value += _slow_noise(rng, t, 0.6, 8.0) + rng.normal(0.0, 0.3, len(t)) * (1.0 + 2.0 * rem)
    return np.clip(np.round(value, 2), 8.0, 40.0)


def _skin_temperature(day: _Day, t: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
    asleep = 1.0 - day.awake_level(t)  # distal skin warms during sleep
    value = day.traits.skin_c + 0.9 * asleep - 1.2 * day.effort(t)
    value += _slow_noise(rng, t, 0.25, 20.0) + rng.normal(0.0, 0.05, len(t))
    return np.clip(np.round(value, 2), 28.0, 37.5)


def _sleep_stage(day: _Day, t: np.ndarray, step: int, rng: np.random.Generator) -> np.ndarray:
    return day.stage(t).astype(np.float64)


_Model = Callable[[_Day, np.ndarray, int, np.random.Generator], np.ndarray]

# name -> (model, sampled only while in bed)
_MODELS: dict[str, tuple[_Model, bool]] = {
    "heart_rate": (_heart_rate, False),
    "steps": (_steps, False),
    "spo2": (_spo2, True),
    "hrv": (_hrv, True),
    "respiratory_rate": (_respiratory_rate, False),
    "skin_temperature": (_skin_temperature, False),
    "sleep_stage": (_sleep_stage, True),
}


def _choose_metrics(metrics: Sequence[str] | None) -> list[str]:
    valid = ", ".join(sorted(METRICS))
    if metrics is None:
        chosen = list(METRICS)
    elif isinstance(metrics, str):
        raise InvalidParameter("metrics", f"expected a list of metric names; valid: {valid}")
    else:
        chosen = list(dict.fromkeys(metrics))
    unknown = [m for m in chosen if m not in METRICS]
    if unknown:
        raise InvalidParameter("metrics", f"unknown metric(s) {', '.join(unknown)}; valid: {valid}")
    unmodelled = [m for m in chosen if m not in _MODELS]
    if unmodelled:
        raise InvalidParameter("metrics", f"no synthetic model for {', '.join(unmodelled)}")
    return chosen


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not low <= value <= high
    ):
        raise InvalidParameter(name, f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def generate_cohort(
    users: int,
    days: int,
    start: date,
    *,
    seed: int = 0,
    metrics: Sequence[str] | None = None,
    every_s: int | None = None,
    first_user_id: int = 1,
) -> Iterator[pa.Table]:
    """One table per user-day (users outer, days inner; within a table by metric, then ts).

    Each metric is sampled at its registry interval, or every `every_s` seconds if given
    (steps then counts the steps in each `every_s` window). Arguments are checked eagerly.
    """
    users = _check_int("users", users, 0, _MAX_USER_ID)
    days = _check_int("days", days, 0, 1_000_000)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    first_user_id = _check_int("first_user_id", first_user_id, 0, _MAX_USER_ID)
    if users and first_user_id + users - 1 > _MAX_USER_ID:
        raise InvalidParameter("users", f"user ids must fit in int32 (<= {_MAX_USER_ID})")
    if every_s is not None:
        every_s = _check_int("every_s", every_s, 1, DAY_S)
    if not isinstance(start, date):
        raise InvalidParameter("start", f"start must be a date, got {start!r}")
    chosen = _choose_metrics(metrics)
    first_day = date(start.year, start.month, start.day).toordinal()
    return _generate(users, days, first_day, seed, chosen, every_s, first_user_id)


def _generate(
    users: int,
    days: int,
    first_day: int,
    seed: int,
    metrics: list[str],
    every_s: int | None,
    first_user_id: int,
) -> Iterator[pa.Table]:
    for user_id in range(first_user_id, first_user_id + users):
        traits = _traits(seed, user_id)
        prev = _night(seed, user_id, first_day - 1, traits)
        for ordinal in range(first_day, first_day + days):
            tonight = _night(seed, user_id, ordinal, traits)
            day = _day(seed, user_id, ordinal, traits, prev, tonight)
            yield _user_day_table(day, seed, user_id, ordinal, metrics, every_s)
            prev = tonight


def _user_day_table(
    day: _Day, seed: int, user_id: int, ordinal: int, metrics: list[str], every_s: int | None
) -> pa.Table:
    day_start_s = (ordinal - _EPOCH_ORDINAL) * DAY_S
    batches = []
    for name in metrics:
        step = every_s or METRICS[name].native_interval_s
        first = -day_start_s % step  # align to the interval since the epoch, not the day
        t = np.arange(first, DAY_S, step, dtype=np.int64)
        model, night_only = _MODELS[name]
        keep = ~day.off_wrist[t]
        if night_only:
            keep &= day.asleep(t)
        t = t[keep]
        values = model(day, t, step, _rng(seed, user_id, ordinal, _tag(name)))
        ts = pa.array((t + day_start_s) * _US, type=COHORT_SCHEMA.field("ts").type)
        batches.append(
            pa.record_batch(
                [
                    ts,
                    pa.repeat(pa.scalar(user_id, pa.int32()), len(t)),
                    pa.repeat(pa.scalar(name, pa.string()), len(t)),
                    pa.array(values.astype(np.float64, copy=False)),
                ],
                schema=COHORT_SCHEMA,
            )
        )
    return pa.Table.from_batches(batches, schema=COHORT_SCHEMA)
