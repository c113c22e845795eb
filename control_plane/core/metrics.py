"""Prometheus metrics of the service itself: HTTP traffic by route template, build info, audit head.

Each app gets its own registry, so several apps in one process (tests) never collide on metric names.
"""

from __future__ import annotations

import platform
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

import control_plane

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    def __init__(self, *, audit_head_seq: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "refsys_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "refsys_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        Info("refsys_build", "Version of refsys and of its Python.", registry=self.registry).info(
            {"version": control_plane.__version__, "python": platform.python_version()}
        )
        Gauge(
            "refsys_audit_head_sequence",
            "Sequence number of the newest audit record.",
            registry=self.registry,
        ).set_function(audit_head_seq)

    def observe_request(self, *, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)
