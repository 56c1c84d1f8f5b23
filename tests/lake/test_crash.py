"""A writer killed with SIGKILL at any instant leaves readers on the previous version, and the
next replace_days succeeds: on a local folder and on S3 (the local moto server), where no lock
spans processes and a killed writer leaves objects, not files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lake import Lake, day_checksums
from tests.lake.builders import JAN1, days_from, read_all, tier_rows

PAIRS = [(u, d) for u in (1, 2, 3) for d in days_from(JAN1, 4)]
REPO = Path(__file__).parents[2]

WRITER = """
import sys
from lake import Lake
from tests.lake.test_crash import PAIRS, generation
lake = Lake(sys.argv[1])
start = int(sys.argv[2])
for number in range(start, start + 10_000):
    lake.replace_days("raw", generation(number), PAIRS)
    print(number, flush=True)
"""


def generation(number: int) -> pa.Table:
    """All rows of PAIRS, every value equal to ``number`` (so a mix of commits shows)."""
    rows = tier_rows("raw", PAIRS, metrics=("hr", "steps", "spo2"), step_seconds=30)
    return rows.set_column(4, "value", pa.array([float(number)] * rows.num_rows))


def assert_whole(lake: Lake) -> int | None:
    """The lake holds exactly one generation (or nothing) and reads back consistently."""
    version = lake.version("raw")
    table = read_all(lake, "raw")
    if table.num_rows == 0:
        return None
    numbers = pc.unique(table.column("value")).to_pylist()
    assert len(numbers) == 1, f"version {version} mixes generations {numbers}"
    expected = generation(int(numbers[0]))
    assert table.num_rows == expected.num_rows
    assert lake.day_stats("raw", PAIRS) == day_checksums("raw", expected)
    return int(numbers[0])


@pytest.mark.slow
def test_sigkill_at_any_instant_keeps_the_lake_whole(lake_root: str | Path) -> None:
    root = str(lake_root)  # the writer's argument; the AWS_* variables reach it for S3
    delays = [0.0, 0.01, 0.03, 0.06, 0.1, 0.15]  # after the writer's first commit
    seen = []
    for trial, delay in enumerate(delays):
        with subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(trial * 10_000)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        ) as writer:
            assert writer.stdout is not None
            if trial:  # the first trial dies creating the table or writing its first files
                writer.stdout.readline()
            time.sleep(delay)
            os.kill(writer.pid, signal.SIGKILL)

        seen.append(assert_whole(Lake(root)))
        recovered = Lake(root)
        recovered.replace_days("raw", generation(-1 - trial), PAIRS)
        assert assert_whole(recovered) == -1 - trial

    # Every writer that reported a commit was read back at that commit or a later one.
    assert all(n is not None and n >= trial * 10_000 for trial, n in enumerate(seen) if trial)
    Lake(root).vacuum(retention_hours=0)  # orphans of killed writers go; the lake stays whole
    assert assert_whole(Lake(root)) == -len(delays)
