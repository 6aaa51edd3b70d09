"""HTTP routes of the jobs service: ``/jobs/v1/...``, a protocol any language can speak.

Producers enqueue (``POST /jobs``, ``POST /jobs/batch``, both taking an ``Idempotency-Key``);
workers long-poll ``POST /fetch`` for leases and answer each job with ``heartbeat``, ``ack``
or ``fail`` naming the lease token; operators read, cancel, requeue, pause and limit queues
and schedule jobs. Permissions are per queue (:mod:`keel.jobs.auth`); every operator change
is audited. A lease token that is not the job's current one is a 409 and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.dependencies import CallerActor, CurrentPrincipal, get_auth_service, get_principal
from keel.core.context import AppContext
from keel.core.deps import Context, DbSession, get_context
from keel.core.direct import DirectRoute, json_body, served_directly, validated_body
from keel.core.errors import NotFound, PayloadTooLarge
from keel.core.http import ServiceRouter
from keel.core.idempotency import IdempotencyKeyHeader, IdempotentWrite, idempotent
from keel.core.tenancy import bind_tenant
from keel.jobs import schemas, service
from keel.jobs.audit_actions import record_change
from keel.jobs.auth import QueueAccess, check_queues, may
from keel.jobs.metrics import JOBS_METRICS_RESOURCE
from keel.jobs.models import Job, JobState
from keel.jobs.service import KEEP
from keel.jobs.signals import (
    JOB_SIGNALS_RESOURCE,
    Handing,
    Waiting,
    hand_after_commit,
    signal_after_commit,
)
from keel_client.auth import Principal

#: The hot routes (enqueue, batch, fetch, ack) are served directly (:mod:`keel.core.direct`).
router = APIRouter(prefix="/v1", tags=["jobs"], route_class=DirectRoute)

BodyT = TypeVar("BodyT", bound=BaseModel)


def _check_size(what: str, value: Any, limit: int) -> None:
    """413 when ``value`` encoded as JSON is over ``limit`` bytes."""
    size = len(json.dumps(value, separators=(",", ":"), default=str).encode())
    if size > limit:
        raise PayloadTooLarge(f"{what} is {size} bytes of JSON; the limit is {limit}.")


def _new_job(body: schemas.JobCreate, max_args_bytes: int) -> service.NewJob:
    _check_size("args", body.args, max_args_bytes)
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


def _job_document(job: Job, *, duplicate: bool | None = None) -> dict[str, Any]:
    model = schemas.Job.model_validate(job)
    document = model.model_dump(mode="json")
    if duplicate is not None:
        document["duplicate"] = duplicate
    return document


# -- producers ----------------------------------------------------------------------------


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
        return await idempotent(
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


async def _enqueue(
    context: AppContext, principal: Principal, body: schemas.JobCreate, idempotency_key: str | None
) -> JSONResponse:
    check_queues(principal, [body.queue], QueueAccess.enqueue)
    new = _new_job(body, context.settings.jobs.max_args_bytes)
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
        return (201 if enqueued.created else 200), _job_document(
            enqueued.job, duplicate=not enqueued.created
        )

    return await _idempotent_handing(
        context, principal, "jobs.enqueue", idempotency_key, body, write, handings
    )


async def _enqueue_directly(request: Request) -> Response:
    """:func:`enqueue` with its dependencies made by hand (:mod:`keel.core.direct`)."""
    context, principal, body = await _direct_call(request, schemas.JobCreate)
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
    context, principal, body = await _direct_call(request, schemas.JobBatch)
    return await _enqueue_batch(context, principal, body, request.headers.get("idempotency-key"))


served_directly(enqueue_batch, _enqueue_batch_directly)


async def _direct_call(
    request: Request, schema: type[BodyT]
) -> tuple[AppContext, Principal, BodyT]:
    """What a hot route's declared dependencies give, made by hand in their order: the body
    read (invalid JSON answered 400 before anything else), the caller, the body validated."""
    context, sent = get_context(request), await json_body(request)
    principal = await _caller(request, context)
    return context, principal, validated_body(schema, sent)


async def _caller(request: Request, context: AppContext) -> Principal:
    """:data:`CurrentPrincipal` made by hand: the caller's credential checked in a unit of work
    of its own, ended before the route's work (a cached API key reads nothing)."""
    async with context.database.session() as session:
        return await get_principal(request, session, await get_auth_service(request))


