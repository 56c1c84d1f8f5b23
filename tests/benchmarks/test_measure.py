"""The bench's rounds: every backend in each, in an order of its own, and how
many (benchmarks/measure.py)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import islice

from benchmarks.backends import Backend, Timed
from benchmarks.measure import round_orders, run_case, run_pair
from benchmarks.presets import PRESETS
from benchmarks.suite import BACKEND_ORDER
from benchmarks.workloads import Case


def _predecessors(orders: list[list[str]], key: str) -> set[str]:
    """What ran just before `key`, round after round (the previous round's last before a
    round's first)."""
    sequence = [k for order in orders for k in order]
    return {sequence[i - 1] for i, k in enumerate(sequence) if k == key and i}


def test_each_round_runs_every_backend_once() -> None:
    for order in islice(round_orders(list(BACKEND_ORDER), "a case"), 20):
        assert sorted(order) == sorted(BACKEND_ORDER)


def test_no_backend_always_follows_the_same_neighbour() -> None:
    """A fixed order made the backend after the heaviest one pay for its cold caches in
    every run."""
    orders = list(islice(round_orders(list(BACKEND_ORDER), "a case"), 5))
    for key in BACKEND_ORDER:
        assert len(_predecessors(orders, key)) > 1, (key, orders)


def test_a_case_gets_the_same_orders_each_time() -> None:
    first = list(islice(round_orders(list(BACKEND_ORDER), "a case"), 5))
    again = list(islice(round_orders(list(BACKEND_ORDER), "a case"), 5))
    assert first == again


def _raw_case(span: str, length: timedelta) -> Case:
    """One participant's heart rate, raw, over `length` from 2024-01-01."""
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return Case("span", span, "1", (1,), ("heart_rate",), start, start + length, "raw", "raw")


class _Sleeper(Backend):
    """A backend whose every run takes `seconds` (time is what the loop budgets)."""

    def __init__(self, key: str, seconds: float) -> None:
        self.key = key
        self.seconds = seconds

    def prepare(self, case: Case) -> Timed:
        def run() -> int:
            time.sleep(self.seconds)
            return 1

        return run


def test_short_backends_run_more_times_and_long_ones_stop_at_the_maximum() -> None:
    """5 runs of a 1-3 ms workload left its ratios +-0.2 apart from one bench to the next:
    a short backend goes on up to short_repetitions runs within short_budget_s, a long one
    stops at max_repetitions as before. Each run notes its round (runs of one round share
    its number), so a ratio can compare the rounds both backends ran."""
    preset = replace(
        PRESETS["ci"],
        warmup=0,
        min_repetitions=2,
        max_repetitions=3,
        cell_budget_s=10.0,
        short_repetitions=9,
        short_budget_s=0.1,
    )
    case = _raw_case("1 day", timedelta(days=1))
    backends = {"short": _Sleeper("short", 0.001), "long": _Sleeper("long", 0.06)}
    result = run_case(case, backends, preset, None)
    assert len(result.results["short"].times_s) == 9
    assert len(result.results["long"].times_s) == 3
    assert all(m.status == "ok" for m in result.results.values())
    assert result.results["short"].rounds == list(range(9))
    assert result.to_json()["results"]["long"]["rounds"] == [0, 1, 2]


class _Recorder(Backend):
    """A backend that notes each of its runs in a shared log."""

    def __init__(self, key: str, log: list[str]) -> None:
        self.key = key
        self.log = log

    def prepare(self, case: Case) -> Timed:
        def run() -> int:
            self.log.append(self.key)
            return 1

        return run


def test_a_pair_alternates_which_runs_first_and_times_every_round() -> None:
    """Side by side, neither backend always runs right after the other: the order flips
    each round, after one warm-up each."""
    case = _raw_case("1 year", timedelta(days=366))
    log: list[str] = []
    pair = run_pair(case, _Recorder("a", log), _Recorder("b", log), rounds=4)
    assert log == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert pair["rounds"] == 4 and pair["case"] == case.id
    assert len(pair["times_s"]["measured"]) == len(pair["times_s"]["reference"]) == 4
    medians = pair["median_s"]
    assert pair["ratio"] == medians["measured"] / medians["reference"]
