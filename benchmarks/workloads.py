"""The questions every backend answers: spans x participants x resolution, deep pages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from benchmarks.dataset import Dataset
from benchmarks.presets import SPAN_DAYS
from engine.access import LOCAL_ADMIN
from engine.query import build_query
from engine.settings import QuerySettings
from engine.tiers import Resolution

Requested = Literal["raw", "auto"]
METRIC = "heart_rate"  # one metric per series: the "1 participant x 1 metric"
# Three metrics give the deep-paging answer its size (the 10M rows at medium).
PAGING_METRICS = ("heart_rate", "respiratory_rate", "steps")


@dataclass(frozen=True)
class Case:
    group: str  # "span", "high rate", "recent", "deep paging"
    span: str
    users_label: str  # "1", "10", "all (10)"
    users: tuple[int, ...]
    metrics: tuple[str, ...]
    start: datetime
    end: datetime
    requested: Requested
    resolution: Resolution  # what the answer comes at (auto resolved as the engine does)
    page_size: int = 0  # 0: the whole answer
    page_number: int = 1
    tags: tuple[str, ...] = field(default=())

    @property
    def id(self) -> str:
        page = "" if self.page_size == 0 else f" page {self.page_number}"
        return (
            f"{self.group}: {self.span} x {self.users_label} x {self.requested}"
            f"{'' if self.requested == 'raw' else f' ({self.resolution})'}{page}"
        )

    @property
    def span_days(self) -> float:
        return (self.end - self.start).total_seconds() / 86_400

    def params(self, **extra: str) -> dict[str, list[str]]:
        """The request as /data (and build_query) take it."""
        base = {
            "user_id": ",".join(map(str, self.users)),
            "metric": ",".join(self.metrics),
            "start": self.start.isoformat().replace("+00:00", "Z"),
            "end": self.end.isoformat().replace("+00:00", "Z"),
            "resolution": self.requested,
            "page_size": str(self.page_size),
        }
        if self.page_size:
            base["page_number"] = str(self.page_number)
        base.update(extra)
        return {k: [v] for k, v in base.items()}


def resolve(
    requested: Requested,
    users: tuple[int, ...],
    metrics: tuple[str, ...],
    start: datetime,
    end: datetime,
    query: QuerySettings,
) -> Resolution:
    if requested == "raw":
        return "raw"
    params = {
        "user_id": [",".join(map(str, users))],
        "metric": [",".join(metrics)],
        "start": [start.isoformat()],
        "end": [end.isoformat()],
        "resolution": ["auto"],
    }
    return build_query(params, query, principal=LOCAL_ADMIN).resolution


def _users_axis(dataset: Dataset) -> list[tuple[str, tuple[int, ...]]]:
    everyone = dataset.main_users
    axis: list[tuple[str, tuple[int, ...]]] = []
    for count in dataset.preset.users_axis:
        if count < len(everyone):
            axis.append((str(count), everyone[:count]))
    axis.append((f"all ({len(everyone)})", everyone))
    return axis


def span_cases(dataset: Dataset, query: QuerySettings) -> list[Case]:
    """Spans ending where the lake ends: historic questions, all of them in the lake."""
    cases = []
    end = dataset.lake_end
    for span in dataset.preset.spans:
        start = end - timedelta(days=SPAN_DAYS[span])
        for users_label, users in _users_axis(dataset):
            for requested in ("raw", "auto"):
                metrics = (METRIC,)
                res = resolve(requested, users, metrics, start, end, query)
                cases.append(
                    Case("span", span, users_label, users, metrics, start, end, requested, res)
                )
    return cases


def high_rate_cases(dataset: Dataset, query: QuerySettings) -> list[Case]:
    """One participant at 1 Hz: the densest raw series the dataset has."""
    cohort = dataset.preset.high_rate
    if cohort is None:
        return []
    lake_days = cohort.days - dataset.preset.warm_days
    end = dataset.lake_end
    users = cohort.user_ids[:1]
    cases = []
    for span, days in SPAN_DAYS.items():
        if days > lake_days:
            continue
        start = end - timedelta(days=days)
        for requested in ("raw", "auto"):
            metrics = (METRIC,)
            res = resolve(requested, users, metrics, start, end, query)
            cases.append(
                Case("high rate", span, "1 (1 Hz)", users, metrics, start, end, requested, res)
            )
    return cases


def recent_cases(dataset: Dataset, query: QuerySettings) -> list[Case]:
    """The last day, still in the warm store only (grace period): the router's warm path."""
    start = dataset.lake_end
    end = start + timedelta(days=1)
    users = dataset.main_users[:1]
    cases = []
    for requested in ("raw", "auto"):
        res = resolve(requested, users, (METRIC,), start, end, query)
        cases.append(
            Case(
                "recent", "last day (warm only)", "1", users, (METRIC,), start, end, requested, res
            )
        )
    return cases


def paging_cases(dataset: Dataset, answer_rows: int) -> list[Case]:
    """Page 1 and the deep page of the same raw answer (every participant, the whole lake)."""
    preset = dataset.preset
    start = dataset.lake_end - timedelta(days=preset.lake_days)
    last_page = max(1, answer_rows // preset.page_size)
    deep = min(preset.deep_page, last_page)
    users = dataset.main_users
    label = f"all ({len(users)})"
    span = f"{preset.lake_days} days"
    return [
        Case(
            "deep paging",
            span,
            label,
            users,
            PAGING_METRICS,
            start,
            dataset.lake_end,
            "raw",
            "raw",
            page_size=preset.page_size,
            page_number=number,
        )
        for number in dict.fromkeys((1, deep))
    ]


def concurrency_mix(dataset: Dataset, query: QuerySettings) -> list[Case]:
    """What a room of analysts asks at once: short raw looks and long summaries."""
    end = dataset.lake_end
    longest = dataset.preset.spans[-1]
    users = dataset.main_users
    few = users[: min(10, len(users))]
    mix: list[tuple[str, tuple[int, ...], Requested]] = [
        ("1 day", users[:1], "raw"),
        ("1 week", users[:1], "auto"),
        (longest, few, "auto"),
        (longest, users, "auto"),
        ("1 day", few, "raw"),
    ]
    cases = []
    for span, who, requested in mix:
        start = end - timedelta(days=SPAN_DAYS[span])
        res = resolve(requested, who, (METRIC,), start, end, query)
        cases.append(
            Case(
                "concurrency",
                span,
                str(len(who)),
                who,
                (METRIC,),
                start,
                end,
                requested,
                res,
                page_size=query.default_page_size,
            )
        )
    return list({case.id: case for case in cases}.values())  # small presets repeat some
