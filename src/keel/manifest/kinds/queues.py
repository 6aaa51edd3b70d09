"""Job queues' limits: the limits a manifest names are set; one it leaves out stays."""

from __future__ import annotations

from typing import Any

from keel.jobs import service
from keel.jobs.audit_actions import record_change
from keel.jobs.signals import signal_after_commit
from keel.manifest.plan import Change, Target, shown

LIMITS = ("concurrency_limit", "rate_limit_per_second")


async def plan(target: Target) -> list[Change]:
    session, tenant_id, actor = target.session, target.tenant_id, target.actor
    changes: list[Change] = []
    for name, queue in target.loaded.manifest.queues.items():
        current = await service.get_queue_config(session, tenant_id, name)
        old = {limit: getattr(current, limit) if current else None for limit in LIMITS}
        given = {
            limit: getattr(queue, limit) for limit in LIMITS if limit in queue.model_fields_set
        }
        diff = {limit: value for limit, value in given.items() if old[limit] != value}
        if current is not None and not diff:
            continue

        async def configure(
            name: str = name, diff: dict[str, Any] = diff, old: dict[str, Any] = old
        ) -> None:
            await service.configure_queue(
                session,
                tenant_id,
                name,
                concurrency_limit=diff.get("concurrency_limit", service.KEEP),
                rate_limit_per_second=diff.get("rate_limit_per_second", service.KEEP),
            )
            audited = {
                limit: {"before": old[limit], "after": value} for limit, value in diff.items()
            }
            record_change(session, actor, tenant_id, "jobs.queue.configure", "queue", name, audited)
            signal_after_commit(session, tenant_id, [name])  # a raised limit frees jobs

        details = [
            f"{limit} {shown(old[limit])} -> {shown(value)}" for limit, value in diff.items()
        ]
        changes.append(Change("+" if current is None else "~", "queue", name, configure, details))
    return changes
