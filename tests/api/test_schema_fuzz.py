"""Schemathesis against the OpenAPI document: no generated request gets a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from litestar import Litestar
from schemathesis.checks import not_a_server_error

from api.app import create_app
from tests.api.conftest import api_settings, new_key
from tests.engine.test_hostile_input import one_hostile_value

# The document does not depend on the database: build it from an app without one.
SPEC: dict[str, Any] = create_app(
    api_settings(Path("/nonexistent")), None
).openapi_schema.to_schema()
schema = schemathesis.openapi.from_dict(SPEC)


@pytest.fixture(scope="module")
def fuzz_app(cohort_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Litestar]:
    app = create_app(api_settings(tmp_path_factory.mktemp("fuzz")), cohort_url)
    app.state.fuzz_key = new_key(cohort_url)
    yield app
    app.state.service.close()  # in case a call ran without the lifespan


def test_served_document_is_the_one_fuzzed(fuzz_app: Litestar) -> None:
    served = schemathesis.openapi.from_asgi("/schema/openapi.json", fuzz_app)
    assert served.raw_schema == SPEC


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case, fuzz_app: Litestar) -> None:
    headers = {"Authorization": f"Bearer {fuzz_app.state.fuzz_key}"}
    case.call_and_validate(app=fuzz_app, headers=headers, checks=[not_a_server_error])


def _sendable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: no client can put it in a URL
        return False
    return True


@given(case=schema["/data"]["GET"].as_strategy(), hostile=one_hostile_value())
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_on_extreme_values(
    case: schemathesis.Case, hostile: dict[str, list[str]], fuzz_app: Litestar
) -> None:
    """Schemathesis's own strings rarely reach year 1 or 9999, huge numbers or forged cursors
    past the other parameters' checks: a valid query with one extreme value replaces its
    parameters (its format is kept)."""
    params = {name: values[-1] for name, values in hostile.items()}
    assume(all(_sendable(value) for value in params.values()))
    generated = {k: v for k, v in (case.query or {}).items() if k == "format"}
    case.query = {**generated, **params}
    headers = {"Authorization": f"Bearer {fuzz_app.state.fuzz_key}"}
    case.call_and_validate(app=fuzz_app, headers=headers, checks=[not_a_server_error])
