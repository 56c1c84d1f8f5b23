"""Issue 16, point 3: a real Ray cluster (a head and a worker node) runs a job end to end and
answers what the in-process run answers.

Ray's servers listen on every interface whatever --node-ip-address says, so the cluster runs
in a network namespace of its own that holds only a loopback interface: nothing outside this
machine, nor outside the namespace, can reach it. Token auth is on (RAY_AUTH_MODE=token).
The job's driver (`stratum job run --ray`) runs in the same namespace; the warm store is
reached over its Unix socket and the lake is a folder, which namespaces do not separate.
Teardown kills every process in the namespace and checks that none is left.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from deltalake import DeltaTable

from engine.settings import Settings
from jobs.run import run_job
from tests.jobs.conftest import END, START

BIN = Path(sys.executable).parent
RAY_PORT = 6379  # the namespace's own loopback: no other server there
START_TIMEOUT_S = 180


@dataclass(frozen=True)
class RayCluster:
    holder: int  # the process holding the namespace open
    address: str
    env: dict[str, str]  # RAY_AUTH_MODE and the cluster's token

    def run(
        self, argv: list[str], env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """A command inside the cluster's namespace."""
        return subprocess.run(
            ["nsenter", "-t", str(self.holder), "-n", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def _processes_in(namespace: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/net") == namespace:
                    found.append(int(entry))
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return found


def _kill_all(namespace: str, holder: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL every process in the namespace (Ray's daemons ignore SIGTERM at times);
    what is still there afterwards."""
    for _ in range(3):
        for pid in _processes_in(namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        holder.wait(timeout=30)
        time.sleep(0.5)  # children reparented to init are reaped by it
        if not _processes_in(namespace):
            break
    return _processes_in(namespace)


def _namespaces_work() -> bool:
    if not all(shutil.which(tool) for tool in ("unshare", "nsenter", "ip")):
        return False
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    if not _namespaces_work():
        pytest.skip("needs root for a network namespace (unshare -n, nsenter, ip)")
    # Ray's Unix sockets live under --temp-dir: a short path (108 bytes at most).
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    holder = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 3600"],
        start_new_session=True,
    )
    namespace = ""
    try:
        for _ in range(100):
            namespace = _namespace(holder.pid)
            if namespace != _namespace(os.getpid()):
                break
            time.sleep(0.05)
        env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        cluster = RayCluster(holder.pid, f"127.0.0.1:{RAY_PORT}", env)
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
        common.append("--object-store-memory=100000000")
        started = time.monotonic()
        head = cluster.run(
            [str(BIN / "ray"), "start", "--head", f"--port={RAY_PORT}", f"--temp-dir={temp}"]
            + ["--include-dashboard=false", *common],
            {**os.environ, **env},
            START_TIMEOUT_S,
        )
        assert head.returncode == 0, head.stdout + head.stderr
        head_s = time.monotonic() - started
        worker = cluster.run(
            [str(BIN / "ray"), "start", f"--address={cluster.address}", *common],
            {**os.environ, **env},
            START_TIMEOUT_S,
        )
        assert worker.returncode == 0, worker.stdout + worker.stderr
        print(
            f"ray start-up: head {head_s:.1f} s, worker {time.monotonic() - started - head_s:.1f} s"
        )
        yield cluster
    finally:
        left = _kill_all(namespace, holder) if namespace else []
        shutil.rmtree(temp, ignore_errors=True)
        assert left == [], f"processes left in the cluster's namespace: {left}"


def job_env(settings: Settings, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "STRATUM_DATABASE_URL": url,
        "STRATUM_HOME": str(settings.database.home),
        "STRATUM_LAKE_PATH": str(settings.lake.path),
        "STRATUM_MEMORY_BUDGET": "1GiB",
    }


@pytest.mark.ray
def test_a_job_on_a_ray_cluster_answers_what_it_answers_in_process(
    ray_cluster: RayCluster, lake_cohort: Settings, warm_url: str, tmp_path: Path
) -> None:
    local = run_job(lake_cohort, warm_url, "nightly_hrv", "study", START, END, tmp_path / "local")
    assert local.runner == "native" and local.rows == 4

    argv = [str(BIN / "stratum"), "job", "run", "nightly_hrv", "--cohort", "study"]
    argv += ["--start", START.isoformat(), "--end", END.isoformat()]
    argv += ["--ray", ray_cluster.address]
    env = job_env(lake_cohort, warm_url)

    # Without the cluster's token the driver is refused, with a clear error (after 5 s of
    # retries rather than Ray's default 20).
    quick = {**env, "RAY_py_gcs_connect_timeout_s": "5"}
    refused = ray_cluster.run([*argv, "--out", str(tmp_path / "refused")], quick, 120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "could not use the Ray cluster at 127.0.0.1:6379" in refused.stderr
    assert not (tmp_path / "refused").exists()

    on_ray = ray_cluster.run(
        [*argv, "--out", str(tmp_path / "ray")], {**env, **ray_cluster.env}, 300
    )
    assert on_ray.returncode == 0, on_ray.stdout + on_ray.stderr
    assert "on 127.0.0.1:6379" in on_ray.stdout
    print(f"in process: {local.seconds:.1f} s; on Ray: {on_ray.stdout.strip()}")
    ray_table = DeltaTable(str(tmp_path / "ray")).to_pyarrow_table()
    local_table = DeltaTable(str(tmp_path / "local")).to_pyarrow_table()
    assert ray_table.num_rows == 4
    assert ray_table.equals(local_table)
