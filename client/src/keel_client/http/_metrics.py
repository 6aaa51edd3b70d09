"""Prometheus metrics of a client, on a registry the caller chooses.

Names (all labelled with ``client``, the client's name):

- ``keel_http_client_requests_total{method,host,outcome}``: calls, by final outcome
  (the status code, or ``timeout``, ``transport_error``, ``circuit_open``,
  ``retry_budget_exceeded``, ``ssrf_blocked``, ``invalid_response``, ``error``)
- ``keel_http_client_attempts_total{method,host,outcome}``: attempts, retries included
- ``keel_http_client_request_duration_seconds{method,host}``: call latency, retries included
- ``keel_http_client_retries_total{host}`` and ``keel_http_client_retry_budget_exhausted_total``
- ``keel_http_client_circuit_state{host}``: 0 closed, 1 half-open, 2 open (read at scrape time)
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from keel_client.http._breaker import CircuitBreakers

__all__ = ["ClientMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _BreakerCollector(Collector):
    """Reports every registered client's breaker states when scraped (no hot-path cost)."""

    def __init__(self) -> None:
        self._clients: weakref.WeakValueDictionary[int, CircuitBreakers] = (
            weakref.WeakValueDictionary()
        )
        self._names: dict[int, str] = {}

    def add(self, name: str, breakers: CircuitBreakers) -> None:
        self._clients[id(breakers)] = breakers
        self._names[id(breakers)] = name

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "keel_http_client_circuit_state",
            "Circuit breaker state per upstream host: 0 closed, 1 half-open, 2 open.",
            labels=["client", "host"],
        )
        for key, breakers in list(self._clients.items()):
            for host, snapshot in breakers.snapshots().items():
                family.add_metric([self._names[key], host], snapshot.state.gauge_value)
        yield family


class _Families:
    """One set of metric families per registry, shared by every client registered on it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["client", "method", "host", "outcome"]
        self.requests = Counter(
            "keel_http_client_requests_total",
            "Calls made through a Keel HTTP client, by final outcome.",
            labels,
            registry=registry,
        )
        self.attempts = Counter(
            "keel_http_client_attempts_total",
            "Attempts (first tries and retries), by outcome.",
            labels,
            registry=registry,
        )
        self.duration = Histogram(
            "keel_http_client_request_duration_seconds",
            "Call latency, retries and backoff included.",
            ["client", "method", "host"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "keel_http_client_retries_total",
            "Retries sent.",
            ["client", "host"],
            registry=registry,
        )
        self.budget_exhausted = Counter(
            "keel_http_client_retry_budget_exhausted_total",
            "Retries refused because the retry budget was spent.",
            ["client"],
            registry=registry,
        )
        self.breakers = _BreakerCollector()
        registry.register(self.breakers)


_families: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_families_lock = threading.Lock()


class ClientMetrics:
    """A client's handle on its metric families, caching labelled children.

    ``labels()`` costs a lock and a dict lookup per call in prometheus_client; caching the
    child per label tuple here keeps the hot path to one dict lookup (measured in
    ``benchmarks/bench_client_http.py``).

    Example::

        registry = CollectorRegistry()
        api = BillingAPI(metrics_registry=registry)   # scrape ``registry`` in your /metrics
    """

    def __init__(self, registry: CollectorRegistry, client: str, breakers: CircuitBreakers) -> None:
        with _families_lock:
            families = _families.get(registry)
            if families is None:
                families = _families[registry] = _Families(registry)
        families.breakers.add(client, breakers)
        self.registry = registry
        self.client = client
        self._families = families
        self._children: dict[tuple[int | str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key: tuple[int | str, ...] = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.client, *labels)
        return child

    def call(self, method: str, host: str, outcome: str, seconds: float) -> None:
        self._child(self._families.requests, method, host, outcome).inc()
        self._child(self._families.duration, method, host).observe(seconds)

    def attempt(self, method: str, host: str, outcome: str) -> None:
        self._child(self._families.attempts, method, host, outcome).inc()

    def retry(self, host: str) -> None:
        self._child(self._families.retries, host).inc()

    def budget_exhausted(self) -> None:
        self._child(self._families.budget_exhausted).inc()
