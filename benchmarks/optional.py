"""Parts other teams ship separately (the lake sync): found at run time, never stubbed.

A backend or workload whose module is missing is reported as "not available" with the
reason, instead of being faked.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def _module(name: str) -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module(name), ""
    except ModuleNotFoundError as exc:
        return None, f"{exc.name} is not installed in this checkout"
    except ImportError as exc:  # present but broken: say so rather than hide it
        return None, f"{name} failed to import: {exc}"
