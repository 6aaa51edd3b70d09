"""Workers' routes: ``POST /fetch`` (a long poll for leases, carrying the last round's acks),
``POST /ack`` (many at once), and a job's ``heartbeat``, ``ack`` and ``fail`` naming its lease
token. A lease token that is not the job's current one is a 409 and changes nothing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.dependencies import CurrentPrincipal
from keel.core.context import AppContext
from keel.core.deps import Context, DbSession
from keel.core.direct import DirectRoute, served_directly
from keel.core.errors import PayloadTooLarge
from keel.jobs import schemas, service
from keel.jobs.auth import QueueAccess, check_queues, may
from keel.jobs.metrics import JOBS_METRICS_RESOURCE
from keel.jobs.router.common import check_job_access, check_size, direct_call
from keel.jobs.signals import (
    JOB_SIGNALS_RESOURCE,
    Waiting,
    signal_after_commit,
)
from keel_client.auth import Principal

router = APIRouter(tags=["jobs"], route_class=DirectRoute)


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
    context, principal, body = await direct_call(request, schemas.FetchRequest)
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
    # One queue (a worker's usual fetch): the round in one call to the database.
    at_once = len(queues) == 1
    deadline = time.monotonic() + wait
    gone = asyncio.ensure_future(_disconnected(request)) if wait > 0 else None
    try:
        while True:
            mark = signals.mark()
            if at_once:
                claims, settled = await _round_at_once(
                    context, principal, body, queues, acks, lease_seconds
                )
                outcome = settled or outcome
            else:
                async with context.database.session() as session:
                    if acks:
                        outcome = await _complete_acks(session, context, principal, acks)
                    claims = await _claim_in_turn(session, principal, body, queues, lease_seconds)
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


async def _claim_in_turn(
    session: AsyncSession,
    principal: Principal,
    body: schemas.FetchRequest,
    queues: list[str],
    lease_seconds: float,
) -> list[service.Claim]:
    """Claim up to the fetch's limit, from each of ``queues`` in turn."""
    claims: list[service.Claim] = []
    for queue in queues:
        claims += await service.claim(
            session,
            principal.tenant_id,
            [queue],
            worker_id=body.worker_id,
            limit=body.limit - len(claims),
            lease_seconds=lease_seconds,
        )
        if len(claims) >= body.limit:
            break
    return claims


async def _round_at_once(
    context: AppContext,
    principal: Principal,
    body: schemas.FetchRequest,
    queues: list[str],
    items: list[schemas.AckItem] | None,
    lease_seconds: float,
) -> tuple[list[service.Claim], service.AckOutcome | None]:
    """A round of a fetch of one queue: its acks completed and its jobs claimed in one call
    to the database (:func:`service.fetch_at_once`: one statement on PostgreSQL, one
    hand-over to the connection's thread on SQLite). What that call leaves goes the
    unit-of-work way: acks it did not complete (each completed or refused alone, as
    ``POST /ack`` would) and the claim of a paused or limited queue. The acks' outcome is
    ``None`` when the fetch carried none."""
    too_large, acks = _sized_acks(context, items or [])
    fetched = await service.fetch_at_once(
        context.database,
        principal.tenant_id,
        queues[0],
        acks,
        worker_id=body.worker_id,
        limit=body.limit,
        lease_seconds=lease_seconds,
    )
    acked, refused, claims = fetched.acked, too_large, fetched.claims
    if fetched.left or fetched.closed:
        async with context.database.session() as session:
            if fetched.left:
                rest = await _complete(session, principal, fetched.left, refused)
                acked, refused = [*acked, *rest.acked], rest.refused
            if fetched.closed:
                claims = await _claim_in_turn(session, principal, body, queues, lease_seconds)
    return claims, (service.AckOutcome(acked, refused) if items else None)


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
    too_large, acks = _sized_acks(context, items)
    return await _complete(session, principal, acks, too_large)


async def _complete(
    session: AsyncSession,
    principal: Principal,
    acks: list[service.Ack],
    refused: list[service.RefusedAck],
) -> service.AckOutcome:
    """:func:`service.complete_many` of ``acks`` for ``principal`` (an ack of a queue it may
    not work refused alone), after the acks ``refused`` already."""
    outcome = await service.complete_many(
        session,
        principal.tenant_id,
        acks,
        may_work=lambda queue: may(principal, queue, QueueAccess.work),
    )
    return service.AckOutcome(outcome.acked, [*refused, *outcome.refused])


def _sized_acks(
    context: AppContext, items: list[schemas.AckItem]
) -> tuple[list[service.RefusedAck], list[service.Ack]]:
    """The acks whose result is over the size limit (refused alone: 413), and the others."""
    limit = context.settings.jobs.max_result_bytes
    too_large: list[service.RefusedAck] = []
    acks: list[service.Ack] = []
    for item in items:
        try:
            check_size("result", item.result, limit)
        except PayloadTooLarge as error:  # refused alone, as the others' refusals are
            too_large.append(service.RefusedAck(item.id, 413, str(error.detail or error)))
            continue
        acks.append(service.Ack(item.id, item.lease_token, item.result))
    return too_large, acks


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
    context, principal, body = await direct_call(request, schemas.AckBatch)
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
        check_size("progress", body.progress, context.settings.jobs.max_result_bytes)
    await check_job_access(session, principal, job_id, QueueAccess.work)
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
    check_size("result", body.result, context.settings.jobs.max_result_bytes)
    await check_job_access(session, principal, job_id, QueueAccess.work)
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
    await check_job_access(session, principal, job_id, QueueAccess.work)
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
