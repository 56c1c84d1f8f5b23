"""The memory budget's lane for small queries (issue 11, point 4): large reservations leave
it free, so a stalled stream cannot make every quick question wait."""

from __future__ import annotations

import pytest

from engine.budget import LANE_MAX_BYTES, MemoryBudget
from engine.errors import BudgetExhausted

MiB = 2**20


def test_a_large_reservation_is_capped_and_leaves_the_lane() -> None:
    budget = MemoryBudget(160 * MiB, wait_s=0.01)
    assert budget.lane_bytes == 40 * MiB and budget.largest_bytes == 120 * MiB
    assert budget.reserve(10 * 2**30) == 120 * MiB  # a stream needing more is admitted alone
    with pytest.raises(BudgetExhausted):
        budget.reserve(41 * MiB)  # large: it would take the lane
    small = [budget.reserve(20 * MiB), budget.reserve(20 * MiB)]  # small ones fill the lane
    assert budget.in_use == budget.budget_bytes
    with pytest.raises(BudgetExhausted):
        budget.reserve(1)
    for nbytes in (120 * MiB, *small):
        budget.release(nbytes)
    assert budget.in_use == 0


def test_the_lane_is_a_quarter_of_a_small_budget_and_bounded_on_a_large_one() -> None:
    assert MemoryBudget(64 * MiB).lane_bytes == 16 * MiB
    large = MemoryBudget(128 * 2**30)
    assert large.lane_bytes == LANE_MAX_BYTES
    assert large.largest_bytes == 128 * 2**30 - LANE_MAX_BYTES
    large.resize(64 * MiB)
    assert large.lane_bytes == 16 * MiB
