"""Serve the HTTP API for the bench: `python -m benchmarks.serve PORT` (settings from env)."""

from __future__ import annotations

import sys

import uvicorn

from benchmarks.optional import app_factory
from engine.settings import load_settings


def main() -> int:
    port = int(sys.argv[1])
    factory, why = app_factory()
    if factory is None:
        print(why, file=sys.stderr)
        return 3
    settings = load_settings()
    app = factory(settings, settings.database.url)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
