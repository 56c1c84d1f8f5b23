"""The API's own telemetry: Prometheus counters in the text exposition format (no client
library), served at /metrics. (The wearable metrics are engine.registry's.)

`Telemetry.wrap(asgi_app)` observes every response, 404s included: route template, status,
latency until the last body byte, and bytes sent. Handlers add rows as they render them.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[..., Any]

# Seconds; a page from the warm store is milliseconds, a cohort stream may take minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(**labels: str) -> str:
    text = ",".join(
        f'{key}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for key, value in labels.items()
    )
    return "{" + text + "}"


class Telemetry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.latency_buckets: dict[tuple[str, str], list[int]] = {}
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.latency_count: dict[tuple[str, str], int] = defaultdict(int)
        self.bytes_served: dict[str, int] = defaultdict(int)
        self.rows_served: dict[str, int] = defaultdict(int)
        self.render_seconds: dict[str, float] = defaultdict(float)

    # -- recording ---------------------------------------------------------------------------

    def add_rows(self, format_name: str, rows: int) -> None:
        with self._lock:
            self.rows_served[format_name] += rows

    def add_render(self, format_name: str, seconds: float) -> None:
        with self._lock:
            self.render_seconds[format_name] += seconds

    def observe(self, route: str, method: str, status: int, seconds: float, nbytes: int) -> None:
        with self._lock:
            self.requests[(route, method, str(status))] += 1
            key = (route, method)
            buckets = self.latency_buckets.setdefault(key, [0] * len(LATENCY_BUCKETS))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self.latency_sum[key] += seconds
            self.latency_count[key] += 1
            self.bytes_served[route] += nbytes

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """An ASGI app that records every HTTP response of `app`."""

        async def observed(scope: Scope, receive: Any, send: Any) -> None:
            if scope.get("type") != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status, sent, done = 500, 0, False

            async def counting_send(message: Message) -> None:
                nonlocal status, sent, done
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                elif message["type"] == "http.response.body":
                    sent += len(message.get("body", b""))
                    if not message.get("more_body", False) and not done:
                        done = True
                        self._finish(scope, status, started, sent)
                await send(message)

            try:
                await app(scope, receive, counting_send)
            finally:
                if not done:  # aborted mid-stream or never answered
                    self._finish(scope, status, started, sent)

        return observed

    def _finish(self, scope: Scope, status: int, started: float, sent: int) -> None:
        route = scope.get("path_template") or "unmatched"
        self.observe(route, scope.get("method", "GET"), status, time.perf_counter() - started, sent)

    # -- exposition --------------------------------------------------------------------------

    def render(self, budget: Mapping[str, int]) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        with self._lock:
            family("stratum_http_requests_total", "counter", "HTTP requests by route and status.")
            for (route, method, status), n in sorted(self.requests.items()):
                labels = _labels(route=route, method=method, status=status)
                lines.append(f"stratum_http_requests_total{labels} {n}")
            family(
                "stratum_http_request_duration_seconds",
                "histogram",
                "Time from request to the last body byte.",
            )
            for (route, method), buckets in sorted(self.latency_buckets.items()):
                for bound, n in zip(LATENCY_BUCKETS, buckets, strict=True):
                    labels = _labels(route=route, method=method, le=repr(bound))
                    lines.append(f"stratum_http_request_duration_seconds_bucket{labels} {n}")
                count = self.latency_count[(route, method)]
                labels = _labels(route=route, method=method, le="+Inf")
                lines.append(f"stratum_http_request_duration_seconds_bucket{labels} {count}")
                labels = _labels(route=route, method=method)
                total = self.latency_sum[(route, method)]
                lines.append(f"stratum_http_request_duration_seconds_sum{labels} {total:.6f}")
                lines.append(f"stratum_http_request_duration_seconds_count{labels} {count}")
            family("stratum_rows_served_total", "counter", "Answer rows sent, by format.")
            for format_name, n in sorted(self.rows_served.items()):
                lines.append(f"stratum_rows_served_total{_labels(format=format_name)} {n}")
            family(
                "stratum_render_seconds_total",
                "counter",
                "Seconds spent writing answer rows as text, by format (JSON pages).",
            )
            for format_name, seconds in sorted(self.render_seconds.items()):
                labels = _labels(format=format_name)
                lines.append(f"stratum_render_seconds_total{labels} {seconds:.6f}")
            family("stratum_bytes_served_total", "counter", "Response body bytes, by route.")
            for route, n in sorted(self.bytes_served.items()):
                lines.append(f"stratum_bytes_served_total{_labels(route=route)} {n}")
        gauges = {
            "budget_bytes": ("stratum_memory_budget_bytes", "gauge", "Query admission budget."),
            "in_use_bytes": ("stratum_memory_in_use_bytes", "gauge", "Reserved by queries now."),
            "peak_bytes": ("stratum_memory_peak_bytes", "gauge", "Highest reservation so far."),
            "admitted": ("stratum_queries_admitted_total", "counter", "Queries admitted."),
            "refused": ("stratum_queries_refused_total", "counter", "Queries refused (503)."),
        }
        for key, (name, kind, help_text) in gauges.items():
            if key in budget:
                family(name, kind, help_text)
                lines.append(f"{name} {int(budget[key])}")
        return "\n".join(lines) + "\n"
