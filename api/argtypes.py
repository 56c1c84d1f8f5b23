"""Argument types shared by the CLI's subcommands: each rejects bad input with a clear message."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import date


def iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def integer_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return value

    return parse


positive = integer_at_least(1)
non_negative = integer_at_least(0)


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