# -- workers ------------------------------------------------------------------------------


@router.post("/fetch", response_model=schemas.FetchAnswer)
async def fetch(
    body: schemas.FetchRequest, principal: CurrentPrincipal, context: Context, request: Request
) -> dict[str, Any]:
    """Lease up to ``limit`` due jobs, taking the queues in the order given; when none is due,
    wait up to ``wait_seconds`` for one (idle workers are woken when jobs arrive). A worker
    that goes away while it waits (killed, its connection closed) is leased nothing."""
    return await _fetch(context, principal, body, request)


async def _fetch_directly(request: Request) -> Response:
    """:func:`fetch` with its dependencies made by hand (:mod:`keel.core.direct`)."""
    context, principal, body = await _direct_call(request, schemas.FetchRequest)
    answer = await _fetch(context, principal, body, request)
    return JSONResponse(schemas.FetchAnswer.model_validate(answer).model_dump(mode="json"))


served_directly(fetch, _fetch_directly)


async def _fetch(
    context: AppContext, principal: Principal, body: schemas.FetchRequest, request: Request
) -> dict[str, Any]:
    queues = list(dict.fromkeys(body.queues))
    check_queues(principal, queues, QueueAccess.work)
    signals = context.resources[JOB_SIGNALS_RESOURCE]
    tenant_id = principal.tenant_id
    wait = min(body.wait_seconds, context.settings.jobs.max_fetch_wait_seconds)
    lease_seconds = body.lease_seconds or context.settings.jobs.default_lease_seconds
    # The acks and the first claim share one transaction: one commit for a busy worker's
    # round (its finished jobs and its next ones), not two.
    acks: list[schemas.AckItem] | None = body.ack
    outcome: service.AckOutcome | None = None
    deadline = time.monotonic() + wait
    gone = asyncio.ensure_future(_disconnected(request)) if wait > 0 else None
    try:
        while True:
            mark = signals.mark()
            claims: list[service.Claim] = []
            async with context.database.session() as session:
                if acks:
                    outcome = await _complete_acks(session, context, principal, acks)
                for queue in queues:
                    claims += await service.claim(
                        session,
                        tenant_id,
                        [queue],
                        worker_id=body.worker_id,
                        limit=body.limit - len(claims),
                        lease_seconds=lease_seconds,
                    )
                    if len(claims) >= body.limit:
                        break
            if acks and outcome is not None:
                _observe_completions(context, outcome)
                acks = None
            remaining = deadline - time.monotonic()
            if claims or remaining <= 0 or (gone is not None and gone.done()):
                return {"jobs": [_lease(claim) for claim in claims], **_ack_answer(outcome)}
            handed = await _wait(
                signals.offer(tenant_id, queues, body.worker_id, body.limit, lease_seconds),
                context,
                mark,
                min(remaining, signals.recheck_seconds),
                gone,
            )
            if handed:
                return {"jobs": [_lease(claim) for claim in handed], **_ack_answer(outcome)}
            if gone is not None and gone.done():
                return {"jobs": [], **_ack_answer(outcome)}
    finally:
        if gone is not None:
            gone.cancel()


