"""Parts other teams ship separately (lake sync, HTTP API): found at run time, never stubbed.

A backend or workload whose module is missing is reported as "not available" with the
reason, instead of being faked.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any


def _module(name: str) -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module(name), ""
    except ModuleNotFoundError as exc:
        return None, f"{exc.name} is not installed in this checkout"
    except ImportError as exc:  # present but broken: say so rather than hide it
        return None, f"{name} failed to import: {exc}"


def app_factory() -> tuple[Callable[..., Any] | None, str]:
    """`api.app.create_app(settings, url)`, or None and why not."""
    module, why = _module("api.app")
    if module is None:
        return None, f"HTTP API not available ({why})"
    factory = getattr(module, "create_app", None)
    if factory is None:
        return None, "HTTP API not available (api.app has no create_app)"
    return factory, ""
