"""Issue 11: a 200 is never wrong or short. A damaged lake file (a flipped byte, another
day's file copied over it, truncated, missing) or a lost Delta commit is never served: the day
comes from the warm store while it holds it, else 503 lake_damaged naming the day; /health
reports the damage. On a folder and on S3 (the local server) alike."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from pyarrow.fs import FileSelector

from api.app import create_app
from engine.settings import Settings
from lake import Lake, LakeStorage
from sync.export import sync_to_lake
from sync.tiering import tier_warm_store
from tests.api.conftest import admin_client, api_settings, load_cohort

DAY = {"user_id": "1,2", "metric": "heart_rate,steps", "page_size": "50000"}
LAKE_DAY = {**DAY, "start": "2024-01-01", "end": "2024-01-02", "resolution": "raw"}
BOTH_DAYS = {**DAY, "start": "2024-01-01", "end": "2024-01-03", "resolution": "raw"}


def answer(settings: Settings, url: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """One request from a fresh process (a new app: nothing cached)."""
    with admin_client(create_app(settings, url), url) as client:
        response = client.get("/data", params=params)
        return response.status_code, response.json()


def health(settings: Settings, url: str) -> dict[str, Any]:
    with admin_client(create_app(settings, url), url) as client:
        body: dict[str, Any] = client.get("/health").json()
        return body


class LakeObject:
    """One lake file, on whichever storage the lake is (to damage it)."""

    def __init__(self, storage: LakeStorage, path: str) -> None:
        self.storage, self.path = storage, path

    def read(self) -> bytes:
        with self.storage.open(self.path) as handle:
            return bytes(handle.read())

    def write(self, data: bytes) -> None:
        fs_path = self.storage.fs_path(self.path)
        with self.storage.filesystem.open_output_stream(fs_path) as out:
            out.write(data)

    def delete(self) -> None:
        self.storage.filesystem.delete_file(self.storage.fs_path(self.path))


def lake_file(settings: Settings, user_id: int, day: str, tier: str = "raw") -> LakeObject:
    lake = Lake(settings.lake.path)
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    (found,) = lake.files(tier, [user_id], start, start.replace(day=start.day + 1)).paths
    return LakeObject(lake.storage, found)


def flip_byte(target: LakeObject) -> None:
    data = bytearray(target.read())
    data[len(data) // 3] ^= 0x01
    target.write(bytes(data))


def copy_other_day(target: LakeObject) -> None:
    other = target.path.replace("user_id=1", "user_id=2")
    folder = other.rsplit("/", 1)[0]
    fs = target.storage.filesystem
    (source,) = fs.get_file_info(FileSelector(target.storage.fs_path(folder)))
    with fs.open_input_stream(source.path) as handle:
        target.write(bytes(handle.read()))


def truncate(target: LakeObject) -> None:
    data = target.read()
    target.write(data[: len(data) // 2])


DAMAGE: dict[str, Callable[[LakeObject], None]] = {
    "flipped byte": flip_byte,
    "another day's file": copy_other_day,
    "truncated": truncate,
    "missing": LakeObject.delete,
}


def synced(warm_url: str, tmp_path: Path, lake_root: str | Path) -> tuple[Settings, dict[str, Any]]:
    """The cohort with 2024-01-01 in the lake; the warm store's own answer for that day."""
    load_cohort(warm_url)
    settings = api_settings(tmp_path, STRATUM_LAKE_PATH=str(lake_root))
    status, warm_only = answer(settings, warm_url, LAKE_DAY)
    assert status == 200 and warm_only["meta"]["sources"] == ["warm"]
    lake = Lake(settings.lake.path)
    sync_to_lake(warm_url, lake, grace_days=1, batch_days=8, today=date(2024, 1, 3))
    status, from_lake = answer(settings, warm_url, LAKE_DAY)
    assert from_lake["meta"]["sources"] == ["lake"] and from_lake["data"] == warm_only["data"]
    return settings, warm_only


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_lake_file_is_served_from_the_warm_store(
    warm_url: str, tmp_path: Path, lake_root: str | Path, damage: str
) -> None:
    settings, warm_only = synced(warm_url, tmp_path, lake_root)
    DAMAGE[damage](lake_file(settings, 1, "2024-01-01"))

    status, body = answer(settings, warm_url, LAKE_DAY)
    assert status == 200, body
    assert body["data"] == warm_only["data"]
    assert "warm" in body["meta"]["sources"]
    report = health(settings, warm_url)
    assert report["status"] == "degraded"
    assert {(d["tier"], d["user_id"], d["day"]) for d in report["lake_damaged"]} == {
        ("raw", 1, "2024-01-01")
    }


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_damaged_day_the_warm_store_no_longer_holds_is_503_naming_it(
    warm_url: str, tmp_path: Path, lake_root: str | Path, damage: str
) -> None:
    settings, _ = synced(warm_url, tmp_path, lake_root)
    tiered = tier_warm_store(
        warm_url, Lake(settings.lake.path), older_than_days=1, today=date(2024, 1, 3)
    )
    assert tiered.days == 3
    DAMAGE[damage](lake_file(settings, 1, "2024-01-01"))

    status, body = answer(settings, warm_url, LAKE_DAY)
    assert status == 503, body
    assert body["error"]["code"] == "lake_damaged"
    assert "user 1 2024-01-01" in body["error"]["message"]
    # The other user's day is intact and still served.
    status, body = answer(settings, warm_url, {**LAKE_DAY, "user_id": "2"})
    assert status == 200 and body["data"] and body["meta"]["sources"] == ["lake"]


