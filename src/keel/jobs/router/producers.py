"""Producers' routes: ``POST /jobs`` and ``POST /jobs/batch``, both taking an
``Idempotency-Key``, both served directly (:mod:`keel.core.direct`). A fetch waiting in this
process for the queue may be handed the job in the enqueue's own transaction
(:mod:`keel.jobs.signals`, "Hand-off"). On PostgreSQL a job without a unique key is one
statement, its key's answer kept in it (:func:`keel.jobs.service.enqueue_at_once`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.dependencies import CurrentPrincipal
from keel.core.context import AppContext
from keel.core.deps import Context
from keel.core.direct import DirectRoute, served_directly
from keel.core.idempotency import IdempotencyKeyHeader, IdempotentWrite, KeyToKeep, idempotent
from keel.jobs import schemas, service
from keel.jobs.auth import QueueAccess, check_queues
from keel.jobs.models import Job
from keel.jobs.router.common import check_size, direct_call
from keel.jobs.signals import (
    JOB_SIGNALS_RESOURCE,
    Handing,
    hand_after_commit,
    handed_answers_first,
    publish_signals,
    signal_after_commit,
)
from keel_client.auth import Principal

router = APIRouter(tags=["jobs"], route_class=DirectRoute)


def _new_job(body: schemas.JobCreate, max_args_bytes: int) -> service.NewJob:
    check_size("args", body.args, max_args_bytes)
    unique = body.unique
    return service.NewJob(
        queue=body.queue,
        task=body.task,
        args=body.args,
        priority=body.priority,
        run_at=body.run_at,
        max_attempts=body.max_attempts,
        timeout_seconds=body.timeout_seconds,
        tags=tuple(body.tags),
        unique_key=unique.key if unique else None,
        unique_period_seconds=unique.period_seconds if unique else None,
        unique_states=tuple(unique.states) if unique and unique.states else None,
        max_backoff_seconds=body.max_backoff_seconds,
        backoff_base_seconds=body.backoff_base_seconds,
    )


def _enqueued_document(enqueued: service.Enqueued) -> dict[str, Any]:
    """The answer of an enqueue: the job (read from its ORM object or, for a job just
    created, from its column values, which hold no result or end yet) and ``duplicate``."""
    record = enqueued.record
    if not isinstance(record, Job):
        record = {**record, "finished_at": None}
    answer = schemas.Enqueued.model_validate(record).model_dump(mode="json")
    answer["duplicate"] = not enqueued.created
    return answer


@router.post(
    "/jobs",
    status_code=201,
    response_model=schemas.Enqueued,
    responses={200: {"description": "The unique key's live job (``duplicate``: true)."}},
)
async def enqueue(
    body: schemas.JobCreate,
    principal: CurrentPrincipal,
    context: Context,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Put one job on a queue."""
    return await _enqueue(context, principal, body, idempotency_key)


async def _idempotent_handing(
    context: AppContext,
    principal: Principal,
    operation: str,
    idempotency_key: str | None,
    body: BaseModel,
    write: IdempotentWrite,
    handings: list[Handing],
) -> JSONResponse:
    """``write`` under ``idempotency_key`` (:func:`idempotent`); the waiting fetches it took
    and did not hand a job to (a rollback, a replayed answer) are let go after it."""
    try:
        answer = await idempotent(
            context.database,
            principal.tenant_id,
            operation,
            idempotency_key,
            body.model_dump(mode="json"),
            write,
        )
    finally:
        for handing in handings:
            handing.abandon()
    await handed_answers_first(handings)
    return answer


async def _enqueue(
    context: AppContext, principal: Principal, body: schemas.JobCreate, idempotency_key: str | None
) -> JSONResponse:
    check_queues(principal, [body.queue], QueueAccess.enqueue)
    new = _new_job(body, context.settings.jobs.max_args_bytes)
    if context.database.dialect == "postgresql" and new.unique_key is None:
        answered = await _enqueue_at_once(context, principal.tenant_id, new, body, idempotency_key)
        if answered is not None:
            return answered
    signals = context.resources[JOB_SIGNALS_RESOURCE]
    handings: list[Handing] = []

    async def write(session: AsyncSession) -> tuple[int, dict[str, Any]]:
        # A fetch waiting in this process for the queue may be handed the job (its lease in
        # this transaction); it answers once this commits (keel.jobs.signals, "Hand-off").
        handing = Handing(signals, principal.tenant_id)
        handings.append(handing)
        hand_after_commit(session, handing)
        enqueued = await service.enqueue_one(session, principal.tenant_id, new, handing)
        if enqueued.created and not handing.taken:
            signal_after_commit(session, principal.tenant_id, [body.queue])
        return (201 if enqueued.created else 200), _enqueued_document(enqueued)

    return await _idempotent_handing(
        context, principal, "jobs.enqueue", idempotency_key, body, write, handings
    )


