"""Plan: pure data describing where each part of an answer comes from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from engine.query import DataQuery, describe
from engine.tiers import Resolution
from lake import LakeFile

Backend = Literal["lake", "warm"]
DayRange = tuple[date, date]  # inclusive first and last day


@dataclass(frozen=True)
class Segment:
    """One backend's share of the answer: these users, this time range, one source."""

    backend: Backend
    resolution: Resolution  # the shape of the rows it yields
    source: str  # the warm table or lake table it reads
    users: tuple[int, ...]
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC
    rollup_from_raw: bool = False  # warm only: rollup computed on the fly (not refreshed yet)
    files: tuple[LakeFile, ...] = ()  # lake only: exact file list of the pinned version
    lake_version: int | None = None
    estimated_rows: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "resolution": self.resolution,
            "source": self.source,
            "users": list(self.users),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "rollup_from_raw": self.rollup_from_raw,
            "files": len(self.files),
            "lake_version": self.lake_version,
            "estimated_rows": self.estimated_rows,
        }


@dataclass(frozen=True)
class Plan:
    query: DataQuery
    segments: tuple[Segment, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)
    # What making it took, per stage (ms) and warm-store statements (engine.timings).
    timings: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # A calendar answer (local days, weeks, months): `query` is then the finer query whose
    # rows are bucketed, and this describes the request and its buckets.
    calendar: dict[str, Any] | None = None

    @property
    def resolution(self) -> Resolution:
        return self.query.resolution

    @property
    def answer_resolution(self) -> str:
        """What the answer's rows are: the tier's resolution, or the calendar bucket."""
        return str(self.calendar["bucket"]) if self.calendar else self.resolution

    @property
    def needs_warm(self) -> bool:
        return any(s.backend == "warm" for s in self.segments)

    @property
    def sources(self) -> list[str]:
        """Distinct backends in plan order, e.g. ["lake", "warm"]."""
        return list(dict.fromkeys(s.backend for s in self.segments))

    def describe(self) -> dict[str, Any]:
        described = {
            "query": describe(self.query),
            "resolution": self.resolution,
            "sources": self.sources,
            "segments": [s.describe() for s in self.segments],
            "notes": list(self.notes),
            "timings": dict(self.timings),
        }
        if self.calendar is not None:
            described["query"] = self.calendar["query"]
            described["resolution"] = self.calendar["bucket"]
            described["calendar"] = {k: v for k, v in self.calendar.items() if k != "query"}
        return described
