"""Keel's own background tasks, declared by a service and run on the jobs engine.

A service names its tasks in its ``tasks.py`` and lists them in its spec
(``ServiceSpec.tasks``); it enqueues one in the transaction of the change that calls for it
(``keel.jobs.service.enqueue_task``), so the task exists if and only if the change committed.
``keel.jobs.runner`` claims and runs them in ``keel worker`` (and in ``keel serve`` on the
embedded default), with the engine's leases, retries and dead letter queue::

    async def deliver(context: AppContext, run: TaskRun, args: dict[str, Any]) -> Any:
        ...  # raise RetryTask(seconds) to run again later, DiscardTask(reason) to give up

    DELIVER = PlatformTask("notify", "deliver", deliver, max_attempts=10, timeout_seconds=60)

The types live here, in ``keel.core``, because a service spec names them and ``keel.core``
imports no service.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.core.context import AppContext

#: The prefix of Keel's own queues: ``keel.<service>``.
PLATFORM_QUEUE_PREFIX = "keel."


@dataclass(frozen=True)
class TaskRun:
    """The attempt a handler runs: whose job it is, and which attempt of how many."""

    tenant_id: str
    job_id: str
    attempt: int
    max_attempts: int

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


TaskHandler = Callable[["AppContext", TaskRun, Any], Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class PlatformTask:
    """One kind of Keel's own background work: ``handler`` runs each job of it."""

    service: str
    name: str
    handler: TaskHandler
    max_attempts: int = 10
    timeout_seconds: int = 60

    @property
    def queue(self) -> str:
        """The service's queue: every task of a service shares one."""
        return f"{PLATFORM_QUEUE_PREFIX}{self.service}"

    @property
    def task_name(self) -> str:
        """The job's ``task``: ``<service>.<name>``."""
        return f"{self.service}.{self.name}"


class RetryTask(Exception):
    """Raised by a handler: this attempt failed, run the job again after ``seconds`` (the
    job's backoff when ``None``), or discard it if this was its last attempt."""

    def __init__(self, reason: str, seconds: float | None = None) -> None:
        super().__init__(reason)
        self.seconds = seconds


class DiscardTask(Exception):
    """Raised by a handler: the job can never succeed; it goes to the dead letter queue."""