async def _wait(
    waiting: Waiting,
    context: AppContext,
    mark: int,
    timeout: float,
    gone: asyncio.Future[None] | None,
) -> list[service.Claim]:
    """Wait as :meth:`JobSignals.wait` does, offered to enqueues meanwhile: the jobs an
    enqueue handed this fetch (committed, leased to it), or none. Handed jobs the caller is
    no longer there for are given back at once (available again, no attempt counted)."""
    signals = context.resources[JOB_SIGNALS_RESOURCE]
    try:
        await signals.wait(
            waiting.tenant_id, waiting.queues, mark, timeout, until=gone, handed=waiting.handed
        )
    finally:
        taken = not signals.withdraw(waiting)
    if not taken:
        return []
    # An enqueue took this fetch: its outcome (commit or rollback) settles what it handed.
    handed = [
        service.Claim(
            row["id"],
            row["queue"],
            row["task"],
            row["args"],
            row["attempt"],
            row["max_attempts"],
            row["timeout_seconds"],
            row["lease_token"],
            row["lease_expires_at"],
        )
        for row in await asyncio.shield(waiting.handed) or ()
    ]
    if handed and gone is not None and gone.done():
        async with context.database.session() as session:
            await service.release(session, waiting.tenant_id, handed)
            signal_after_commit(session, waiting.tenant_id, {claim.queue for claim in handed})
        return []
    return handed


async def _apply_acks(
    context: AppContext, principal: Principal, items: list[schemas.AckItem]
) -> service.AckOutcome:
    """Complete the attempts of ``items`` in one transaction, each ack refused alone."""
    async with context.database.session() as session:
        outcome = await _complete_acks(session, context, principal, items)
    _observe_completions(context, outcome)
    return outcome


async def _complete_acks(
    session: AsyncSession, context: AppContext, principal: Principal, items: list[schemas.AckItem]
) -> service.AckOutcome:
    """Complete the attempts of ``items`` in the unit of work of ``session``, each ack
    refused alone (one over the result's size limit too: 413)."""
    limit = context.settings.jobs.max_result_bytes
    too_large: list[service.RefusedAck] = []
    acks: list[service.Ack] = []
    for item in items:
        try:
            _check_size("result", item.result, limit)
        except PayloadTooLarge as error:  # refused alone, as the others' refusals are
            too_large.append(service.RefusedAck(item.id, 413, str(error.detail or error)))
            continue
        acks.append(service.Ack(item.id, item.lease_token, item.result))
    outcome = await service.complete_many(
        session,
        principal.tenant_id,
        acks,
        may_work=lambda queue: may(principal, queue, QueueAccess.work),
    )
    return service.AckOutcome(outcome.acked, [*too_large, *outcome.refused])


def _observe_completions(context: AppContext, outcome: service.AckOutcome) -> None:
    """The metrics of the attempts ``outcome`` completed, once their unit of work committed."""
    metrics = context.resources[JOBS_METRICS_RESOURCE]
    for done in outcome.acked:
        metrics.observe_completion(done.queue, done.attempted_at, done.finished_at)


def _ack_answer(outcome: service.AckOutcome | None) -> dict[str, Any]:
    if outcome is None:
        return {"acked": [], "refused": []}
    return {
        "acked": [done.job_id for done in outcome.acked],
        "refused": [
            {"id": refused.job_id, "status": refused.status, "detail": refused.detail}
            for refused in outcome.refused
        ],
    }


@router.post("/ack", response_model=schemas.AckAnswer)
async def ack_many(
    body: schemas.AckBatch, principal: CurrentPrincipal, context: Context
) -> dict[str, Any]:
    """Complete up to 100 attempts at once (a worker's finished jobs): one transaction, each
    ack refused alone (a stale lease 409, an unknown job 404, a queue not the caller's 403)."""
    return _ack_answer(await _apply_acks(context, principal, body.acks))


async def _ack_many_directly(request: Request) -> Response:
    """:func:`ack_many` with its dependencies made by hand (:mod:`keel.core.direct`)."""
    context, principal, body = await _direct_call(request, schemas.AckBatch)
    answer = _ack_answer(await _apply_acks(context, principal, body.acks))
    return JSONResponse(schemas.AckAnswer.model_validate(answer).model_dump(mode="json"))


