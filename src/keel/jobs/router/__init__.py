"""HTTP routes of the jobs service: ``/jobs/v1/...``, a protocol any language can speak, one
module per audience:

=============  ==========================================================================
``producers``  enqueuing one job or a batch, under an ``Idempotency-Key``
``workers``    the long-polled fetch of leases, acks, heartbeats and failures
``operators``  reading jobs and queues; pausing and limiting queues; cancel and requeue
``schedules``  cron schedules
=============  ==========================================================================

Permissions are per queue (:mod:`keel.jobs.auth`); every operator change is audited. The hot
routes (enqueue, batch, fetch, ack) are served directly (:mod:`keel.core.direct`).
"""

from __future__ import annotations

from keel.core.http import ServiceRouter
from keel.jobs.router import operators, producers, schedules, workers

__all__ = ["build_router"]


def build_router() -> ServiceRouter:
    """The jobs service's routes, as ``keel.jobs.spec`` mounts them."""
    top = ServiceRouter()
    for part in (producers, workers, operators, schedules):
        top.include_router(part.router, prefix="/v1")
    top.match_first("/v1/fetch", "/v1/ack", "/v1/jobs", "/v1/jobs/{job_id}/heartbeat")
    return top
