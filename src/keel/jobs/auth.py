"""Who may do what with a queue: ``jobs:<queue>:<level>``.

- ``enqueue``: put jobs on the queue (one or a batch);
- ``work``: fetch the queue's jobs and, holding a lease, heartbeat, ack or fail them;
- ``read``: read the queue's jobs and statistics;
- ``admin``: all of the above, and pause, resume and limit the queue, cancel and requeue its
  jobs, and schedule jobs onto it (cron).

``admin`` includes the other three; they do not include one another (a producer need not read
what others enqueued, a worker need not enqueue). RBAC wildcards work as everywhere:
``jobs:*:work`` lets a worker take any queue, ``jobs:*`` is every level of every queue.

Queues named ``keel.*`` are Keel's own (notification deliveries and the other platform tasks
of :mod:`keel.jobs.runner`): an operator may read and administer them (see the dead letters,
requeue, pause), but nobody enqueues onto them or works them over the API, whatever their
permissions: a fleet worker holding ``jobs:*:work`` must not take Keel's deliveries.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from keel.core.context import PLATFORM_QUEUE_PREFIX
from keel.core.errors import Forbidden
from keel_client.auth import Principal


class QueueAccess(StrEnum):
    enqueue = "enqueue"
    work = "work"
    read = "read"
    admin = "admin"


def jobs_permission(queue: str, access: QueueAccess) -> str:
    return f"jobs:{queue}:{access}"


def may(principal: Principal, queue: str, access: QueueAccess) -> bool:
    """Whether ``principal`` holds ``access`` on ``queue`` (or ``admin``, which includes it)."""
    return principal.has_permission(jobs_permission(queue, access)) or principal.has_permission(
        jobs_permission(queue, QueueAccess.admin)
    )


def check_queues(principal: Principal, queues: Iterable[str], access: QueueAccess) -> None:
    """403 naming the first of ``queues`` on which ``principal`` lacks ``access`` (nobody
    enqueues onto or works Keel's own queues over the API)."""
    for queue in queues:
        if queue.startswith(PLATFORM_QUEUE_PREFIX) and access in (
            QueueAccess.enqueue,
            QueueAccess.work,
        ):
            raise Forbidden(
                f"The queue {queue!r} is Keel's own: only Keel enqueues onto it and works it."
            )
        if not may(principal, queue, access):
            raise Forbidden(f"This needs the permission {jobs_permission(queue, access)!r}.")
