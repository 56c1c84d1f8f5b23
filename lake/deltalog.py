"""Read the Delta commits after a known version, to move a cached snapshot forward cheaply.

A Delta commit is one JSON file, ``_delta_log/<version:020>.json``, created atomically and
never changed. Reading the few new ones costs well under a millisecond, whereas reloading the
table through delta-rs replays its checkpoint and log. Only file actions are interpreted; a
commit carrying anything else (schema or protocol change, deletion vectors, ...) makes the
caller fall back to a full load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lake.storage import LakeStorage

_IGNORED = {"commitInfo", "txn"}  # no effect on the file list


@dataclass
class LogDelta:
    """Net file changes from one version to a later one."""

    version: int
    added: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> add action
    removed: set[str] = field(default_factory=set)


def log_entry(table_dir: str, version: int) -> str:
    return f"{table_dir}/_delta_log/{version:020d}.json"


def read_commits(storage: LakeStorage, table_dir: str, after: int) -> LogDelta | None:
    """File changes of every commit after version ``after``; None if one cannot be applied."""
    delta = LogDelta(after)
    while True:
        try:
            text = storage.read_text(log_entry(table_dir, delta.version + 1))
        except FileNotFoundError:
            return delta
        for line in text.splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            if "add" in action:
                add = action["add"]
                if add.get("deletionVector"):
                    return None
                delta.added[add["path"]] = add
                delta.removed.discard(add["path"])
            elif "remove" in action:
                path = action["remove"]["path"]
                delta.added.pop(path, None)
                delta.removed.add(path)
            elif not _IGNORED.issuperset(action):
                return None
        delta.version += 1