def test_a_lost_delta_commit_is_never_read_as_the_table(
    warm_url: str, tmp_path: Path, lake_root: str | Path
) -> None:
    load_cohort(warm_url)
    settings = api_settings(tmp_path, STRATUM_LAKE_PATH=str(lake_root))
    status, warm_only = answer(settings, warm_url, BOTH_DAYS)
    lake = Lake(settings.lake.path)
    sync_to_lake(warm_url, lake, grace_days=1, batch_days=8, today=date(2024, 1, 3))
    sync_to_lake(warm_url, lake, grace_days=1, batch_days=8, today=date(2024, 1, 4))
    status, both = answer(settings, warm_url, BOTH_DAYS)
    assert both["meta"]["sources"] == ["lake"] and both["data"] == warm_only["data"]

    log = lake.storage.fs_path(f"{lake.table_dir('raw')}/_delta_log")
    entries = lake.storage.filesystem.get_file_info(FileSelector(log))
    newest = sorted(i.path for i in entries if i.path.endswith(".json"))[-1]
    lake.storage.filesystem.delete_file(newest)

    status, body = answer(settings, warm_url, BOTH_DAYS)
    assert status == 200, body
    assert body["data"] == warm_only["data"]
    assert body["meta"]["sources"] == ["lake", "warm"]
    report = health(settings, warm_url)
    assert report["status"] == "degraded"
    assert {(d["tier"], d["day"]) for d in report["lake_damaged"]} == {("raw", "2024-01-02")}


def test_a_file_damaged_after_it_was_verified_is_a_503_not_a_500(
    warm_url: str, tmp_path: Path
) -> None:
    # Rot in place keeping size and mtime: possible on disk (on S3 a rewrite is a new object
    # with a new mtime, so it is checked again before it is read).
    settings, _ = synced(warm_url, tmp_path, tmp_path / "lake")
    path = Path(lake_file(settings, 1, "2024-01-01").path)
    with admin_client(create_app(settings, warm_url), warm_url) as client:
        assert client.get("/data", params=LAKE_DAY).status_code == 200  # verified, cached
        # Rot in place: same size, same mtime, so the cached verification still matches.
        stat = path.stat()
        path.write_bytes(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        response = client.get("/data", params=LAKE_DAY)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "lake_damaged"
        # Checked again on the next request: the warm store answers.
        response = client.get("/data", params=LAKE_DAY)
        assert response.status_code == 200 and response.json()["meta"]["sources"] == [
            "lake",  # user 2's day, intact
            "warm",  # user 1's
        ]