async def _enqueue_at_once(
    context: AppContext,
    tenant_id: str,
    new: service.NewJob,
    body: schemas.JobCreate,
    idempotency_key: str | None,
) -> JSONResponse | None:
    """:func:`service.enqueue_at_once`: the job and its key's answer in one statement. None
    when the caller must take the unit-of-work path, which does the rest: the queue was
    closed to the hand-off, or the key was kept already (a retry: that path replays it)."""
    key = None
    if idempotency_key is not None:
        key = KeyToKeep.of("jobs.enqueue", idempotency_key, body.model_dump(mode="json"))
    handing = Handing(context.resources[JOB_SIGNALS_RESOURCE], tenant_id)
    done = None
    try:
        done = await service.enqueue_at_once(
            context.database, tenant_id, new, handing, _enqueued_document, key
        )
    except IntegrityError:
        pass  # the key was kept already: nothing was written
    finally:
        # Written: the fetch taken answers with its job. Not: it reads the table again.
        if done is None:
            handing.abandon()
        else:
            handing.hand_over()
    if done is None:
        return None
    if not handing.taken:
        publish_signals(context.database.engine.sync_engine, {tenant_id: {new.queue}})
    await handed_answers_first([handing])
    return JSONResponse(done[1], status_code=201)


async def _enqueue_directly(request: Request) -> Response:
    """:func:`enqueue` with its dependencies made by hand (:mod:`keel.core.direct`)."""
    context, principal, body = await direct_call(request, schemas.JobCreate)
    return await _enqueue(context, principal, body, request.headers.get("idempotency-key"))


served_directly(enqueue, _enqueue_directly)


@router.post("/jobs/batch", status_code=201, response_model=schemas.BatchAnswer)
async def enqueue_batch(
    body: schemas.JobBatch,
    principal: CurrentPrincipal,
    context: Context,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Put up to 10,000 jobs on their queues, all or none."""
    return await _enqueue_batch(context, principal, body, idempotency_key)


async def _enqueue_batch(
    context: AppContext, principal: Principal, body: schemas.JobBatch, idempotency_key: str | None
) -> JSONResponse:
    queues = sorted({job.queue for job in body.jobs})
    check_queues(principal, queues, QueueAccess.enqueue)
    limit = context.settings.jobs.max_args_bytes
    news = [_new_job(job, limit) for job in body.jobs]
    signals = context.resources[JOB_SIGNALS_RESOURCE]
    handings: list[Handing] = []

    async def write(session: AsyncSession) -> tuple[int, dict[str, Any]]:
        handing = Handing(signals, principal.tenant_id)  # as in _enqueue
        handings.append(handing)
        hand_after_commit(session, handing)
        entries = await service.enqueue_batch(session, principal.tenant_id, news, handing)
        handed = sum(len(waiting.rows) for waiting in handing.taken)
        if handed < len(news):  # jobs left for others to claim: wake the waiting fetches
            signal_after_commit(session, principal.tenant_id, queues)
        return 201, {
            "ids": [entry.id for entry in entries],
            "duplicates": [entry.duplicate for entry in entries],
        }

    # The fingerprint of 10,000 jobs is cheap next to inserting them.
    return await _idempotent_handing(
        context, principal, "jobs.batch", idempotency_key, body, write, handings
    )


async def _enqueue_batch_directly(request: Request) -> Response:
    """:func:`enqueue_batch` with its dependencies made by hand (:mod:`keel.core.direct`)."""
    context, principal, body = await direct_call(request, schemas.JobBatch)
    return await _enqueue_batch(context, principal, body, request.headers.get("idempotency-key"))


served_directly(enqueue_batch, _enqueue_batch_directly)