served_directly(ack_many, _ack_many_directly)


async def _disconnected(request: Request) -> None:
    """Return once the client has closed its connection (the body is read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _lease(claim: service.Claim) -> dict[str, Any]:
    return {
        "id": claim.job_id,
        "queue": claim.queue,
        "task": claim.task,
        "args": claim.args,
        "attempt": claim.attempt,
        "max_attempts": claim.max_attempts,
        "timeout_seconds": claim.timeout_seconds,
        "lease_token": claim.lease_token,
        "lease_expires_at": claim.lease_expires_at,
        "progress": claim.progress,
    }


async def _queue_of(session: AsyncSession, tenant_id: str, job_id: str) -> str:
    bind_tenant(session, tenant_id)
    queue = await session.scalar(select(Job.queue).where(Job.id == job_id))
    if queue is None:
        raise NotFound(f"No job {job_id!r}.")
    return queue


async def _check_job_access(
    session: AsyncSession, principal: Principal, job_id: str, access: QueueAccess
) -> None:
    check_queues(principal, [await _queue_of(session, principal.tenant_id, job_id)], access)


@router.post("/jobs/{job_id}/heartbeat", response_model=schemas.HeartbeatAnswer)
async def heartbeat(
    job_id: str,
    body: schemas.HeartbeatRequest,
    principal: CurrentPrincipal,
    session: DbSession,
    context: Context,
) -> Any:
    """Extend the lease (and keep the task's progress); answers ``cancel_requested`` when the
    job was cancelled meanwhile."""
    if body.progress is not None:
        _check_size("progress", body.progress, context.settings.jobs.max_result_bytes)
    await _check_job_access(session, principal, job_id, QueueAccess.work)
    return await service.heartbeat(
        session,
        principal.tenant_id,
        job_id,
        body.lease_token,
        lease_seconds=body.lease_seconds,
        progress=body.progress,
    )


@router.post("/jobs/{job_id}/ack", response_model=schemas.Job)
async def ack(
    job_id: str,
    body: schemas.AckRequest,
    principal: CurrentPrincipal,
    session: DbSession,
    context: Context,
) -> Any:
    """The attempt succeeded: the job is completed, with ``result`` kept on it."""
    _check_size("result", body.result, context.settings.jobs.max_result_bytes)
    await _check_job_access(session, principal, job_id, QueueAccess.work)
    job = await service.complete(
        session, principal.tenant_id, job_id, body.lease_token, body.result
    )
    context.resources[JOBS_METRICS_RESOURCE].observe_attempt_end(job)
    return job


@router.post("/jobs/{job_id}/fail", response_model=schemas.Job)
async def fail(
    job_id: str,
    body: schemas.FailRequest,
    principal: CurrentPrincipal,
    session: DbSession,
    context: Context,
) -> Any:
    """The attempt failed: retried after the backoff (or ``retry_in_seconds``), or dead when
    it was the last attempt or ``discard`` is set."""
    await _check_job_access(session, principal, job_id, QueueAccess.work)
    job = await service.fail(
        session,
        principal.tenant_id,
        job_id,
        body.lease_token,
        body.error,
        body.traceback,
        retry_in_seconds=body.retry_in_seconds,
        discard=body.discard,
    )
    context.resources[JOBS_METRICS_RESOURCE].observe_attempt_end(job)
    return job


# -- reading ------------------------------------------------------------------------------


@router.get("/jobs/{job_id}", response_model=schemas.Job)
async def get_job(job_id: str, principal: CurrentPrincipal, session: DbSession) -> Any:
    await _check_job_access(session, principal, job_id, QueueAccess.read)
    return await service.get_job(session, principal.tenant_id, job_id)


@router.get("/jobs", response_model=schemas.JobPage)
async def list_jobs(
    principal: CurrentPrincipal,
    session: DbSession,
    queue: Annotated[str, Query(pattern=schemas.NAME_PATTERN)],
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    after: Annotated[str | None, Query(max_length=36)] = None,
) -> Any:
    """A queue's jobs, oldest first, a page at a time (``after``: the last page's ``next``)."""
    check_queues(principal, [queue], QueueAccess.read)
    jobs = await service.list_jobs(
        session, principal.tenant_id, queue=queue, state=state, limit=limit + 1, after=after
    )
    page = jobs[:limit]
    return {"jobs": page, "next": page[-1].id if len(jobs) > limit else None}


# -- operators ----------------------------------------------------------------------------

QueueName = Annotated[str, Path(pattern=schemas.NAME_PATTERN)]
ScheduleName = Annotated[str, Path(pattern=schemas.NAME_PATTERN)]


def _queue_document(overview: service.QueueOverview) -> dict[str, Any]:
    return {
        "name": overview.name,
        "paused": overview.paused,
        "concurrency_limit": overview.concurrency_limit,
        "rate_limit_per_second": overview.rate_limit_per_second,
        "states": {
            state: {"count": stats.count, "oldest_age_seconds": stats.oldest_age_seconds}
            for state, stats in overview.states.items()
        },
    }


async def _overview(session: AsyncSession, tenant_id: str, queue: str) -> dict[str, Any]:
    for overview in await service.list_queues(session, tenant_id):
        if overview.name == queue:
            return _queue_document(overview)
    return _queue_document(service.QueueOverview(name=queue))


@router.get("/queues", response_model=schemas.QueueList)
async def list_queues(principal: CurrentPrincipal, session: DbSession) -> Any:
    """The queues with jobs or a configuration that the caller may read, with their jobs'
    count and the age of the oldest in each state."""
    overviews = await service.list_queues(session, principal.tenant_id)
    return {
        "queues": [
            _queue_document(overview)
            for overview in overviews
            if may(principal, overview.name, QueueAccess.read)
        ]
    }


@router.get("/queues/{queue}", response_model=schemas.Queue)
async def get_queue(queue: QueueName, principal: CurrentPrincipal, session: DbSession) -> Any:
    """One queue (an unknown one: 404)."""
    check_queues(principal, [queue], QueueAccess.read)
    for overview in await service.list_queues(session, principal.tenant_id):
        if overview.name == queue:
            return _queue_document(overview)
    raise NotFound(f"No queue {queue!r}: it has no jobs and no configuration.")


@router.patch("/queues/{queue}", response_model=schemas.Queue)
async def configure_queue(
    queue: QueueName,
    body: schemas.QueueUpdate,
    principal: CurrentPrincipal,
    actor: CallerActor,
    session: DbSession,
) -> Any:
    """Set or remove (``null``) the queue's concurrency and rate limits; a field left out
    stays as it is."""
    check_queues(principal, [queue], QueueAccess.admin)
    before = await service.get_queue_config(session, principal.tenant_id, queue)
    given = body.model_fields_set
    old = {
        "concurrency_limit": before.concurrency_limit if before else None,
        "rate_limit_per_second": before.rate_limit_per_second if before else None,
    }
    after = await service.configure_queue(
        session,
        principal.tenant_id,
        queue,
        concurrency_limit=body.concurrency_limit if "concurrency_limit" in given else KEEP,
        rate_limit_per_second=(
            body.rate_limit_per_second if "rate_limit_per_second" in given else KEEP
        ),
    )
    new = {
        "concurrency_limit": after.concurrency_limit,
        "rate_limit_per_second": after.rate_limit_per_second,
    }
    diff = {
        field: {"before": old[field], "after": new[field]}
        for field in new
        if old[field] != new[field]
    }
    record_change(session, actor, principal.tenant_id, "jobs.queue.configure", "queue", queue, diff)
    signal_after_commit(session, principal.tenant_id, [queue])  # a raised limit frees jobs
    return await _overview(session, principal.tenant_id, queue)


@router.post("/queues/{queue}/pause", response_model=schemas.Queue)
async def pause_queue(
    queue: QueueName, principal: CurrentPrincipal, actor: CallerActor, session: DbSession
) -> Any:
    """Stop handing out the queue's jobs (running ones go on); enqueues still land."""
    check_queues(principal, [queue], QueueAccess.admin)
    await service.pause_queue(session, principal.tenant_id, queue)
    record_change(session, actor, principal.tenant_id, "jobs.queue.pause", "queue", queue)
    return await _overview(session, principal.tenant_id, queue)


