"""Prometheus metrics: one registry per app, scraped at ``/metrics``.

Requests are labelled by route *template* (``/flags/v1/flags/{key}``), never the raw path, so
cardinality stays bounded; unmatched paths share one label.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from keel.core.outages import OutageCollector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from keel.core.db import Database

UNMATCHED_ROUTE = "<unmatched>"

# ``*_created`` series double what is scraped and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The metrics one Keel app exposes, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "keel_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "keel_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "keel_http_requests_in_flight",
            "HTTP requests being answered now.",
            registry=self.registry,
        )
        self.ready = Gauge(
            "keel_health_check_up",
            "1 when the named readiness check passed at its last run, else 0.",
            ["check"],
            registry=self.registry,
        )
        self.registry.register(OutageCollector())

    def watch_database(self, database: Database) -> None:
        self.registry.register(_DatabasePoolCollector(database))


class _DatabasePoolCollector(Collector):
    """Reads the SQLAlchemy pool at scrape time, so the numbers are never stale."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def collect(self) -> Iterator[Metric]:
        stats = self._database.pool_stats()
        for name, help_text in (
            ("size", "Connections the pool keeps."),
            ("checked_out", "Connections in use now."),
            ("overflow", "Connections open beyond the pool size."),
            ("checked_in", "Idle connections in the pool."),
        ):
            family = GaugeMetricFamily(f"keel_db_pool_{name}", help_text)
            family.add_metric([], float(stats.get(name, 0)))
            yield family
