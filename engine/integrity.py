"""Lake files are checked before this process first serves them (issue 11).

Each file of a lake segment that this process has not verified yet is compared with what the
catalog recorded when it was committed (`lake_files`: size and content hash); the outcome is
cached by (path, size, mtime), so a file is hashed once per process and later queries pay a
stat. Without a record (an older lake, or the warm store unreachable) the size in the Delta
log is checked and the file is read with its page checksums verified. A failing file names
the (user, day)s it holds, which the engine then serves from the warm store or refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import date

from engine.plan import Plan
from lake import Lake
from lake.integrity import VerifiedFiles, check_file, file_days

log = logging.getLogger(__name__)

DayKey = tuple[int, date]
# (lake table, relative paths) -> path -> (size, content hash); None: records unreadable now.
Records = Callable[[str, Sequence[str]], dict[str, tuple[int, str]] | None]


class FileChecker:
    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.verified = VerifiedFiles(lake.storage)

    def all_known_good(self, plan: Plan) -> bool:
        """Whether this process verified every lake file of the plan and none changed since:
        `damaged` would find nothing without reading a record."""
        return all(
            self.verified.known_good(f.path)
            for segment in plan.segments
            if segment.backend == "lake"
            for f in segment.files
        )

    def damaged(self, plan: Plan, records: Records) -> dict[str, dict[DayKey, str]]:
        """Per lake table, the (user, day)s of the plan's lake files that are not intact,
        with the file and the reason."""
        found: dict[str, dict[DayKey, str]] = {}
        for segment in plan.segments:
            if segment.backend != "lake":
                continue
            todo = [f for f in segment.files if not self.verified.known_good(f.path)]
            if not todo:
                continue
            table = segment.source
            by_relative = {self.lake.relative_path(table, f): f for f in todo}
            recorded = records(table, list(by_relative)) or {}
            for relative, lake_file in by_relative.items():
                size, digest = recorded.get(relative, (lake_file.size_bytes, None))
                why = check_file(self.lake.storage, lake_file.path, size, digest)
                if why is None:
                    self.verified.remember(lake_file.path)
                    continue
                log.error("lake file %s/%s is damaged: %s", table, relative, why)
                for day in file_days(lake_file):
                    found.setdefault(table, {})[day] = f"{relative}: {why}"
        return found
