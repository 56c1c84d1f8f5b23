"""Argument types shared by the CLI's subcommands: each rejects bad input with a clear message."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path


def iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def integer_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        # ASCII digits only: int() also reads "1_0" and Arabic-Indic or full-width digits.
        try:
            if not re.fullmatch(r"[+-]?[0-9]+", text.strip()):
                raise ValueError(text)
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


def output_file(text: str) -> Path:
    """A file to write. Its folder must exist: a mistyped path is reported, not created."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name in it")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"folder {str(path.parent)!r} does not exist; create it first or pick another"
        )
    return path


_DURATION_UNITS = {"d": "days", "h": "hours", "w": "weeks"}


def duration(text: str) -> timedelta:
    """'90d', '12h', '2w' -> a timedelta."""
    number, unit = text[:-1], text[-1:].lower()
    if unit not in _DURATION_UNITS or not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90d, 12h or 2w")
    return timedelta(**{_DURATION_UNITS[unit]: int(number)})


def timestamp(text: str) -> datetime:
    """An ISO 8601 date or date-time (UTC when no zone is given)."""
    try:
        value = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date or date-time (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
