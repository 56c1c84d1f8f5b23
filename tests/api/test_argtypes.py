"""The CLI's integer arguments take ASCII digits only, as the HTTP API does."""

from __future__ import annotations

import argparse

import pytest

from api.argtypes import non_negative, positive


@pytest.mark.parametrize("text", ["\u0661", "\uff11", "1_0", "1.0", "", "0x1"])
def test_non_ascii_and_python_only_integers_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not an integer"):
        positive(text)


def test_plain_integers_are_read() -> None:
    assert positive("12") == 12 and non_negative(" 0 ") == 0
    with pytest.raises(argparse.ArgumentTypeError, match=">= 1"):
        positive("0")
