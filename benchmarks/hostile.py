"""Hostile-client measurements: stalled readers against other clients, and JSON pages
against the memory budget.

    python -m benchmarks.hostile [--scale small] [--out DIR]

builds (or reuses) the `stratum bench` dataset of that scale and serves it as `stratum serve`
does, in a process of its own, then:

- stalled readers: 30 sockets ask for the whole lake as an Arrow stream, read the headers and
  stop reading, while 4 other clients ask for one participant-day again and again (waiting
  out each 503's Retry-After). It reports how long the others waited, with the send timeout
  and with a send timeout too long to matter (the server as it was before it had one);
- the budget proof (`benchmarks.extras.budget_proof`, also part of `stratum bench`).

Figures are written to DIR/hostile.json and printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from rich.progress import Progress

from benchmarks.dataset import Dataset, bench_home, open_dataset
from benchmarks.measure import percentile
from benchmarks.presets import PRESETS
from benchmarks.server import ServerProcess
from engine.registry import METRICS
from engine.settings import load_settings

STALLED_SOCKETS = 30
OTHER_CLIENTS = 4
BUDGET = "512MiB"


def _stall(base_url: str, key: str, target: str) -> tuple[socket.socket | None, str]:
    """A connection that asks for `target`, reads the status line and headers, then stops
    reading (its receive buffer kept small). Returns it (None if refused) and the status."""
    parts = urlsplit(base_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    sock.sendall(
        f"GET {target} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
        f"Authorization: Bearer {key}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)
        if not data:
            break
        head += data
    status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "closed"
    if status != "200":
        sock.close()
        return None, status
    return sock, status


def _budget_in_use(client: httpx.Client) -> int | None:
    text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("stratum_memory_in_use_bytes"):
            return int(float(line.split()[-1]))
    return None


def stalled_readers(
    serve_command: Sequence[str],
    dataset: Dataset,
    out_dir: Path,
    send_timeout_s: int,
    observe_s: float,
    budget: str = BUDGET,
) -> dict[str, Any]:
    """30 stalled readers, and how long 4 other clients' queries wait meanwhile."""
    preset = dataset.preset
    start = dataset.lake_end - timedelta(days=preset.lake_days)
    everyone = [*dataset.main_users, *dataset.high_rate_users]
    whole_lake = "/data?" + urlencode(
        {
            "user_id": ",".join(map(str, everyone)),
            "metric": ",".join(sorted(METRICS)),
            "start": start.isoformat(),
            "end": dataset.lake_end.isoformat(),
            "resolution": "raw",
            "format": "arrow",
            "page_size": "0",
        }
    )
    day = dataset.lake_end - timedelta(days=1)
    one_day = {
        "user_id": str(dataset.main_users[0]),
        "metric": "heart_rate",
        "start": day.isoformat(),
        "end": dataset.lake_end.isoformat(),
    }
    server = ServerProcess(
        serve_command,
        dataset,
        out_dir / f"server-stalled-{send_timeout_s}.log",
        STRATUM_MEMORY_BUDGET=budget,
        STRATUM_SEND_TIMEOUT_S=str(send_timeout_s),
        # Every stalled socket is admitted, as 30 attackers with 30 keys and addresses would
        # be: the limits per key and per address are not what is measured here.
        STRATUM_MAX_REQUESTS_PER_KEY="100",
        STRATUM_MAX_REQUESTS_PER_CLIENT="100",
    )
    headers = {"Authorization": f"Bearer {server.key}"}
    result: dict[str, Any] = {"send_timeout_s": send_timeout_s, "budget": budget}
    stalled: list[socket.socket] = []
    waits: list[float] = []
    unanswered: list[float] = []
    first_statuses: dict[str, int] = {}
    timeline: list[tuple[float, float, str]] = []  # (asked at, waited, first status)
    opened = time.perf_counter()
    lock = threading.Lock()
    stop = threading.Event()

    def other_client() -> None:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=120) as client:
            while not stop.is_set():
                asked = time.perf_counter()
                first = None
                while not stop.is_set():
                    answer = client.get("/data", params=one_day)
                    first = first or str(answer.status_code)
                    if answer.status_code == 200:
                        with lock:
                            waits.append(time.perf_counter() - asked)
                            first_statuses[first] = first_statuses.get(first, 0) + 1
                            if len(timeline) < 20:
                                timeline.append(
                                    (round(asked - opened, 2), round(waits[-1], 2), first)
                                )
                        break
                    stop.wait(float(answer.headers.get("retry-after", "1")))
                else:
                    with lock:
                        unanswered.append(time.perf_counter() - asked)

    try:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as admin:
            # Warm up: the first query over the lake verifies its files (hashes them).
            admin.get(
                whole_lake.replace("format=arrow", "format=json").replace(
                    "page_size=0", "page_size=1"
                )
            ).raise_for_status()
            # The attack: 30 connections at once, each admitted or refused (503); the other
            # clients start asking at the same moment.
            opened = time.perf_counter()
            threads = [threading.Thread(target=other_client) for _ in range(OTHER_CLIENTS)]
            with ThreadPoolExecutor(STALLED_SOCKETS) as pool:

                def attack() -> tuple[socket.socket | None, str, float]:
                    sock, status = _stall(server.base_url, server.key, whole_lake)
                    return sock, status, round(time.perf_counter() - opened, 2)

                attacks = [pool.submit(attack) for _ in range(STALLED_SOCKETS)]
                for thread in threads:
                    thread.start()
                answers = [attack.result() for attack in attacks]
            stalled.extend(sock for sock, _, _ in answers if sock is not None)
            result["stalled_sockets"] = STALLED_SOCKETS
            result["stalled_statuses"] = dict(Counter(status for _, status, _ in answers))
            result["stalled_answered_at_s"] = sorted((at, status) for _, status, at in answers)
            result["stall_answered_s"] = round(time.perf_counter() - opened, 2)
            in_use: list[tuple[float, int | None]] = []  # (seconds since the attack, bytes)
            while time.perf_counter() - opened < observe_s:
                in_use.append((round(time.perf_counter() - opened, 1), _budget_in_use(admin)))
                time.sleep(1.0)
            stop.set()
            for thread in threads:
                thread.join()
            result["budget_in_use"] = in_use
            result["observed_s"] = observe_s
        result["other_queries"] = {
            "clients": OTHER_CLIENTS,
            "answered": len(waits),
            "first_status": first_statuses,
            "max_wait_s": round(max(waits), 2) if waits else None,
            "p50_wait_s": round(percentile(waits, 50), 3) if waits else None,
            "p95_wait_s": round(percentile(waits, 95), 3) if waits else None,
            "unanswered_at_end": len(unanswered),
            "first_answers": timeline,
            "longest_unanswered_s": round(max(unanswered), 2) if unanswered else None,
        }
        result["server_alive"] = server.alive
    finally:
        for sock in stalled:
            sock.close()
        server.stop()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__)
    parser.add_argument("--scale", choices=sorted(PRESETS), default="small")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--send-timeout", type=int, default=10)
    parser.add_argument("--budget", default=BUDGET, help="STRATUM_MEMORY_BUDGET of the servers")
    parser.add_argument(
        "--skip", action="append", default=[], choices=["stalled", "no-timeout", "budget"]
    )
    args = parser.parse_args(argv)
    from benchmarks.extras import budget_proof

    settings = load_settings()
    out_dir = args.out or Path(__file__).resolve().parent / "results" / f"hostile-{args.scale}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with Progress() as progress:
        dataset = open_dataset(PRESETS[args.scale], bench_home(settings, args.scale), progress)
    serve_command = (sys.executable, "-m", "api.cli", "serve")
    results: dict[str, Any] = {"scale": args.scale}
    observe = args.send_timeout * 3
    if "stalled" not in args.skip:
        results["stalled"] = stalled_readers(
            serve_command, dataset, out_dir, args.send_timeout, observe, args.budget
        )
    if "no-timeout" not in args.skip:
        # The server as it was without a send timeout: one far longer than the observation.
        results["stalled_without_timeout"] = stalled_readers(
            serve_command, dataset, out_dir, 3600, observe, args.budget
        )
    if "budget" not in args.skip:
        results["budget"] = budget_proof(serve_command, dataset, out_dir, args.budget)
    text = json.dumps(results, indent=2, default=str)
    (out_dir / "hostile.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
