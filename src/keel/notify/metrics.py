"""The notification service's Prometheus metrics, on the app's registry (``/metrics``).

- ``keel_notify_deliveries_total{channel,provider,outcome}``: delivery attempts by their
  outcome — ``sent``, ``retried`` (every provider failed for now), ``failed`` (out of
  attempts or not configured), ``bounced`` (the recipient was refused), and ``suppressed`` /
  ``skipped`` / ``held`` (quiet hours) decided at delivery (provider ``none``);
- ``keel_notify_failovers_total{channel,provider}``: sends a provider failed that the next
  one of its channel then took;
- ``keel_notify_delivery_seconds{channel}``: one message's delivery, from its job taking it
  to its outcome recorded (render, sign, send).

Labels are channels and provider names (a tenant has a few), never templates or recipients.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from keel.core.context import ResourceKey

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class NotifyMetrics:
    """The notification metrics of one process, registered on its registry at start-up."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "keel_notify_deliveries_total",
            "Delivery attempts by channel, provider and outcome.",
            ["channel", "provider", "outcome"],
            registry=registry,
        )
        self.failovers = Counter(
            "keel_notify_failovers_total",
            "Sends a provider failed that the next provider of the channel took.",
            ["channel", "provider"],
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "keel_notify_delivery_seconds",
            "One message's delivery: render, sign, send and record.",
            ["channel"],
            buckets=_BUCKETS,
            registry=registry,
        )


NOTIFY_METRICS_RESOURCE: ResourceKey[NotifyMetrics] = ResourceKey("notify.metrics")