@router.post("/queues/{queue}/resume", response_model=schemas.Queue)
async def resume_queue(
    queue: QueueName, principal: CurrentPrincipal, actor: CallerActor, session: DbSession
) -> Any:
    check_queues(principal, [queue], QueueAccess.admin)
    await service.resume_queue(session, principal.tenant_id, queue)
    record_change(session, actor, principal.tenant_id, "jobs.queue.resume", "queue", queue)
    signal_after_commit(session, principal.tenant_id, [queue])
    return await _overview(session, principal.tenant_id, queue)


@router.post("/jobs/{job_id}/cancel", response_model=schemas.Job)
async def cancel_job(
    job_id: str, principal: CurrentPrincipal, actor: CallerActor, session: DbSession
) -> Any:
    """Cancel a job that has not ended; a running one's worker hears of it at its next
    heartbeat, and its ack or fail is refused."""
    await _check_job_access(session, principal, job_id, QueueAccess.admin)
    job = await service.cancel(session, principal.tenant_id, job_id)
    record_change(session, actor, principal.tenant_id, "jobs.job.cancel", "job", job_id)
    return job


@router.post("/jobs/{job_id}/requeue", response_model=schemas.Job)
async def requeue_job(
    job_id: str, principal: CurrentPrincipal, actor: CallerActor, session: DbSession
) -> Any:
    """Make a dead or cancelled job available now, with a fresh set of attempts."""
    await _check_job_access(session, principal, job_id, QueueAccess.admin)
    job = await service.requeue(session, principal.tenant_id, job_id)
    record_change(session, actor, principal.tenant_id, "jobs.job.requeue", "job", job_id)
    signal_after_commit(session, principal.tenant_id, [job.queue])
    return job


