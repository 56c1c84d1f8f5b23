"""The folders are the architecture: imports point one way (README, Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "lake", "sync", "api", "benchmarks")
# What each package may import of ours. sync shares three leaf modules of engine; api hands
# a Lake to the sync jobs, and the CLI dispatches `stratum bench` to the suite (lazily).
ALLOWED = {
    "engine": {"engine", "lake"},
    "lake": {"lake"},
    "sync": {"sync", "lake", "engine.settings", "engine.registry", "engine.errors"},
    "api": {"api", "engine", "sync", "lake", "benchmarks.suite"},
}


def imports_of(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    allowed = ALLOWED[package]
    wrong = sorted(
        name
        for name in imports_of(package)
        if not any(name == ok or name.startswith(ok + ".") for ok in allowed)
    )
    assert wrong == [], f"{package} imports {wrong}"
