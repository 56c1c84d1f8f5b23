"""Lake maintenance (`stratum maintain`, end of the nightly job): compaction, then vacuum."""

from __future__ import annotations

import time
from dataclasses import dataclass

from engine.tiers import LAKE_TABLES
from lake import CompactResult, Lake, VacuumResult


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


def maintain_lake(lake: Lake, retention_hours: int) -> MaintainResult:
    """Merge partitions holding several files (late re-syncs leave none, but a crashed or
    partial history may), then delete files no version younger than the retention needs."""
    started = time.perf_counter()
    compacted = {table: lake.compact(table) for table in LAKE_TABLES}
    vacuum = lake.vacuum(retention_hours)
    return MaintainResult(compacted, vacuum, time.perf_counter() - started)
