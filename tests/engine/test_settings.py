"""Settings come from STRATUM_* variables, declared once in SETTINGS and documented in the
README's configuration table, which must say what the declaration says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine import settings as settings_module
from engine.errors import ConfigurationError
from engine.settings import SETTINGS, GiB, load_settings, parse_size, read_settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "lake", "sync", "api", "benchmarks")
VARIABLE = re.compile(r"STRATUM_[A-Z][A-Z0-9_]*")
# Knobs of the test suite, not of stratum: read by tests/conftest.py, documented under
# Development rather than in the configuration table.
TEST_SUITE_VARIABLES = {"STRATUM_TEST_FLAVOUR"}


def readme_configuration() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) per row of the README's configuration table."""
    section = (ROOT / "README.md").read_text().split("\n## Configuration\n")[1].split("\n## ")[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `STRATUM_"):
            name, default, meaning = (cell.strip() for cell in line.strip("|").split(" | "))
            rows.append((name.strip("`"), default.strip("`"), meaning.strip()))
    return rows


def test_the_readme_table_is_the_declaration() -> None:
    declared = [(s.name, s.documented_default, s.meaning) for s in SETTINGS]
    assert readme_configuration() == declared


def test_every_stratum_variable_anywhere_is_declared() -> None:
    documents = ("README.md", "Dockerfile", "docker-compose.yml", "Makefile")
    texts = [(ROOT / name).read_text() for name in documents]
    texts += [path.read_text() for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    mentioned = {name for text in texts for name in VARIABLE.findall(text)}
    assert "STRATUM_PG_BIN" in mentioned and "STRATUM_MAX_POINTS" in mentioned
    assert sorted(mentioned - {s.name for s in SETTINGS} - TEST_SUITE_VARIABLES) == []
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    development = (ROOT / "README.md").read_text().split("\n## Development\n")[1]
    for name in TEST_SUITE_VARIABLES:
        assert f'"{name}"' in conftest and f"`{name}" in development, name


def test_declared_defaults_are_what_loads_without_variables(tmp_path: Path) -> None:
    values = read_settings({"STRATUM_HOME": str(tmp_path)})
    assert set(values) == {s.name for s in SETTINGS}
    settings = load_settings({"STRATUM_HOME": str(tmp_path)})
    for setting in SETTINGS:
        if setting.field is not None:
            concern, attribute = setting.field.split(".")
            assert getattr(getattr(settings, concern), attribute) == values[setting.name]
    assert values["STRATUM_SPILL_PATH"] == tmp_path / "spill"
    assert values["STRATUM_DATABASE_URL"] is None and values["STRATUM_PORT"] == 8000


def test_every_setting_read_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    packages = ("engine", "lake", "sync", "api", "benchmarks")
    sources = [path for package in packages for path in (ROOT / package).rglob("*.py")]
    read = set()
    for source in sources:
        read |= set(re.findall(r'"(STRATUM_[A-Z_]+)"', source.read_text()))
    assert read, "no settings found: the pattern is stale"
    missing = sorted(name for name in read if f"`{name}`" not in readme)
    assert missing == []


def test_defaults(tmp_path: Path) -> None:
    s = load_settings({"STRATUM_HOME": str(tmp_path)})
    assert s.database.url is None
    assert s.lake.path == tmp_path / "lake"
    assert s.lake.sync_grace_days == 1
    assert s.query.max_points == 5_000
    expected = min(128 * GiB, int(settings_module.physical_ram_bytes() * 0.8))
    assert s.memory.budget_bytes == expected


@pytest.mark.parametrize(
    ("text", "size"),
    [("1024", 1024), ("512MiB", 512 * 1024**2), ("8G", 8 * GiB), ("1.5GiB", int(1.5 * GiB))],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text, "X") == size


def test_budget_is_capped_to_ram_share() -> None:
    s = load_settings({"STRATUM_MEMORY_BUDGET": "100TiB"})
    assert s.memory.budget_bytes == int(settings_module.physical_ram_bytes() * 0.8)
    assert load_settings({"STRATUM_MEMORY_BUDGET": "1GiB"}).memory.budget_bytes == GiB


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STRATUM_MEMORY_BUDGET", "lots"),
        ("STRATUM_PORT", "http"),
        ("STRATUM_MAX_POINTS", "0"),
        ("STRATUM_LAKE_PATH", "s3://"),
        ("STRATUM_LAKE_PATH", "gs://bucket/lake"),
        ("STRATUM_CALENDAR_PREFILL", "local,Mars/Olympus"),
        ("STRATUM_CALENDAR_PREFILL", "UTC"),
    ],
)
def test_malformed_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings({name: value})
    assert caught.value.parameter == name


@pytest.mark.parametrize(
    ("value", "zones"),
    [
        ("local", ("local",)),
        (" LOCAL , asia/kathmandu,local ", ("local", "Asia/Kathmandu")),
        ("none", ()),
        ("off", ()),
    ],
)
def test_the_calendar_prefill_lists_local_and_zones(value: str, zones: tuple[str, ...]) -> None:
    assert load_settings({"STRATUM_CALENDAR_PREFILL": value}).query.calendar_prefill == zones


def test_the_lake_path_is_a_folder_or_an_s3_uri(tmp_path: Path) -> None:
    s3 = load_settings({"STRATUM_LAKE_PATH": "s3://bucket/studies/lake/"})
    assert s3.lake.path == "s3://bucket/studies/lake"
    folder = load_settings({"STRATUM_LAKE_PATH": str(tmp_path / "lake")})
    assert folder.lake.path == tmp_path / "lake"


def test_budget_sets_the_process_footprint_aside_first() -> None:
    from engine.budget import MIN_SHARE_BYTES, split_budget

    duckdb_bytes, admission = split_budget(512 * 2**20, 200 * 2**20)
    assert duckdb_bytes + admission == 312 * 2**20
    assert duckdb_bytes == admission
    # A footprint at or above the budget still leaves each part a working minimum.
    assert split_budget(100 * 2**20, 300 * 2**20) == (MIN_SHARE_BYTES, MIN_SHARE_BYTES)
