"""The explorer page's first chart, timed in headless Chromium (Debian's `chromium`).

Each run opens the page in a fresh browser context (empty cache, as a first visit) with the
key already in the tab's sessionStorage and the view in the URL's fragment, and reads the
page's own `performance.now()` at the moment its first chart was drawn: navigation start
to a drawn chart, i.e. the page and uPlot loading, /catalog, /data and the drawing.
"""

from __future__ import annotations

import json
import shutil
import statistics
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 60_000


def _chromium() -> Path | None:
    if CHROMIUM.exists():
        return CHROMIUM
    found = shutil.which("chromium")
    return Path(found) if found else None


def first_chart(
    base_url: str,
    key: str,
    *,
    user_id: int,
    metric: str,
    start: date,
    end: date,
    runs: int = 5,
) -> dict[str, Any]:
    """Milliseconds to the first chart for one view: the first run (the server's first
    request for it) and the median of the others; or why it could not run."""
    chromium = _chromium()
    if chromium is None:
        return {"status": "not available", "note": "no chromium (`make chromium` installs it)"}
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        return {"status": "not available", "note": "playwright is not installed (bench extra)"}
    view = {
        "user_id": str(user_id),
        "metric": metric,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "resolution": "auto",
    }
    url = f"{base_url}/#{urlencode(view)}"
    times: list[float] = []
    parts: list[dict[str, float]] = []  # per run: dataMs, catalogMs, drawMs
    meta: dict[str, Any] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(chromium), args=["--no-sandbox"]
            )
            try:
                for _ in range(max(2, runs + 1)):
                    context = browser.new_context(viewport={"width": 1280, "height": 900})
                    # Init scripts are not page scripts: the page's CSP does not apply.
                    context.add_init_script(
                        f"sessionStorage.setItem('stratum.key', {json.dumps(key)})"
                    )
                    page = context.new_page()
                    page.goto(url)
                    page.wait_for_selector('#status[data-draws="1"]', timeout=TIMEOUT_MS)
                    shown = page.evaluate(
                        "({ms: window.stratumExplorer.firstChartMs,"
                        " parts: window.stratumExplorer.firstChart,"
                        " meta: window.stratumExplorer.lastMeta,"
                        " points: window.stratumExplorer.pointsDrawn()})"
                    )
                    times.append(float(shown["ms"]))
                    parts.append({k: float(v) for k, v in shown["parts"].items()})
                    meta = {"resolution": shown["meta"]["resolution"], "points": shown["points"]}
                    context.close()
            finally:
                browser.close()
    except Error as exc:
        return {"status": "failed", "note": str(exc).splitlines()[0]}
    return {
        "status": "ok",
        "view": view,
        "days": (end - start).days,
        "first_ms": round(times[0], 1),
        "median_ms": round(statistics.median(times[1:]), 1),
        "runs_ms": [round(t, 1) for t in times],
        # Medians over the runs after the first: /data (all its pages), /catalog (asked at
        # the same time as /data), and drawing.
        "data_ms": round(statistics.median(p["dataMs"] for p in parts[1:]), 1),
        "catalog_ms": round(statistics.median(p["catalogMs"] for p in parts[1:]), 1),
        "draw_ms": round(statistics.median(p["drawMs"] for p in parts[1:]), 1),
        "chromium": str(chromium),
        **meta,
    }
