"""Walking PostgreSQL's EXPLAIN (FORMAT JSON) plans in tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def all_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The node and every node under it."""
    yield plan
    for child in plan.get("Plans", []):
        yield from all_nodes(child)
