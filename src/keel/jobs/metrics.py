"""The jobs service's Prometheus metrics, on the app's registry (``/metrics``).

- ``keel_jobs{queue,state}`` and ``keel_jobs_oldest_age_seconds{queue,state}``: how many jobs
  each queue holds in each state, and the age of the oldest (as :mod:`keel.jobs.service.stats`
  counts it: an available job's wait since its ``run_at``, a running job's time since its
  claim...). Read from the database by :func:`keel.jobs.spec.refresh_queue_metrics` every
  :data:`REFRESH_SECONDS`, all tenants added up; every replica reports the same numbers, so
  aggregate them with ``max``, not ``sum``.
- ``keel_jobs_run_duration_seconds{queue,outcome}``: from claim to ack (``completed``) or to
  a failure (``failed``), observed by the replica that answered the worker.
- ``keel_jobs_failures_total{queue,outcome}``: failed attempts, ``retried`` or ``discarded``
  (dead); ``keel_jobs_lapsed_leases_total``: attempts whose worker stopped heartbeating.

Labels are queue names, never task names or tenants, so the series stay few.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from keel.core.context import ResourceKey
from keel.core.db import utcnow
from keel.jobs.models import Job, JobState
from keel.jobs.service.stats import QueueStateStats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

#: Seconds between two reads of the queues' depths.
REFRESH_SECONDS = 10.0

_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class _QueueDepthCollector(Collector):
    """The last snapshot of jobs per queue and state, exposed as gauges at scrape time."""

    def __init__(self) -> None:
        self.snapshot: Sequence[QueueStateStats] = ()

    def collect(self) -> Iterator[Metric]:
        count = GaugeMetricFamily(
            "keel_jobs", "Jobs per queue and state (all tenants).", labels=["queue", "state"]
        )
        age = GaugeMetricFamily(
            "keel_jobs_oldest_age_seconds",
            "Age of the oldest job of each queue and state (all tenants).",
            labels=["queue", "state"],
        )
        for row in self.snapshot:
            count.add_metric([row.queue, row.state], float(row.stats.count))
            age.add_metric([row.queue, row.state], row.stats.oldest_age_seconds)
        yield count
        yield age


class JobsMetrics:
    """The jobs metrics of one app, registered on its registry at start-up."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._depths = _QueueDepthCollector()
        registry.register(self._depths)
        self.run_duration = Histogram(
            "keel_jobs_run_duration_seconds",
            "Seconds from a job's claim to its ack or failure, by queue and outcome.",
            ["queue", "outcome"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.failures = Counter(
            "keel_jobs_failures",
            "Failed attempts by queue and outcome (retried or discarded).",
            ["queue", "outcome"],
            registry=registry,
        )
        self.lapsed_leases = Counter(
            "keel_jobs_lapsed_leases",
            "Attempts whose lease lapsed (the worker stopped heartbeating).",
            registry=registry,
        )

    def set_depths(self, snapshot: Sequence[QueueStateStats]) -> None:
        self._depths.snapshot = tuple(snapshot)

    def observe_completion(
        self, queue: str, attempted_at: datetime | None, finished_at: datetime
    ) -> None:
        """Count an attempt acknowledged in a batch (:func:`~keel.jobs.service.complete_many`)."""
        if attempted_at is not None:
            seconds = max(0.0, (finished_at - attempted_at).total_seconds())
            self.run_duration.labels(queue, "completed").observe(seconds)

    def observe_attempt_end(self, job: Job, *, now: datetime | None = None) -> None:
        """Count an attempt that a worker just ended (after :func:`~keel.jobs.service.complete`
        or :func:`~keel.jobs.service.fail`)."""
        if job.attempted_at is None:
            return
        ended = job.finished_at if job.state == JobState.completed else None
        seconds = max(0.0, ((ended or now or utcnow()) - job.attempted_at).total_seconds())
        if job.state == JobState.completed:
            self.run_duration.labels(job.queue, "completed").observe(seconds)
            return
        self.run_duration.labels(job.queue, "failed").observe(seconds)
        outcome = "discarded" if job.state == JobState.discarded else "retried"
        self.failures.labels(job.queue, outcome).inc()


JOBS_METRICS_RESOURCE: ResourceKey[JobsMetrics] = ResourceKey("jobs.metrics")
