"""The "limit" layout: the lake's rows in one compacted file per participant and tier.

The lake keeps one file per participant-month (raw, 1m once compacted, 1h) or -year (1d),
and one per participant-day of the raw and 1m months not yet settled; DuckDB pays for every
file it opens. The limit backend reads the same rows from one file per participant,
sorted by (metric, ts) with 128k-row groups, so row-group statistics prune metric and time
inside it: what a scan of these rows can cost at best, whatever the lake's file layout.

Built once from the lake's latest versions and cached in the bench home beside the dataset;
a stamp (the dataset's build and the lake versions it was built from) says when to rebuild.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq

from benchmarks.dataset import Dataset
from lake import TIERS, Lake, in_utc, scan_sql

LIMIT_DIR = "limit"
STAMP_FILE = "limit.json"
LAYOUT_VERSION = 1  # bump when the files' layout changes, so cached ones are rebuilt
ROW_GROUP_ROWS = 131_072
_VALUES = {"raw": ("value",)}
_AGG_VALUES = ("count", "sum", "min", "max")


@dataclass(frozen=True)
class LimitFiles:
    root: Path
    build: dict[str, Any]  # seconds, rows and bytes per tier; whether reused
    users: tuple[int, ...]

    def path(self, tier: str, user_id: int) -> Path:
        return limit_path(self.root, tier, user_id)


def limit_path(root: Path, tier: str, user_id: int) -> Path:
    return root / tier / f"user-{user_id}.parquet"


def columns(tier: str) -> tuple[str, ...]:
    return ("user_id", "metric", "ts", *_VALUES.get(tier, _AGG_VALUES))


def _stamp(dataset: Dataset, lake: Lake) -> dict[str, Any]:
    return {
        "layout": LAYOUT_VERSION,
        "fingerprint": dataset.preset.dataset_fingerprint(),
        "built_at": dataset.build.get("built_at"),
        "versions": {tier: lake.version(tier) for tier in TIERS},
    }


def open_limit(dataset: Dataset) -> LimitFiles:
    """The compacted files of every lake participant, built now unless cached and current."""
    root = dataset.home / LIMIT_DIR
    lake = Lake(dataset.lake_path)
    stamp = _stamp(dataset, lake)
    stamp_path = root / STAMP_FILE
    if stamp_path.exists():
        saved = json.loads(stamp_path.read_text())
        if saved.get("stamp") == stamp:
            return LimitFiles(root, {**saved["build"], "reused": True}, tuple(saved["users"]))
    shutil.rmtree(root, ignore_errors=True)
    build, users = _build(lake, root)
    root.mkdir(parents=True, exist_ok=True)
    # Written last: a build cut short leaves no stamp and is redone next time.
    stamp_path.write_text(json.dumps({"stamp": stamp, "build": build, "users": users}, indent=2))
    return LimitFiles(root, {**build, "reused": False}, tuple(users))


def _build(lake: Lake, root: Path) -> tuple[dict[str, Any], list[int]]:
    began = time.perf_counter()
    build: dict[str, Any] = {"built_at": datetime.now(UTC).isoformat(timespec="seconds")}
    everyone: set[int] = set()
    duck = in_utc(duckdb.connect())
    try:
        for tier in TIERS:
            if lake.version(tier) is None:
                continue
            started = time.perf_counter()
            users = sorted({lake_file.user_id for _, lake_file in lake.entries(tier)})
            rows = size = 0
            for user_id in users:
                rows += _compact_user(duck, lake, tier, user_id, root)
                size += limit_path(root, tier, user_id).stat().st_size
            everyone.update(users)
            build[tier] = {
                "users": len(users),
                "rows": rows,
                "bytes": size,
                "seconds": round(time.perf_counter() - started, 2),
            }
    finally:
        duck.close()
    build["seconds"] = round(time.perf_counter() - began, 2)
    return build, sorted(everyone)


def _compact_user(
    duck: duckdb.DuckDBPyConnection, lake: Lake, tier: str, user_id: int, root: Path
) -> int:
    """Every lake row of one participant and tier, sorted by (metric, ts), in one file."""
    files = lake.files(tier, [user_id], datetime(1970, 1, 1, tzinfo=UTC), datetime.now(UTC))
    scan, params = scan_sql(files)
    names = ", ".join(columns(tier))
    sql = f"SELECT {names} FROM {scan} AS lake ORDER BY metric, ts"  # noqa: S608
    table = duck.sql(sql, params=params).to_arrow_table()
    path = limit_path(root, tier, user_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table,
        path,
        row_group_size=ROW_GROUP_ROWS,
        compression="zstd",
        compression_level=3,  # as the lake's writer: compare layouts, not codecs
        use_dictionary=["metric"],
        write_statistics=True,
        sorting_columns=[
            pq.SortingColumn(table.schema.names.index("metric")),
            pq.SortingColumn(table.schema.names.index("ts")),
        ],
    )
    return int(table.num_rows)
