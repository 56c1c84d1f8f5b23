"""Lake maintenance (`stratum maintain`, end of the nightly job): compaction, then vacuum."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date

from engine.tiers import LAKE_TABLES
from lake import CompactResult, Lake, VacuumResult
from lake.layout import replaces_days


@dataclass(frozen=True)
class MaintainResult:
    compacted: dict[str, CompactResult]  # per lake table
    vacuum: VacuumResult
    seconds: float

    @property
    def files_rewritten(self) -> int:
        return sum(c.files_removed for c in self.compacted.values())

    @property
    def files_deleted(self) -> int:
        return self.vacuum.total_deleted

    @property
    def bytes_after(self) -> int:
        return sum(c.bytes_after for c in self.compacted.values())

    @property
    def versions(self) -> dict[str, int]:
        return {t: c.version for t, c in self.compacted.items() if c.version is not None}


def maintain_lake(
    lake: Lake, retention_hours: int, settled_before: date | None = None
) -> MaintainResult:
    """Merge each partition holding several files into one (the fine tiers' months once all
    their days lie before ``settled_before``; coarse partitions hold several files only after
    a crash or a foreign writer), then delete files no version younger than the retention
    needs."""
    started = time.perf_counter()
    compacted = {
        table: lake.compact(table, settled_before if replaces_days(table) else None)
        for table in LAKE_TABLES
    }
    vacuum = lake.vacuum(retention_hours)
    return MaintainResult(compacted, vacuum, time.perf_counter() - started)
