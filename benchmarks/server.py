"""A uvicorn server in a subprocess, and its memory as /proc reports it."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import httpx

from sync.access import create_key


def proc_status_kib(pid: int, field: str) -> int | None:
    """A `VmRSS`/`VmHWM`-style field of /proc/<pid>/status in KiB (None if unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssSampler:
    """Samples a process's VmRSS in a thread; `window()` gives the max over a block."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self._window_max = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rss-sampler")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            kib = proc_status_kib(self.pid, "VmRSS")
            if kib is not None:
                with self._lock:
                    self._window_max = max(self._window_max, kib * 1024)
            self._stop.wait(self.interval_s)

    def now(self) -> int:
        kib = proc_status_kib(self.pid, "VmRSS")
        return 0 if kib is None else kib * 1024

    def high_water(self) -> int:
        kib = proc_status_kib(self.pid, "VmHWM")
        return 0 if kib is None else kib * 1024

    @contextmanager
    def window(self) -> Iterator[list[int]]:
        """Yields a one-item list that holds the max RSS (bytes) seen inside the block."""
        result = [0]
        with self._lock:
            self._window_max = self.now()
        try:
            yield result
        finally:
            with self._lock:
                result[0] = max(self._window_max, self.now())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServedData(Protocol):
    """What a server is started over: a bench Dataset, or any home, database and lake."""

    @property
    def home(self) -> Path: ...
    @property
    def url(self) -> str: ...
    @property
    def lake_path(self) -> Path: ...


class ServerProcess:
    """`serve_command` (the HTTP API) over a dataset, with extra STRATUM_* settings."""

    def __init__(
        self, serve_command: Sequence[str], dataset: ServedData, log_path: Path, **env: str
    ) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        # The bench reads every participant: an admin key of its own, as any client would.
        self.key = create_key(
            dataset.url,
            f"bench-{uuid.uuid4().hex[:12]}",
            admin=True,
            cohorts=(),
            metrics=None,
            expires_in=timedelta(days=1),
        )
        full_env = {
            **os.environ,
            "STRATUM_HOME": str(dataset.home),
            "STRATUM_DATABASE_URL": dataset.url,
            "STRATUM_LAKE_PATH": str(dataset.lake_path),
            "STRATUM_LOG_LEVEL": "warning",
            "STRATUM_HOST": "127.0.0.1",
            "STRATUM_PORT": str(self.port),
            **env,
        }
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            list(serve_command),
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.sampler = RssSampler(self.process.pid)

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}: {self.log_text()[-2000:]}"
                )
            try:
                # Any HTTP answer means uvicorn is accepting requests.
                httpx.get(self.base_url + "/health", timeout=2.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start within {timeout_s:.0f}s")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        sampler = getattr(self, "sampler", None)
        if sampler is not None:
            sampler.stop()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log.close()
