"""The historic store: Delta Lake tables per tier (storage format only; imports nothing of ours)."""

from lake.checksum import day_checksums
from lake.duck import in_utc, lake_relation, lake_scan, scan_sql
from lake.layout import TIERS, partition_columns, partition_of, tier_schema
from lake.maintenance import CompactResult, VacuumResult
from lake.read import read_measures
from lake.snapshot import LakeFile, LakeFiles
from lake.storage import LakeStorage
from lake.store import Lake

__all__ = [
    "TIERS",
    "CompactResult",
    "Lake",
    "LakeFile",
    "LakeFiles",
    "LakeStorage",
    "VacuumResult",
    "day_checksums",
    "in_utc",
    "lake_relation",
    "lake_scan",
    "partition_columns",
    "partition_of",
    "read_measures",
    "scan_sql",
    "tier_schema",
]
