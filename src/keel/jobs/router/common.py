"""What the jobs routes share: the JSON size check, the hot routes' dependencies made by
hand, and the check that the caller may act on a job's queue."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.dependencies import caller_of
from keel.core.context import AppContext
from keel.core.deps import get_context
from keel.core.direct import json_body, validated_body
from keel.core.errors import NotFound, PayloadTooLarge
from keel.core.tenancy import bind_tenant
from keel.jobs.auth import QueueAccess, check_queues
from keel.jobs.models import Job
from keel_client.auth import Principal

BodyT = TypeVar("BodyT", bound=BaseModel)


def check_size(what: str, value: Any, limit: int) -> None:
    """413 when ``value`` encoded as JSON is over ``limit`` bytes."""
    size = len(json.dumps(value, separators=(",", ":"), default=str).encode())
    if size > limit:
        raise PayloadTooLarge(f"{what} is {size} bytes of JSON; the limit is {limit}.")


async def direct_call(request: Request, schema: type[BodyT]) -> tuple[AppContext, Principal, BodyT]:
    """What a hot route's declared dependencies give, made by hand in their order: the body
    read (invalid JSON answered 400 before anything else), the caller, the body validated."""
    context, sent = get_context(request), await json_body(request)
    principal = await caller_of(request, context)
    return context, principal, validated_body(schema, sent)


async def _queue_of(session: AsyncSession, tenant_id: str, job_id: str) -> str:
    bind_tenant(session, tenant_id)
    queue = await session.scalar(select(Job.queue).where(Job.id == job_id))
    if queue is None:
        raise NotFound(f"No job {job_id!r}.")
    return queue


async def check_job_access(
    session: AsyncSession, principal: Principal, job_id: str, access: QueueAccess
) -> None:
    check_queues(principal, [await _queue_of(session, principal.tenant_id, job_id)], access)
