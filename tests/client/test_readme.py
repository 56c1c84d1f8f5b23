"""The README's Python client example runs as written against a served app (its URL and
key swapped for the test server's)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib
import pytest

from tests.client.conftest import Served

README = Path(__file__).resolve().parents[2] / "README.md"


def client_example() -> str:
    section = README.read_text().split("## Python client", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's Python client section has no example"
    return match.group(1)


def test_the_readme_example_runs(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    matplotlib.use("Agg")  # the example plots; no display here
    code = client_example()
    assert '"http://127.0.0.1:8000"' in code and '"stratum_..."' in code
    code = code.replace('"http://127.0.0.1:8000"', repr(served.url))
    code = code.replace('"stratum_..."', repr(served.key()))
    names: dict[str, Any] = {}
    try:
        exec(compile(code, str(README), "exec"), names)
    finally:
        if "stratum" in names:
            names["stratum"].close()
    assert len(names["daily"]) > 0 and set(names["daily"]["user_id"]) == {1, 2}
    assert len(names["raw"]) > 0 and names["table"].num_rows > 0 and len(names["frame"]) > 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "400 invalid_parameter metric"
    assert printed[1].startswith("unknown metric 'pulse'; valid: heart_rate, hrv")
