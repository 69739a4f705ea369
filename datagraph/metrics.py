"""Prometheus metrics: one `Metrics` per app, served as text at `/metrics`.

With one server process the metrics live in the app's own registry. With several (`metrics_dir`
set, exported as `PROMETHEUS_MULTIPROC_DIR` before anything imports prometheus_client), every
process writes its values to files there and `/metrics` in any of them answers the sum over all.
"""

from __future__ import annotations

import os
import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = ["CONTENT_TYPE", "Metrics", "operation_label"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def operation_label(name: str | None) -> str:
    """A client-chosen operation name as a label: kept when it is a plain GraphQL name, else bounded."""
    if not name:
        return "(anonymous)"
    return name if _NAME.match(name) else "(other)"


class Metrics:
    """The server's counters, gauges and histograms; see the README's metrics table."""

    def __init__(self, multiprocess_dir: str = "") -> None:
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir:
            if os.environ.get(_MULTIPROC_ENV) != multiprocess_dir or not _values_shared():
                raise RuntimeError(
                    "metrics_dir must be in PROMETHEUS_MULTIPROC_DIR before the server starts; use `datagraph serve`."
                )
            registry: CollectorRegistry | None = None  # values go to files; /metrics reads them all
        else:
            registry = self.registry = CollectorRegistry(auto_describe=True)
        live = {"multiprocess_mode": "livesum"}

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry, **live)  # type: ignore[arg-type]

        self.http_requests = counter(
            "datagraph_http_requests",
            "HTTP requests answered, by method, route and status.",
            ("method", "route", "status"),
        )
        self.http_latency = Histogram(
            "datagraph_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route.",
            ("method", "route"),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.operations = counter(
            "datagraph_graphql_operations", "GraphQL operations run, by type and name.", ("type", "name")
        )
        self.cache = counter("datagraph_cache_requests", "Result-cache look-ups, by result (hit or miss).", ("result",))
        self.workers = gauge("datagraph_worker_processes", "Worker processes alive.")
        self.workers_busy = gauge("datagraph_workers_busy", "Worker processes running a job.")
        self.jobs_queued = gauge("datagraph_jobs_queued", "Jobs waiting for a free worker.")
        self.jobs = counter("datagraph_worker_jobs", "Jobs run in worker processes.")
        self.worker_kills = counter(
            "datagraph_worker_kills",
            "Workers killed or lost, by reason: deadline, cancelled (client gone), crashed.",
            ("reason",),
        )
        self.upload_bytes = counter("datagraph_upload_bytes", "Bytes of uploaded files received.")
        self.plugin_fetches = counter(
            "datagraph_plugin_fetches",
            "Plugin fetches, by plugin and outcome (ok or the problem code).",
            ("plugin", "outcome"),
        )
        self.upstream_responses = counter(
            "datagraph_upstream_responses", "Responses from plugins' upstream HTTP APIs, by status.", ("status",)
        )
        self.upstream_retries = counter(
            "datagraph_upstream_retries",
            "Retried upstream HTTP requests, by the status that caused the retry (none: no answer).",
            ("status",),
        )
        self.webhook_deliveries = counter(
            "datagraph_webhook_deliveries",
            "Webhook deliveries, by outcome: delivered, failed (given up after retries), blocked, dropped.",
            ("outcome",),
        )
        self.check_runs = counter(
            "datagraph_check_runs",
            "Data-check runs on a dataset version, by outcome: passed, failed, error (the run itself failed).",
            ("outcome",),
        )
        self.subscriptions = gauge("datagraph_subscriptions_open", "GraphQL subscriptions running.")
        self.rate_limited = counter("datagraph_rate_limited", "Requests refused with RATE_LIMITED.")
        self.lease_held = gauge(
            "datagraph_lease_held",
            "1 while this server process holds the lease on a background duty, by lease.",
            ("name",),
        )
        self.loop_lag = Histogram(
            "datagraph_event_loop_lag_seconds",
            "How late the server's event loop ran a timer set every 50 ms: how long any request waited"
            " behind work that held the loop.",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.scheduled_refreshes = counter(
            "datagraph_scheduled_refreshes",
            "Refreshes run by a dataset's schedule, by outcome (ok or the problem code).",
            ("outcome",),
        )

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format: this process's, or all processes' with `metrics_dir`."""
        if not self.multiprocess_dir:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def close(self) -> None:
        """Drop this process's live gauges from the shared files (its counters stay in the sums)."""
        if self.multiprocess_dir:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]


def _values_shared() -> bool:
    """Whether prometheus_client was imported with PROMETHEUS_MULTIPROC_DIR set (values in files)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))
