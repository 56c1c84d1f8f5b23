"""`pip install ./client` alone: a fresh virtual environment gets the client and pyarrow, none
of the server, and reads from a running server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.client.conftest import Served

ROOT = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = ("engine", "lake", "sync", "api", "benchmarks", "litestar", "duckdb", "psycopg")

# Runs inside the fresh environment, away from the repository (whose folders would import).
PROBE = """
import importlib.util, json, sys
import stratum_client
from stratum_client import Client, StratumError
url, key, server_packages = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
found = {name: importlib.util.find_spec(name) is not None for name in server_packages}
loaded = sorted(name for name in sys.modules if name.split(".")[0] in server_packages)
with Client(url, key) as client:
    users = client.catalog()["users"]
    table = client.read_arrow([1, 2], "heart_rate", "2024-01-01", "2024-01-03", "1h")
    try:
        client.read(1, "heart_rate", "2024-01-01", "2024-01-03")
        pandas_error = None
    except ImportError as exc:
        pandas_error = str(exc)
    try:
        client.read_arrow(1, "pulse", "2024-01-01", "2024-01-03")
    except StratumError as exc:
        refused = [exc.status, exc.code, exc.parameter]
print(json.dumps({
    "file": stratum_client.__file__, "found": found, "loaded": loaded, "users": users,
    "rows": table.num_rows, "pandas_error": pandas_error, "refused": refused,
}))
"""


def test_pip_install_of_the_client_folder_alone_works(served: Served, tmp_path: Path) -> None:
    source = tmp_path / "client"
    # A copy: pip builds a folder in place, and the worktree's own build files stay out.
    shutil.copytree(
        ROOT / "client", source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(source)],
        check=True,
        capture_output=True,
    )
    installed = subprocess.run(
        [python, "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True
    )
    names = {package["name"].lower() for package in json.loads(installed.stdout)}
    assert {"stratum-client", "pyarrow"} <= names
    unwanted = {"stratum", "pandas", "litestar", "duckdb", "psycopg", "deltalake", "httpx"}
    assert not names & unwanted

    probe = subprocess.run(
        [python, "-c", PROBE, served.url, served.key(), ",".join(SERVER_PACKAGES)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    )
    answer = json.loads(probe.stdout)
    assert answer["file"].startswith(str(venv))
    assert answer["found"] == dict.fromkeys(SERVER_PACKAGES, False)
    assert answer["loaded"] == []
    assert answer["users"] == [1, 2, 3, 9]
    assert answer["rows"] > 0
    assert "pip install 'stratum-client[pandas]'" in answer["pandas_error"]
    assert answer["refused"] == [400, "invalid_parameter", "metric"]
