# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install postgres chromium demo test test-postgresql test-ray lint typecheck unit bench-ci clean

$(INSTALLED): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench,jobs]' -e './client[pandas,polars]'
	touch $(INSTALLED)

install: $(INSTALLED) postgres chromium

# PostgreSQL server binaries for the private database (tests, demo); installs them when absent.
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 \
	  || { echo "installing PostgreSQL server binaries"; \
	       sudo=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	       $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq postgresql >/dev/null; }

# Headless Chromium for the explorer page's browser tests (tests/browser, driven by Playwright
# with this executable: Playwright's own browser download is not used); installs it when absent.
chromium:
	@command -v chromium >/dev/null 2>&1 \
	  || { echo "installing Debian's chromium"; \
	       sudo=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	       $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null; }

demo: install
	$(BIN)/stratum demo --serve

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(INSTALLED)
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

test: lint typecheck unit

# The whole suite on plain PostgreSQL even where TimescaleDB is installed (`make test` runs on
# TimescaleDB there, plus the warm-store, tiering and hybrid tests on plain PostgreSQL).
test-postgresql: install
	STRATUM_TEST_FLAVOUR=postgresql $(BIN)/pytest

# The cohort job on a real Ray cluster (head + worker on a private loopback, token auth) on
# its own; `make test` runs it too (about a minute; skipped where namespaces need root).
test-ray: install
	$(BIN)/pytest -m ray tests/jobs

# The ci benchmark preset on its own (make test runs it too, as tests/benchmarks).
bench-ci: install
	$(BIN)/stratum bench --scale ci

clean:
	rm -rf $(VENV) .stratum .pytest_cache .mypy_cache .ruff_cache .hypothesis
