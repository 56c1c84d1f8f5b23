"""The memory budget's lane for small queries (issue 11, point 4): large reservations leave
it free, so a stalled stream cannot make every quick question wait."""

from __future__ import annotations

import pytest

from engine.budget import LANE_MAX_BYTES, MemoryBudget
from engine.errors import BudgetExhausted

MiB = 2**20


def test_a_large_reservation_is_capped_and_leaves_the_lane() -> None:
    budget = MemoryBudget(64 * MiB, wait_s=0.01)
    assert budget.lane_bytes == 16 * MiB and budget.largest_bytes == 48 * MiB
    assert budget.reserve(48 * MiB) == 48 * MiB
    with pytest.raises(BudgetExhausted):
        budget.reserve(17 * MiB)  # large: it would take the lane
    small = [budget.reserve(8 * MiB), budget.reserve(8 * MiB)]  # small ones fill the lane
    assert budget.in_use == budget.budget_bytes
    with pytest.raises(BudgetExhausted):
        budget.reserve(1)
    for nbytes in (48 * MiB, *small):
        budget.release(nbytes)
    assert budget.in_use == 0


def test_a_reservation_beyond_the_largest_share_is_admitted_only_alone() -> None:
    """A big page on a small server: it may have the whole budget, but not beside others."""
    budget = MemoryBudget(64 * MiB, wait_s=0.01)
    small = budget.reserve(1 * MiB)
    with pytest.raises(BudgetExhausted):
        budget.reserve(60 * MiB)
    budget.release(small)
    assert budget.reserve(10 * 2**30) == 64 * MiB  # capped to the whole budget
    with pytest.raises(BudgetExhausted):
        budget.reserve(1)
    budget.release(64 * MiB)


def test_the_lane_is_a_quarter_of_a_small_budget_and_bounded_on_a_large_one() -> None:
    assert MemoryBudget(64 * MiB).lane_bytes == 16 * MiB
    large = MemoryBudget(128 * 2**30)
    assert large.lane_bytes == LANE_MAX_BYTES == 24 * MiB
    assert large.largest_bytes == 128 * 2**30 - LANE_MAX_BYTES
    large.resize(64 * MiB)
    assert large.lane_bytes == 16 * MiB
