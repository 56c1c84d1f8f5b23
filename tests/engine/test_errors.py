"""Refusal texts name what they refuse, and stay short however much that is."""

from engine.errors import first_few


def test_first_few_names_all_when_few() -> None:
    assert first_few([3, 1, 2]) == "3, 1, 2"
    assert first_few([]) == ""


def test_first_few_counts_the_rest() -> None:
    pairs = [(u, f"2024-01-0{u}") for u in range(1, 9)]
    text = first_few(pairs, lambda p: f"user {p[0]} {p[1]}", shown=3)
    assert text == "user 1 2024-01-01, user 2 2024-01-02, user 3 2024-01-03 and 5 more"
