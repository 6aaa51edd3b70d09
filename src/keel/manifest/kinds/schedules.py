"""Job schedules: a schedule whose definition differs from the manifest's is replaced, as
``PUT /jobs/v1/schedules/{name}`` replaces it; a schedule the manifest does not name stays.

Whether a schedule fires is set only where the manifest says ``enabled``: otherwise a new
schedule is enabled and an existing one keeps its state, so an operator's pause
(``keel jobs schedules set --disabled``) holds across deploys."""

from __future__ import annotations

import json
from typing import Any

from keel.core.errors import NotFound
from keel.jobs import service
from keel.jobs.audit_actions import record_change
from keel.jobs.schemas import ScheduleWrite
from keel.jobs.service.enqueue import DEFAULT_TIMEOUT_SECONDS
from keel.manifest.plan import Change, Target, shown

#: The definition's fields compared with what Keel holds (``enabled`` only when given).
FIELDS = ("cron", "timezone", "queue", "task", "args", "priority", "max_attempts")


async def plan(target: Target) -> list[Change]:
    session, tenant_id, actor = target.session, target.tenant_id, target.actor
    max_args_bytes = target.settings.jobs.max_args_bytes
    changes: list[Change] = []
    for name, wanted in target.loaded.schedules.items():
        assert isinstance(wanted, ScheduleWrite)
        size = len(json.dumps(wanted.args, separators=(",", ":")).encode())
        if size > max_args_bytes:
            target.refuse(
                ("schedules", name, "args"),
                f"{size} bytes of JSON; Keel's limit is {max_args_bytes}",
            )
            continue
        document = wanted.model_dump(mode="json")
        sets_enabled = "enabled" in wanted.model_fields_set
        try:
            current = await service.get_schedule(session, tenant_id, name)
        except NotFound:
            current = None
        if current is None:
            enabled = wanted.enabled
            details = [f"{wanted.cron} ({wanted.timezone})", f"{wanted.task} on {wanted.queue}"]
            if not enabled:
                details.append("disabled")
        else:
            compared = (*FIELDS, "enabled") if sets_enabled else FIELDS
            old = {field: getattr(current, field) for field in compared}
            differing = [field for field in compared if old[field] != document[field]]
            if not differing:
                continue
            enabled = wanted.enabled if sets_enabled else current.enabled
            details = [
                f"{field} {shown(old[field])} -> {shown(document[field])}" for field in differing
            ]

        async def put(
            name: str = name,
            document: dict[str, Any] = document,
            enabled: bool = enabled,
            # Not the manifest's (nor the API's) to set: a new schedule's default, else kept.
            timeout_seconds: int = (
                DEFAULT_TIMEOUT_SECONDS if current is None else current.timeout_seconds
            ),
        ) -> None:
            await service.put_schedule(
                session,
                tenant_id,
                name,
                cron=document["cron"],
                queue=document["queue"],
                task=document["task"],
                timezone=document["timezone"],
                args=document["args"],
                priority=document["priority"],
                max_attempts=document["max_attempts"],
                enabled=enabled,
                timeout_seconds=timeout_seconds,
            )
            audited = {field: document[field] for field in ("cron", "timezone", "queue", "task")}
            record_change(session, actor, tenant_id, "jobs.schedule.put", "schedule", name, audited)

        symbol = "+" if current is None else "~"
        changes.append(Change(symbol, "schedule", name, put, details))
    return changes
