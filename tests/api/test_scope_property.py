"""Property: random cohorts, keys and requests over every endpoint and format, pages and
cursors included: no key ever receives a row, a participant id or a count outside its scope.

The store holds participants 1..3 (tests/api/conftest.py); requests also name ids nobody
has, so "forbidden" and "does not exist" are exercised alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from api.app import create_app
from engine.registry import metric_names
from sync.access import create_cohort
from tests.api.conftest import METRICS, api_settings, new_key
from tests.api.test_data import parse

IDS = (1, 2, 3, 4, 77)  # 4 and 77 are nobody
FORMATS = ("json", "ndjson", "csv", "arrow", "parquet")
RESOLUTIONS = ("raw", "1m", "1h", "1d", "auto")


@pytest.fixture(scope="module")
def scope_client(cohort_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings_ = api_settings(tmp_path_factory.mktemp("scope"), STRATUM_MAX_REQUESTS_PER_KEY="50")
    with TestClient(create_app(settings_, cohort_url)) as test_client:
        yield test_client


def request_params(users: list[int], metrics: list[str], resolution: str) -> dict[str, str]:
    return {
        "user_id": ",".join(map(str, users)),
        "metric": ",".join(metrics),
        "start": "2024-01-01T20:00:00Z",
        "end": "2024-01-02T04:00:00Z",
        "resolution": resolution,
    }


scopes = st.tuples(
    st.sets(st.sampled_from(IDS), min_size=1),  # the cohort
    st.none() | st.sets(st.sampled_from(METRICS), min_size=1),  # the key's metrics
)
requests = st.tuples(
    st.sets(st.sampled_from(IDS), min_size=1),
    st.sets(st.sampled_from(METRICS), min_size=1),
    st.sampled_from(RESOLUTIONS),
    st.sampled_from(FORMATS),
    st.sampled_from(("3", "50", "0")),  # page sizes; 0 streams the whole answer
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(scope=scopes, other_scope=scopes, asked=st.lists(requests, min_size=1, max_size=4))
def test_no_key_sees_outside_its_scope(
    scope_client: TestClient,
    cohort_url: str,
    scope: tuple[set[int], set[str] | None],
    other_scope: tuple[set[int], set[str] | None],
    asked: list[tuple[set[int], set[str], str, str, str]],
) -> None:
    keys = []
    for members, metrics in (scope, other_scope):
        cohort = f"c{uuid.uuid4().hex[:10]}"
        create_cohort(cohort_url, cohort, sorted(members))
        key_text = new_key(
            cohort_url, cohorts=(cohort,), metrics=None if metrics is None else sorted(metrics)
        )
        keys.append((key_text, members, metrics))
    (key_text, members, metrics), other = keys
    headers = {"Authorization": f"Bearer {key_text}"}
    visible_metrics = set(metric_names()) if metrics is None else metrics

    catalog = scope_client.get("/catalog", headers=headers).json()
    assert set(catalog["users"]) <= members
    assert {c["user_id"] for c in catalog["coverage"]} <= members
    assert {m["name"] for m in catalog["metrics"]} <= visible_metrics
    assert catalog["last_runs"] is None and catalog["last_sync"] is None
    assert scope_client.get("/metrics", headers=headers).status_code == 403

    for users, wanted, resolution, format_name, page_size in asked:
        params = request_params(sorted(users), sorted(wanted), resolution)
        allowed = users <= members and wanted <= visible_metrics
        event("allowed" if allowed else "forbidden")
        plan = scope_client.get("/plan", params=params, headers=headers)
        if not allowed:
            assert plan.status_code == 403, plan.text
            assert set(plan.json()) == {"error"}
        else:
            assert plan.status_code == 200, plan.text
            assert {u for s in plan.json()["segments"] for u in s["users"]} <= members
        if format_name == "json" and page_size == "0":
            page_size = "3"
        query = {**params, "format": format_name, "page_size": page_size}
        pages = 0
        while True:
            response = scope_client.get("/data", params=query, headers=headers)
            if not allowed:
                assert response.status_code == 403, response.text
                assert set(response.json()) == {"error"}
                assert "X-Stratum-Rows" not in response.headers
                break
            assert response.status_code == 200, response.text
            for row in parse(format_name, response.content):
                assert int(row["user_id"]) in members and row["metric"] in visible_metrics
            cursor = response.headers.get("X-Stratum-Next")
            pages += 1
            if cursor is None or pages >= 3:
                break
            event("followed a cursor")
            # The same cursor under the other key: never an answer that key may not get.
            stolen = scope_client.get(
                "/data",
                params={**query, "cursor": cursor},
                headers={"Authorization": f"Bearer {other[0]}"},
            )
            assert stolen.status_code in (400, 403), stolen.text
            query = {**query, "cursor": cursor}
