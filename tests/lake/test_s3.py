"""The lake on S3 (the local moto server): what object storage changes, tested there.

Every other lake test runs on both storages through the `lake` fixture; these cover what only
object storage has: no lock across processes (the conditional put of each commit arbitrates),
no folders, and configuration from the AWS_* variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest
from deltalake.exceptions import CommitFailedError

from lake import Lake, LakeStorage
from tests.lake.builders import ALL_TIME, JAN1, read_all
from tests.lake.test_crash import PAIRS, assert_whole, generation
from tests.s3server import LocalS3

REPO = Path(__file__).parents[2]
COMMITS = 5

WRITER = """
import sys
from lake import Lake
from tests.lake.test_crash import PAIRS, generation
lake = Lake(sys.argv[1])
first = int(sys.argv[2])
for number in range(first, first + int(sys.argv[3])):
    print(lake.replace_days("raw", generation(number), PAIRS), flush=True)
"""


@pytest.fixture
def s3_lake(s3_root: str) -> Lake:
    return Lake(s3_root)


def test_two_processes_writing_the_same_days_one_wins_each_commit_nothing_lost(
    s3_lake: Lake,
) -> None:
    base = s3_lake.replace_days("raw", generation(0), PAIRS)  # the table exists before the race
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, s3_lake.root, str(first), str(COMMITS)],
            cwd=REPO,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for first in (100, 200)
    ]
    versions = []
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        versions += [int(line) for line in out.split()]
    # Every commit landed at its own version: none overwrote another.
    assert sorted(versions) == list(range(base + 1, base + 2 * COMMITS + 1))
    assert s3_lake.version("raw") == base + 2 * COMMITS
    # Each version holds exactly one generation whole, and every generation got its version.
    seen = set()
    for version in versions:
        table = read_all(s3_lake, "raw", version)
        numbers = pc.unique(table.column("value")).to_pylist()
        assert len(numbers) == 1, f"version {version} mixes generations {numbers}"
        assert table.num_rows == generation(0).num_rows
        seen.add(int(numbers[0]))
    assert seen == {*range(100, 100 + COMMITS), *range(200, 200 + COMMITS)}
    assert assert_whole(s3_lake) in seen


def test_a_commit_on_a_stale_version_fails_on_s3_without_a_lock(s3_lake: Lake) -> None:
    """The guarantee the retry rests on: S3's put-if-absent refuses a second commit of one
    version (without it, delta-rs would overwrite the first writer's commit)."""
    s3_lake.replace_days("raw", generation(1), PAIRS)
    stale = s3_lake._open_for_write("raw")
    winner = s3_lake.replace_days("raw", generation(2), PAIRS)
    with pytest.raises(CommitFailedError):
        s3_lake._commit("raw", stale, [], "replace_days")
    assert s3_lake.version("raw") == winner
    assert read_all(s3_lake, "raw").num_rows == generation(2).num_rows


def test_vacuum_on_s3_deletes_removed_files_and_orphans_but_not_current_ones(
    s3_lake: Lake,
) -> None:
    s3_lake.replace_days("raw", generation(1), PAIRS)
    old = s3_lake.files("raw", None, *ALL_TIME).paths
    s3_lake.replace_days("raw", generation(2), PAIRS)
    current = s3_lake.files("raw", None, *ALL_TIME).paths
    orphan = f"{s3_lake.table_dir('raw')}/user_id=1/date={JAN1}/orphan.parquet"
    with s3_lake.storage.filesystem.open_output_stream(s3_lake.storage.fs_path(orphan)) as out:
        out.write(b"left by a killed writer")

    done = s3_lake.vacuum(retention_hours=0)

    assert done.files_deleted["raw"] == len(old) + 1
    assert not any(s3_lake.storage.exists(p) for p in [*old, orphan])
    assert all(s3_lake.storage.exists(p) for p in current)
    assert_whole(s3_lake)


def test_vacuum_on_s3_keeps_what_is_younger_than_its_retention(s3_lake: Lake) -> None:
    """By age, as on a folder: files removed a moment ago and a fresh orphan (perhaps a
    writer's commit in flight) stay until they are older than the retention."""
    s3_lake.replace_days("raw", generation(1), PAIRS)
    removed = s3_lake.files("raw", None, *ALL_TIME).paths
    s3_lake.replace_days("raw", generation(2), PAIRS)
    orphan = f"{s3_lake.table_dir('raw')}/user_id=1/date={JAN1}/in-flight.parquet"
    with s3_lake.storage.filesystem.open_output_stream(s3_lake.storage.fs_path(orphan)) as out:
        out.write(b"a commit still being written")

    done = s3_lake.vacuum(retention_hours=1)

    assert done.files_deleted["raw"] == 0
    assert all(s3_lake.storage.exists(p) for p in [*removed, orphan])
    assert_whole(s3_lake)
    assert s3_lake.vacuum(retention_hours=0).files_deleted["raw"] == len(removed) + 1


def test_s3_settings_come_from_the_aws_variables(
    s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in s3_server.options:
        monkeypatch.delenv(name, raising=False)
    explicit = Lake(s3_server.fresh_root(), storage_options=s3_server.options)
    explicit.replace_days("raw", generation(1), PAIRS)
    for name, value in s3_server.options.items():
        monkeypatch.setenv(name, value)
    from_environment = Lake(explicit.root)
    assert read_all(from_environment, "raw").num_rows == generation(1).num_rows


@pytest.mark.parametrize(
    ("root", "options", "message"),
    [
        ("s3://", None, "names no bucket"),
        ("gs://bucket/lake", None, "local folder or s3://"),
        ("s3://bucket/lake", {"AWS_ENDPOINT": "x"}, "unknown storage options"),
        ("s3://bucket/lake", {"AWS_ENDPOINT_URL": "127.0.0.1:9000"}, "http"),
    ],
)
def test_bad_locations_are_refused_with_a_reason(
    root: str, options: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LakeStorage(root, options)


def test_a_lake_on_s3_keeps_no_local_files(s3_lake: Lake, tmp_path: Path) -> None:
    s3_lake.replace_days("raw", generation(1), PAIRS)
    s3_lake.compact("raw")
    assert not Path(s3_lake.root).exists() and not Path("s3:").exists()
    assert read_all(s3_lake, "raw").num_rows == generation(1).num_rows
