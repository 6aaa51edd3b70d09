"""Cron schedules: ``/schedules/{name}`` read, created or replaced, deleted; one job a tick
across every replica (:mod:`keel.jobs.runner`). Every change is audited."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from keel.auth.dependencies import CallerActor, CurrentPrincipal
from keel.core.deps import Context, DbSession
from keel.core.direct import DirectRoute
from keel.core.errors import NotFound
from keel.jobs import schemas, service
from keel.jobs.audit_actions import record_change
from keel.jobs.auth import QueueAccess, check_queues, may
from keel.jobs.router.common import check_size

router = APIRouter(tags=["jobs"], route_class=DirectRoute)

ScheduleName = Annotated[str, Path(pattern=schemas.NAME_PATTERN)]


@router.get("/schedules", response_model=schemas.ScheduleList)
async def list_schedules(principal: CurrentPrincipal, session: DbSession) -> Any:
    """The schedules onto queues the caller may read."""
    schedules = await service.list_schedules(session, principal.tenant_id)
    return {"schedules": [s for s in schedules if may(principal, s.queue, QueueAccess.read)]}


@router.get("/schedules/{name}", response_model=schemas.Schedule)
async def get_schedule(name: ScheduleName, principal: CurrentPrincipal, session: DbSession) -> Any:
    schedule = await service.get_schedule(session, principal.tenant_id, name)
    check_queues(principal, [schedule.queue], QueueAccess.read)
    return schedule


@router.put(
    "/schedules/{name}",
    response_model=schemas.Schedule,
    responses={201: {"description": "The schedule was created."}},
)
async def put_schedule(
    name: ScheduleName,
    body: schemas.ScheduleWrite,
    principal: CurrentPrincipal,
    actor: CallerActor,
    session: DbSession,
    context: Context,
    response: Response,
) -> Any:
    """Create or replace a cron schedule: at each tick of ``cron`` in ``timezone``, one job
    of ``task`` on ``queue``, once across every replica."""
    tenant_id = principal.tenant_id
    check_queues(principal, [body.queue], QueueAccess.admin)
    try:
        existing = await service.get_schedule(session, tenant_id, name)
    except NotFound:
        existing = None
    if existing is not None:  # moving a schedule off a queue needs that queue's admin too
        check_queues(principal, [existing.queue], QueueAccess.admin)
    check_size("args", body.args, context.settings.jobs.max_args_bytes)
    saved = await service.put_schedule(
        session,
        tenant_id,
        name,
        cron=body.cron,
        queue=body.queue,
        task=body.task,
        timezone=body.timezone,
        args=body.args,
        priority=body.priority,
        max_attempts=body.max_attempts,
        enabled=body.enabled,
    )
    record_change(
        session,
        actor,
        tenant_id,
        "jobs.schedule.put",
        "schedule",
        name,
        {"cron": body.cron, "timezone": body.timezone, "queue": body.queue, "task": body.task},
    )
    if saved.created:
        response.status_code = 201
    return saved.schedule


@router.delete("/schedules/{name}", status_code=204)
async def delete_schedule(
    name: ScheduleName, principal: CurrentPrincipal, actor: CallerActor, session: DbSession
) -> Response:
    schedule = await service.get_schedule(session, principal.tenant_id, name)
    check_queues(principal, [schedule.queue], QueueAccess.admin)
    await service.delete_schedule(session, principal.tenant_id, name)
    record_change(session, actor, principal.tenant_id, "jobs.schedule.delete", "schedule", name)
    return Response(status_code=204)
