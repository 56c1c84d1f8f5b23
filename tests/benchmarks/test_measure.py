"""The bench's rounds: every backend in each, in an order of its own (benchmarks/measure.py)."""

from __future__ import annotations

from itertools import islice

from benchmarks.measure import round_orders
from benchmarks.suite import BACKEND_ORDER


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
