"""Runtime dependencies are what serving and the jobs need; the bench's live in an extra."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=~!; ]", r, maxsplit=1)[0].lower() for r in requirements}


def imported_top_levels(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_the_bench_extra_is_not_a_runtime_dependency() -> None:
    bench = names(PROJECT["optional-dependencies"]["bench"])
    assert {"matplotlib", "httpx"} <= bench
    assert bench & names(PROJECT["dependencies"]) == set()


def test_only_benchmarks_import_the_bench_extra() -> None:
    bench = names(PROJECT["optional-dependencies"]["bench"])
    packages = ("engine", "lake", "sync", "api")
    serving = [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]
    wrong = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in serving
        for name in imported_top_levels(path) & bench
    )
    assert wrong == []
    users = [p for p in (ROOT / "benchmarks").rglob("*.py") if imported_top_levels(p) & bench]
    assert users, "no module imports the bench extra: the pattern is stale"


def test_make_test_installs_the_bench_and_jobs_extras() -> None:
    assert "'.[dev,bench,jobs]'" in (ROOT / "Makefile").read_text()


def test_only_the_jobs_package_imports_the_jobs_extra() -> None:
    """Daft and Ray are an extra (`pip install stratum[jobs]`): serving must not need them."""
    extra = names(PROJECT["optional-dependencies"]["jobs"])
    assert extra == {"daft", "ray"}
    assert extra & names(PROJECT["dependencies"]) == set()
    outside = [
        path
        for package in ("engine", "lake", "sync", "api", "benchmarks")
        for path in sorted((ROOT / package).rglob("*.py"))
    ]
    wrong = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in outside
        for name in imported_top_levels(path) & extra
    )
    assert wrong == []
    assert imported_top_levels(ROOT / "jobs" / "run.py") & extra == {"daft", "ray"}
