"""The audit actions of the jobs service: every change an operator makes to queues, jobs and
schedules. Enqueues and a worker's fetch, heartbeat, ack and fail are the service's traffic,
not changes, and are counted in metrics instead."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keel.core.audit import ActionSpec, Actor, record_event, register_actions

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

_CHANGE = "change"

register_actions(
    ActionSpec("jobs.queue.pause", "A queue paused: its jobs are not handed out.", _CHANGE),
    ActionSpec("jobs.queue.resume", "A paused queue resumed.", _CHANGE),
    ActionSpec(
        "jobs.queue.configure", "A queue's concurrency or rate limit changed (diff).", _CHANGE
    ),
    ActionSpec("jobs.job.cancel", "A job cancelled.", _CHANGE),
    ActionSpec("jobs.job.requeue", "A dead or cancelled job made available again.", _CHANGE),
    ActionSpec("jobs.dead.requeue", "Dead jobs requeued in bulk (count and filter).", _CHANGE),
    ActionSpec("jobs.schedule.put", "A cron schedule created or changed.", _CHANGE),
    ActionSpec("jobs.schedule.delete", "A cron schedule deleted.", _CHANGE),
)


def record_change(
    session: AsyncSession,
    actor: Actor,
    tenant_id: str,
    action: str,
    target_type: str,
    target_id: str,
    data: dict[str, Any] | None = None,
) -> None:
    """Audit one operator change (from the API or the ``keel jobs`` command) with the unit of
    work that makes it."""
    record_event(
        session,
        tenant_id=tenant_id,
        action=action,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        data=data,
    )
