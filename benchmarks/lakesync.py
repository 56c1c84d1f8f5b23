"""The lake sync as the bench uses it: export completed days up to a given day.

The sync module ships separately; when it is missing the dataset is built without a lake
and every lake backend reports "not available" with this module's reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from benchmarks.optional import _module
from engine.settings import Settings


@dataclass(frozen=True)
class SyncOutcome:
    ok: bool
    rows: int  # raw rows exported
    seconds: float
    note: str  # why nothing was synced, when ok is False
    detail: dict[str, Any]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def record(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "seconds": round(self.seconds, 2),
            "note": self.note,
            "detail": self.detail,
        }


def _sync_module() -> tuple[Any, str]:
    module, why = _module("sync.export")
    if module is None:
        return None, f"lake sync not available ({why})"
    return module, ""


def available_marker() -> str:
    """Part of the dataset fingerprint: a dataset built without the sync is rebuilt with it."""
    return "lake" if _sync_module()[0] is not None else "nolake"


def sync_until(settings: Settings, url: str, until: date) -> SyncOutcome:
    """Export every completed day up to and including `until` to the lake."""
    module, why = _sync_module()
    if module is None:
        return SyncOutcome(False, 0, 0.0, why, {})
    from lake import Lake

    lake = Lake(settings.lake.path)
    started = time.perf_counter()
    # Days before `today - grace_days` are exported: the day after `until`, no grace.
    result = module.sync_to_lake(
        url, lake, grace_days=0, batch_days=settings.lake.sync_batch_days,
        today=until + timedelta(days=1),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    detail = {
        "days": result.days,
        "rows_per_tier": dict(result.rows),
        "bytes": result.bytes,
        "files": result.files,
        "total_rows_per_s": result.rows_per_s,
    }
    return SyncOutcome(True, int(result.rows.get("raw", 0)), seconds, "", detail)
