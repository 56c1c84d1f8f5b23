"""The folders are the architecture: one stack, imports point down it, no cycles (README, Layout).
The Python client (`client/stratum_client`) stands apart: it imports nothing of the stack, and
nothing of the stack imports it.

The import graph is read from the source (every `import`, `from ... import` and module
named to `importlib.import_module`, at module level or inside a function), so a late import
cannot hide a cycle.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top: a package may import itself and the packages below it, never one above.
STACK = ("lake", "engine", "sync", "jobs", "benchmarks", "api")
# A package of its own (client/, installed apart from the server): talks to the API over HTTP.
CLIENT = "stratum_client"
CLIENT_ROOT = ROOT / "client"
# Narrower than the stack: the write side shares only leaf modules of the query side, so that
# it validates against the same registry, writes the same tables and renders the same text.
ONLY = {
    "sync": {
        "engine": {
            "engine.settings",
            "engine.registry",
            "engine.errors",
            "engine.tiers",
            "engine.timestamps",
            "engine.access",
            "engine.zones",
        }
    }
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterable[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against the importing module's package
            package = module.split(".")
            base = package if is_package else package[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        for alias in node.names:
            # `from api import commands` imports the module api.commands, not just api.
            candidate = f"{source}.{alias.name}"
            yield candidate if candidate in known else source
    elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        # importlib.import_module("api.app") is an import too, only later; so is a helper
        # that takes one of our dotted module names and imports it.
        function = node.func
        called = function.attr if isinstance(function, ast.Attribute) else None
        called = function.id if isinstance(function, ast.Name) else called
        name = str(node.args[0].value)
        if called in ("import_module", "__import__") or ("." in name and name in known):
            yield name


def import_graph(
    root: Path, packages: Iterable[str], elsewhere: Mapping[str, Path] | None = None
) -> dict[str, set[str]]:
    """module -> the modules of `packages` it imports anywhere in its source; `elsewhere`
    names packages that live under another root folder (package -> that folder)."""
    roots = {package: root for package in packages} | dict(elsewhere or {})
    paths = {
        module_name(package_root, path): path
        for package, package_root in roots.items()
        for path in sorted((package_root / package).rglob("*.py"))
    }
    known = set(paths)
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        is_package = path.name == "__init__.py"
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in _imported(node, module, is_package, known):
                # `import lake.store` names a module; `from lake.store import Lake` too.
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    imported.add(name)
        graph[module] = imported
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


GRAPH = import_graph(ROOT, STACK, {CLIENT: CLIENT_ROOT})


def test_the_graph_is_read_from_every_package() -> None:
    packages = {module.split(".")[0] for module in GRAPH}
    assert packages == {*STACK, CLIENT}
    assert "engine.settings" in GRAPH["engine.run"]
    assert "stratum_client.errors" in GRAPH["stratum_client.client"]
    # A function-level import counts as much as one at the top.
    assert "benchmarks.suite" in GRAPH["api.commands"]


def may_import(package: str, target: str) -> bool:
    target_package = target.split(".")[0]
    if CLIENT in (package, target_package):  # the client and the stack never meet
        return package == target_package
    if STACK.index(target_package) > STACK.index(package):
        return False
    only = ONLY.get(package, {}).get(target_package)
    return only is None or target in only


@pytest.mark.parametrize(
    ("package", "target", "allowed"),
    [
        ("api", "benchmarks.suite", True),
        ("benchmarks", "api.commands", False),
        ("engine", "sync.export", False),
        ("lake", "engine.settings", False),
        ("sync", "engine.settings", True),
        ("sync", "engine.run", False),
        ("stratum_client", "engine.errors", False),
        ("stratum_client", "stratum_client.errors", True),
        ("api", "stratum_client.client", False),
        ("benchmarks", "stratum_client", False),
    ],
)
def test_the_rule_reads_the_stack(package: str, target: str, allowed: bool) -> None:
    assert may_import(package, target) is allowed


@pytest.mark.parametrize("package", [*STACK, CLIENT])
def test_imports_point_down_the_stack(package: str) -> None:
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package
        for target in targets
        if not may_import(package, target)
    )
    assert wrong == [], f"{package} imports what it may not: {wrong}"


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_the_checker_sees_a_cycle_hidden_by_a_late_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "leaf.py").write_text("X = 1\n")
    (package / "front.py").write_text(
        "from pkg.leaf import X\n\ndef run():\n    from pkg import back\n    return back\n"
    )
    (package / "back.py").write_text("from . import front\n")
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.front"] == {"pkg.leaf", "pkg.back"}
    assert graph["pkg.back"] == {"pkg.front"}
    assert cycles(graph) == [["pkg.back", "pkg.front"]]
    by_name = "import importlib\nFRONT = importlib.import_module('pkg.front')\n"
    by_helper = "from pkg.leaf import load\nFRONT = load('pkg.front')\n"
    for late in (by_name, by_helper):
        (package / "back.py").write_text(late)
        assert cycles(import_graph(tmp_path, ["pkg"])) == [["pkg.back", "pkg.front"]]
    (package / "back.py").write_text("from pkg.leaf import X\n")
    assert cycles(import_graph(tmp_path, ["pkg"])) == []


def test_api_opens_no_database_connections_of_its_own() -> None:
    """Handlers parse and render; the Engine (and the sync jobs) own every connection."""
    drivers = {"psycopg", "psycopg_pool", "adbc_driver_postgresql", "duckdb"}
    found = set()
    for path in (ROOT / "api").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add((path.name, node.module.split(".")[0]))
            elif isinstance(node, ast.Import):
                found.update((path.name, alias.name.split(".")[0]) for alias in node.names)
    assert sorted((name, module) for name, module in found if module in drivers) == []


def test_the_client_imports_only_the_standard_library_and_its_dependencies() -> None:
    """`pip install ./client` brings pyarrow (pandas and polars as extras): a
    server package or another third-party import would fail in a notebook's environment."""
    project = tomllib.loads((CLIENT_ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *sum(project["optional-dependencies"].values(), [])]
    allowed = {requirement.split(">")[0].split("[")[0] for requirement in declared}
    assert allowed == {"pyarrow", "pandas", "polars"}
    found = set()
    for path in (CLIENT_ROOT / CLIENT).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(path.name, alias.name.split(".")[0]) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add((path.name, node.module.split(".")[0]))
    wrong = sorted(
        (name, module)
        for name, module in found
        if module not in sys.stdlib_module_names and module not in allowed | {CLIENT}
    )
    assert wrong == []
    assert ("client.py", "pyarrow") in found  # the scan sees the client's imports


def test_the_image_copies_every_package_of_the_stack() -> None:
    """`pip install .` in the Dockerfile installs only what was copied: a package left out
    breaks the `stratum` command in the image (the CLI imports every layer)."""
    copied = set(re.findall(r"^COPY (\w+) \1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert copied >= set(STACK)
