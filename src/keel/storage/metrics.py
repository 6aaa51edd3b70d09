"""The storage service's Prometheus metrics, on the app's registry (``/metrics``).

- ``keel_storage_uploaded_bytes_total{via}``: plaintext bytes of the versions stored, by the
  way they came in — ``put`` (the API's streamed PUT), ``multipart`` (a completed upload),
  ``signed`` (a presigned PUT) or ``form`` (a presigned POST form);
- ``keel_storage_downloaded_bytes_total{via}``: plaintext bytes served, ``api`` or ``signed``;
- ``keel_storage_objects_total{verdict}``: versions by the verdict of their pipeline —
  ``clean``, ``infected`` or ``rejected`` (a scan that failed for good);
- ``keel_storage_scan_seconds``: one version's scan, from its job taking it to the verdict;
- ``keel_storage_uploads_refused_total{reason}``: uploads refused before anything was kept —
  ``size``, ``type``, ``quota``, ``policy`` (a presigned form's condition) or ``signature``
  (an expired, tampered or wrong-method signed URL or form).

Labels are closed sets (no bucket, key or tenant: a fleet holds many of those).
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Histogram

from keel.core.context import AppContext, ResourceKey

UploadVia = Literal["put", "multipart", "signed", "form"]
DownloadVia = Literal["api", "signed"]
Verdict = Literal["clean", "infected", "rejected"]
RefusalReason = Literal["size", "type", "quota", "policy", "signature"]

_SCAN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class StorageMetrics:
    """The storage metrics of one process, registered on its registry at start-up."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.uploaded_bytes = Counter(
            "keel_storage_uploaded_bytes",
            "Plaintext bytes of stored versions, by the way they came in.",
            ["via"],
            registry=registry,
        )
        self.downloaded_bytes = Counter(
            "keel_storage_downloaded_bytes",
            "Plaintext bytes served, by the API or through signed URLs.",
            ["via"],
            registry=registry,
        )
        self.objects = Counter(
            "keel_storage_objects",
            "Versions by the verdict of their pipeline (clean, infected, rejected).",
            ["verdict"],
            registry=registry,
        )
        self.scan_seconds = Histogram(
            "keel_storage_scan_seconds",
            "One version's scan by clamd, from its job taking it to the verdict.",
            buckets=_SCAN_BUCKETS,
            registry=registry,
        )
        self.uploads_refused = Counter(
            "keel_storage_uploads_refused",
            "Uploads refused before anything was kept, by reason.",
            ["reason"],
            registry=registry,
        )

    def uploaded(self, via: UploadVia, size: int) -> None:
        self.uploaded_bytes.labels(via).inc(size)

    def downloaded(self, via: DownloadVia, size: int) -> None:
        self.downloaded_bytes.labels(via).inc(size)

    def verdict(self, verdict: Verdict) -> None:
        self.objects.labels(verdict).inc()

    def refused(self, reason: RefusalReason) -> None:
        self.uploads_refused.labels(reason).inc()


STORAGE_METRICS_RESOURCE: ResourceKey[StorageMetrics] = ResourceKey("storage.metrics")


def storage_metrics(context: AppContext) -> StorageMetrics:
    """The process's storage metrics, registered on its registry the first time (start-up
    calls this so that ``/metrics`` lists them from the start)."""
    metrics = context.resources.get(STORAGE_METRICS_RESOURCE)
    if metrics is None:
        metrics = StorageMetrics(context.metrics.registry)
        context.resources[STORAGE_METRICS_RESOURCE] = metrics
    return metrics