@router.post("/dead/requeue", response_model=schemas.Requeued)
async def requeue_dead(
    body: schemas.DeadRequeue, principal: CurrentPrincipal, actor: CallerActor, session: DbSession
) -> Any:
    """Requeue dead jobs in bulk: a queue's, the ones named, or (with ``jobs:*:admin``) all."""
    tenant_id = principal.tenant_id
    if body.queue is not None:
        queues = [body.queue]
    elif body.ids is not None:
        bind_tenant(session, tenant_id)
        rows = await session.scalars(select(Job.queue).where(Job.id.in_(body.ids)).distinct())
        queues = sorted(rows)
    else:
        queues = ["*"]
    check_queues(principal, queues, QueueAccess.admin)
    count = await service.requeue_dead(session, tenant_id, body.ids, queue=body.queue)
    data = {"queue": body.queue, "ids": len(body.ids) if body.ids is not None else None}
    record_change(
        session,
        actor,
        tenant_id,
        "jobs.dead.requeue",
        "queue",
        body.queue or "*",
        {
            **data,
            "requeued": count,
        },
    )
    if count and queues != ["*"]:  # (all queues: waiting fetches find them at their recheck)
        signal_after_commit(session, tenant_id, queues)
    return {"requeued": count}


# -- schedules ----------------------------------------------------------------------------


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
    _check_size("args", body.args, context.settings.jobs.max_args_bytes)
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


def build_router() -> ServiceRouter:
    """The jobs service's routes, as ``keel.jobs.spec`` mounts them."""
    top = ServiceRouter()
    top.include_router(router)
    top.match_first("/v1/fetch", "/v1/ack", "/v1/jobs", "/v1/jobs/{job_id}/heartbeat")
    return top
