"""M4 downsampling through the real engine: the reduced answer draws what the raw one draws.

Per pixel column and series, the M4 rows must hold the raw rows' first, last, lowest and
highest (ts, value); with those four, a line chart's pixels are the same (engine/m4.py).
Run over a span the lake answers in part (day 1) and the warm store in part (day 2), on
both warm-store flavours.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from engine.access import LOCAL_ADMIN
from engine.errors import InvalidParameter
from engine.m4 import M4
from engine.query import build_query, to_us
from engine.run import Engine
from engine.settings import load_settings
from lake import Lake
from sync.export import sync_to_lake
from sync.generate import generate_cohort
from sync.ingest import ingest_tables
from sync.rollups import refresh_rollups

START = date(2024, 3, 1)
SPAN = {"user_id": "1,2", "metric": "heart_rate,steps", "start": "2024-03-01T06:00:00Z"}
END = "2024-03-02T18:00:00Z"  # a day and a half: lake rows, then warm rows


@pytest.fixture
def engine(flavour_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    ingest_tables(
        flavour_url,
        generate_cohort(2, 2, START, seed=3, metrics=["heart_rate", "steps"], every_s=20),
    )
    refresh_rollups(flavour_url)
    settings = load_settings({"STRATUM_HOME": str(tmp_path), "STRATUM_MEMORY_BUDGET": "1GiB"})
    # Day 1 goes to the lake; day 2 stays warm (inside the grace period).
    sync_to_lake(
        flavour_url, Lake(settings.lake.path), grace_days=1, batch_days=8, today=date(2024, 3, 3)
    )
    engine = Engine(settings, flavour_url)
    yield engine
    engine.close()


def answer(engine: Engine, **extra: str) -> tuple[pa.Table, Any]:
    params = {k: [v] for k, v in {**SPAN, "end": END, "page_size": "0", **extra}.items()}
    query = build_query(params, engine.settings.query, principal=LOCAL_ADMIN)
    result = engine.run(query)
    return pa.Table.from_batches(list(result.batches), schema=result.schema), result.plan


def columns_of(table: pa.Table, m4: M4) -> dict[tuple[int, str, int], list[tuple[int, float]]]:
    """(user, metric, pixel column) -> its rows (ts µs, value), by the same arithmetic."""
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    column = np.floor((ts - m4.start_us) / m4.column_us).astype(np.int64)
    grouped: dict[tuple[int, str, int], list[tuple[int, float]]] = defaultdict(list)
    users = table.column("user_id").to_pylist()
    metrics = table.column("metric").to_pylist()
    values = table.column("value").to_pylist()
    for user_id, metric, col, t, v in zip(users, metrics, column, ts, values, strict=True):
        grouped[(user_id, metric, int(col))].append((int(t), v))
    return grouped


def drawn(rows: list[tuple[int, float]]) -> tuple[float, float, float, float]:
    """What a pixel column draws: first value, last value, lowest, highest."""
    ordered = sorted(rows)
    values = [v for _, v in rows]
    return ordered[0][1], ordered[-1][1], min(values), max(values)


@pytest.mark.parametrize("width", [1, 97, 800])
def test_m4_draws_the_same_extrema_as_every_raw_row(engine: Engine, width: int) -> None:
    raw, plan = answer(engine, resolution="raw")
    reduced, reduced_plan = answer(engine, resolution="raw", downsample="m4", width=str(width))
    assert plan.sources == ["lake", "warm"] == reduced_plan.sources
    m4 = M4(plan.query.start, plan.query.end, width)

    raw_columns, m4_columns = columns_of(raw, m4), columns_of(reduced, m4)
    assert set(m4_columns) == set(raw_columns)
    assert {k: drawn(v) for k, v in m4_columns.items()} == {
        k: drawn(v) for k, v in raw_columns.items()
    }
    # Real rows only, in answer order, each once; and a reduction worth having.
    raw_rows = set(zip(*(raw.column(n).to_pylist() for n in raw.column_names), strict=True))
    m4_list = list(zip(*(reduced.column(n).to_pylist() for n in raw.column_names), strict=True))
    assert set(m4_list) <= raw_rows
    assert m4_list == sorted(set(m4_list), key=lambda r: (r[0], r[1], r[2]))
    # At most 4 rows per column and series, plus 4 where the lake/warm boundary splits one.
    assert len(m4_list) <= 4 * len(m4_columns) + 4 * 4
    assert len(m4_list) < raw.num_rows


def test_m4_pages_and_cursors_walk_the_same_reduced_answer(engine: Engine) -> None:
    whole, _ = answer(engine, resolution="raw", downsample="m4", width="300")
    size = 500
    params = {**SPAN, "end": END, "resolution": "raw", "downsample": "m4", "width": "300"}
    walked: list[dict[str, Any]] = []
    cursor = None
    while True:
        page_params = {**params, "page_size": str(size)}
        if cursor:
            page_params["cursor"] = cursor
        query = build_query(
            {k: [v] for k, v in page_params.items()},
            engine.settings.query,
            principal=LOCAL_ADMIN,
            cursor_secret=b"s",
        )
        result = engine.run(query)
        walked += pa.Table.from_batches(list(result.batches), schema=result.schema).to_pylist()
        cursor = result.next_cursor
        if cursor is None:
            break
    assert walked == whole.to_pylist()
    second, _ = answer(engine, resolution="raw", downsample="m4", width="300", page_size=str(size))
    numbered = {k: [v] for k, v in {**params, "page_size": str(size), "page_number": "2"}.items()}
    query = build_query(numbered, engine.settings.query, principal=LOCAL_ADMIN)
    result = engine.run(query)
    page_two = pa.Table.from_batches(list(result.batches), schema=result.schema).to_pylist()
    assert page_two == whole.to_pylist()[size : 2 * size]
    assert second.num_rows == size


def test_m4_leaves_rollup_answers_whole(engine: Engine) -> None:
    plain, _ = answer(engine, resolution="1h")
    reduced, plan = answer(engine, resolution="1h", downsample="m4", width="10")
    assert plan.query.m4_width is None
    assert reduced.equals(plain)


@pytest.mark.parametrize(
    ("extra", "parameter"),
    [
        ({"downsample": "lttb", "width": "10"}, "downsample"),
        ({"downsample": "m4"}, "width"),
        ({"width": "10"}, "width"),
        ({"downsample": "m4", "width": "0"}, "width"),
        ({"downsample": "m4", "width": "99999"}, "width"),
    ],
)
def test_bad_downsampling_names_the_parameter(extra: dict[str, str], parameter: str) -> None:
    params = {k: [v] for k, v in {**SPAN, "end": END, **extra}.items()}
    with pytest.raises(InvalidParameter) as caught:
        build_query(params, load_settings({}).query, principal=LOCAL_ADMIN)
    assert caught.value.parameter == parameter


def test_m4_columns_follow_the_query_span() -> None:
    from datetime import UTC, datetime

    m4 = M4(datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC), 4)
    assert m4.column_us == 6 * 3600 * 1e6
    assert m4.start_us == to_us(datetime(2024, 1, 1, tzinfo=UTC))
