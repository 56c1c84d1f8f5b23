"""Dataset presets: how big a cohort, which spans, how many repetitions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import date

# Bump when the way a dataset is built changes, so old bench homes are rebuilt.
DATASET_VERSION = 1

SPAN_DAYS = {"1 day": 1, "1 week": 7, "1 month": 30, "1 year": 365, "3 years": 1095}


@dataclass(frozen=True)
class Cohort:
    """One generate_cohort call: `users` participants from `first_user_id`, `days` days."""

    users: int
    days: int
    every_s: int | None  # None: each metric's native interval (heart rate at 1 Hz)
    first_user_id: int

    @property
    def user_ids(self) -> tuple[int, ...]:
        return tuple(range(self.first_user_id, self.first_user_id + self.users))


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    main: Cohort  # every metric once a minute: the span x participants matrix
    high_rate: Cohort | None  # native intervals (1 Hz heart rate): the high-rate group
    end: date  # last day of both cohorts; the last `warm_days` stay in the warm store
    warm_days: int = 2  # not synced: the grace period (recent data lives in PostgreSQL)
    seed: int = 0
    warmup: int = 1  # untimed runs of each backend before a case
    min_repetitions: int = 3
    max_repetitions: int = 7
    cell_budget_s: float = 10.0  # stop repeating a case once a backend spent this long on it
    # A backend this short goes on past max_repetitions, up to short_repetitions runs or
    # short_budget_s spent: 5 runs of a 1-3 ms workload left its ratios +-0.2 apart run to run.
    short_repetitions: int = 21
    short_budget_s: float = 0.25
    pair_rounds: int = 20  # alternating rounds of each side-by-side pair (run_pair)
    concurrency: int = 8  # analysts issuing /data requests at once
    concurrent_requests: int = 48  # requests in all, per concurrency run
    page_size: int = 10_000  # deep paging and JSON pages
    deep_page: int = 1_000  # the deep page, capped to the answer's last page
    ingest_rows_target: int = 200_000  # rows of the generated Parquet file ingested from scratch
    memory_budget: str = "512MiB"  # STRATUM_MEMORY_BUDGET of the budget-proof server
    json_pages: int = 30  # concurrent 1M-row JSON pages of the budget proof
    minutes: float = 2.0  # the time this preset should take on a 2-core machine
    users_axis: tuple[int, ...] = field(default=(1, 10))  # plus "all"

    @property
    def start(self) -> date:
        return date.fromordinal(self.end.toordinal() - self.main.days + 1)

    @property
    def lake_days(self) -> int:
        return self.main.days - self.warm_days

    @property
    def spans(self) -> list[str]:
        """Spans that fit in the lake part of the main cohort."""
        return [name for name, days in SPAN_DAYS.items() if days <= self.lake_days]

    def dataset_fingerprint(self) -> str:
        """Changes whenever the data a preset builds would change."""
        data = {
            "version": DATASET_VERSION,
            "main": asdict(self.main),
            "high_rate": None if self.high_rate is None else asdict(self.high_rate),
            "end": self.end.isoformat(),
            "warm_days": self.warm_days,
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# Fixed dates: the same preset builds the same data on every machine and every day.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="ci",
            description="smoke test: 3 participants x 10 days per minute, "
            "1 participant x 2 days at 1 Hz",
            main=Cohort(users=3, days=10, every_s=60, first_user_id=1),
            high_rate=Cohort(users=1, days=2, every_s=None, first_user_id=1001),
            end=date(2024, 1, 10),
            min_repetitions=2,
            max_repetitions=3,
            cell_budget_s=2.0,
            concurrent_requests=16,
            page_size=1_000,
            deep_page=100,
            ingest_rows_target=100_000,
            memory_budget="256MiB",
            json_pages=4,  # the whole lake is ~0.3M rows: a few pages show the same
            minutes=2.0,
        ),
        Preset(
            name="small",
            description="5 participants x 60 days per minute, 1 participant x 7 days at 1 Hz",
            main=Cohort(users=5, days=60, every_s=60, first_user_id=1),
            high_rate=Cohort(users=1, days=7, every_s=None, first_user_id=1001),
            end=date(2024, 2, 29),
            max_repetitions=5,
            cell_budget_s=4.0,
            concurrent_requests=32,
            page_size=1_000,
            ingest_rows_target=1_000_000,
            memory_budget="384MiB",
            minutes=5.0,
        ),
        Preset(
            name="medium",
            description="10 participants x 1 year per minute, 2 participants x 30 days at 1 Hz",
            main=Cohort(users=10, days=367, every_s=60, first_user_id=1),
            high_rate=Cohort(users=2, days=30, every_s=None, first_user_id=1001),
            end=date(2024, 12, 31),
            max_repetitions=5,
            cell_budget_s=8.0,
            concurrent_requests=64,
            ingest_rows_target=2_000_000,
            memory_budget="512MiB",
            minutes=20.0,
        ),
        Preset(
            name="large",
            description="100 participants x 3 years per minute, 10 participants x 90 days "
            "at 1 Hz (for servers with 16+ cores, 64+ GiB RAM, ~250 GB disk)",
            main=Cohort(users=100, days=1097, every_s=60, first_user_id=1),
            high_rate=Cohort(users=10, days=90, every_s=None, first_user_id=1001),
            end=date(2024, 12, 31),
            max_repetitions=7,
            cell_budget_s=30.0,
            concurrency=32,
            concurrent_requests=256,
            ingest_rows_target=20_000_000,
            memory_budget="4GiB",
            minutes=240.0,
            users_axis=(1, 10, 100),
        ),
    )
}
