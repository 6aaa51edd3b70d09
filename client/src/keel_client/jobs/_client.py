"""``JobsClient``: Keel's jobs endpoints (``/jobs/v1``), enqueues that survive an unreachable
Keel through a local spool (``_spool``), and concurrent enqueues that share a request
(``_batching``).

Every enqueue carries an ``Idempotency-Key`` (the caller's, a new UUID, or its batch's), the
same on every retry and on the spool's replay, so an enqueue sent twice is one job. The
worker's calls (fetch, heartbeat, ack, fail, and acks in batches) are here too:
:class:`~keel_client.jobs.Worker` is built on them, and a worker in another language speaks
the same protocol.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict, Unpack, cast

import httpx
from pydantic import SecretStr

from keel_client._service import ServiceClient
from keel_client.http import BaseAPIClient, CircuitOpenError, KeelHTTPError, RequestOptions
from keel_client.jobs._batching import MAX_ACKS, EnqueueBatcher
from keel_client.jobs._models import (
    Ack,
    AckAnswer,
    BatchAnswer,
    FetchAnswer,
    HeartbeatAnswer,
    Job,
    JobBatchRef,
    JobPage,
    JobRef,
    JobState,
    Lease,
)
from keel_client.jobs._policy import is_unreachable
from keel_client.jobs._spool import BATCH_PATH, JOBS_PATH, JobSpool, RejectedJob, SpooledRequest

__all__ = ["DEFAULT_QUEUE", "EnqueueOptions", "JobSettings", "JobsClient", "NewJob",
           "split_options"]  # fmt: skip

DEFAULT_QUEUE = "default"
FETCH_PATH = "/jobs/v1/fetch"
ACK_PATH = "/jobs/v1/ack"
#: Longest long-poll Keel holds a fetch.
MAX_WAIT_SECONDS = 30.0


class JobSettings(TypedDict, total=False):
    """A job's settings, as :meth:`JobsClient.enqueue` and :meth:`Outbox.enqueue` take them
    (see :class:`NewJob`)."""

    queue: str
    priority: int | None
    run_at: datetime | None
    max_attempts: int | None
    timeout_seconds: float | None
    tags: Sequence[str]
    unique_key: str | None
    unique_period: float | timedelta | None
    unique_states: Sequence[JobState | str] | None
    max_backoff_seconds: int | None


class EnqueueOptions(JobSettings, RequestOptions, total=False):
    """What :meth:`JobsClient.enqueue` takes by keyword: the job's settings and per-call
    ``RequestOptions``."""


_SETTING_NAMES = frozenset(JobSettings.__annotations__)


def split_options(options: EnqueueOptions) -> tuple[JobSettings, RequestOptions]:
    """``options`` as the job's settings and the call's options."""
    settings = {name: value for name, value in options.items() if name in _SETTING_NAMES}
    request = {name: value for name, value in options.items() if name not in _SETTING_NAMES}
    return cast(JobSettings, settings), cast(RequestOptions, request)


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to enqueue: what :meth:`JobsClient.enqueue` takes as arguments, as one value
    for :meth:`JobsClient.enqueue_many` and the outbox.

    ``args`` is a list (the task gets ``*args``) or a mapping (``**args``), JSON only.
    ``run_at``: not before then (aware datetime); ``timeout_seconds``: how long an attempt may
    run;
    ``unique_key``: no second job while one with the key is live (or, with
    ``unique_period``, created within that many seconds; ``unique_states`` names the states
    that count); ``max_backoff_seconds``: the longest wait between two attempts (the backoff
    is ``attempt⁴ + jitter`` seconds up to it). ``None`` leaves a setting to Keel's default.

    Example::

        await keel.jobs.enqueue_many(
            [NewJob("send_report", [id], queue="reports") for id in report_ids]
        )
    """

    task: str
    args: Sequence[Any] | Mapping[str, Any] = ()
    queue: str = DEFAULT_QUEUE
    priority: int | None = None
    run_at: datetime | None = None
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    tags: Sequence[str] = ()
    unique_key: str | None = None
    unique_period: float | timedelta | None = None
    unique_states: Sequence[JobState | str] | None = None
    max_backoff_seconds: int | None = None

    @classmethod
    def of(
        cls,
        task: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any] | None,
        settings: JobSettings,
    ) -> NewJob:
        """The job of a call ``enqueue(task, *args, kwargs=..., **settings)``."""
        if args and kwargs is not None:
            raise TypeError("give the task's arguments positionally or as kwargs=, not both")
        return cls(task, args if kwargs is None else kwargs, **settings)

    def to_wire(self) -> dict[str, Any]:
        """The job's JSON for ``POST /jobs/v1/jobs``."""
        if not self.task:
            raise ValueError("a job needs a task name")
        args: Any = dict(self.args) if isinstance(self.args, Mapping) else list(self.args)
        if isinstance(self.args, str | bytes):
            raise TypeError("args is a list or a mapping, not a string")
        body: dict[str, Any] = {"queue": self.queue, "task": self.task, "args": args}
        if self.priority is not None:
            body["priority"] = self.priority
        if self.run_at is not None:
            if self.run_at.tzinfo is None:
                raise ValueError("run_at must be timezone-aware (datetime.now(UTC) + ...)")
            body["run_at"] = self.run_at.astimezone(UTC).isoformat()
        if self.max_attempts is not None:
            body["max_attempts"] = self.max_attempts
        if self.timeout_seconds is not None:
            body["timeout_seconds"] = max(1, round(self.timeout_seconds))
        if self.tags:
            body["tags"] = list(self.tags)
        if self.unique_key is not None:
            unique: dict[str, Any] = {"key": self.unique_key}
            if self.unique_period is not None:
                period = self.unique_period
                seconds = period.total_seconds() if isinstance(period, timedelta) else period
                unique["period_seconds"] = max(1, round(seconds))
            if self.unique_states is not None:
                unique["states"] = [JobState(state).value for state in self.unique_states]
            body["unique"] = unique
        elif self.unique_period is not None or self.unique_states is not None:
            raise ValueError("unique_period and unique_states go with a unique_key")
        if self.max_backoff_seconds is not None:
            body["max_backoff_seconds"] = self.max_backoff_seconds
        return body


class JobsClient(ServiceClient):
    """Keel's jobs: enqueue (spooled while Keel is unreachable), read, cancel, and the
    worker's calls, on the resilient base client.

    Example::

        async with Keel.from_env() as keel:
            await keel.jobs.open_spool("/var/spool/billing-jobs")   # optional, recommended
            ref = await keel.jobs.enqueue("send_report", 42, queue="reports", priority=5,
                                          run_at=datetime.now(UTC) + timedelta(minutes=5),
                                          unique_key="report-42")
            job = await keel.jobs.get(ref.id)

    Concurrent enqueues of one client share requests: while one is in flight, the next wait
    and then go together as one batch (up to 500), each caller with its own :class:`JobRef`;
    an enqueue with nothing in flight goes at the event loop's next turn, alone unless others
    of the same moment joined it. An enqueue with request options of its own
    (``idempotency_key=``, ``timeout=``...) always goes alone.

    Without a spool, an unreachable Keel raises the ``keel_client.http`` error after the
    client's retries. With one (:meth:`open_spool`), the enqueue is journaled on disk and
    returns a :class:`JobRef` with ``is_spooled``; a task replays the spool in order with
    the same idempotency keys. Errors are ``keel_client.http`` errors: a refused job is a
    ``ClientError`` (422 bad arguments, 413 too large, 403 no ``jobs:<queue>:enqueue``).

    Alone: ``JobsClient("https://keel.internal", auth=api_key)`` or ``JobsClient.from_env()``,
    with a pool of its own; or ``api=`` a shared ``BaseAPIClient`` (what ``Keel`` does).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        auth: str | SecretStr | httpx.Auth | None = None,
        api: BaseAPIClient | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, auth=auth, api=api, **options)
        self._spool: JobSpool | None = None
        self._is_closed = False
        #: The lane concurrent enqueues share (``batcher.requests``: the requests it sent).
        self.batcher = EnqueueBatcher(
            send_alone=lambda request: self._enqueue_alone(request, {}),
            send_batch=self._send_batch,
            spool=lambda: self._spool,
        )

    # -- the spool -------------------------------------------------------------------------

    async def open_spool(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: bool = True,
        max_bytes: int | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        on_rejected: Callable[[RejectedJob], None] | None = None,
    ) -> JobSpool:
        """Spool enqueues to ``directory`` while Keel is unreachable, and replay them (with
        what a previous process left there) in order. One process per directory.

        ``fsync=True`` (the default) puts each spooled job on disk before ``enqueue``
        returns: it survives a power loss, at the cost of a disk flush per job while Keel
        is down. ``on_rejected`` hears of a spooled job Keel refused for good (a 4xx)."""
        if self._spool is not None:
            raise RuntimeError("this client already has a spool")
        options: dict[str, Any] = {}
        if max_bytes is not None:
            options["max_bytes"] = max_bytes
        spool = JobSpool(
            directory,
            send=self._send,
            fsync=fsync,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            on_rejected=on_rejected,
            **options,
        )
        await spool.start()
        self._spool = spool
        return spool

    @property
    def spool(self) -> JobSpool | None:
        """The spool :meth:`open_spool` opened, if any (``spool.pending``: jobs waiting)."""
        return self._spool

    async def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every spooled enqueue reached Keel; ``False`` after ``timeout``
        seconds (they stay spooled). ``True`` at once without a spool."""
        return True if self._spool is None else await self._spool.flush(timeout)

    async def aclose(self, flush_timeout: float = 5.0) -> None:
        """Wait for the enqueues in line to be answered, give the spool ``flush_timeout``
        seconds to drain, close it (what is left stays on disk for the next start), then
        close the pool if this client owns it. A second call does nothing more."""
        if self._is_closed:
            return
        self._is_closed = True
        try:
            await self.batcher.wait_idle()
        finally:
            await self._close_spool_and_pool(flush_timeout)

    async def _close_spool_and_pool(self, flush_timeout: float) -> None:
        spool, self._spool = self._spool, None
        try:
            if spool is not None:
                try:
                    await spool.flush(flush_timeout)
                finally:
                    await spool.aclose()
        finally:
            await super().aclose()

    async def _send(self, request: SpooledRequest) -> None:
        """Send a spooled or outbox request with its own idempotency key; raises on failure."""
        await self.api.post(
            request.path, json=request.body, idempotency_key=request.idempotency_key
        )

    # -- enqueue ---------------------------------------------------------------------------

    async def enqueue(
        self,
        task: str,
        /,
        *args: Any,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> JobRef:
        """Enqueue ``task(*args)`` (or ``task(**kwargs)``): the job's settings
        (:class:`JobSettings`: ``queue``, ``priority``, ``run_at``, ``unique_key``...) and
        per-call ``RequestOptions``; ``idempotency_key`` (default: a new UUID) makes a
        repeated call one job.

        Returns the job's reference (``ref.id``; ``ref.is_duplicate`` when a unique key
        matched; ``ref.job``, the whole job, when it went alone rather than in a batch with
        concurrent enqueues), or, with a spool and Keel unreachable, a reference marked
        ``is_spooled``."""
        settings, call = split_options(options)
        job = NewJob.of(task, args, kwargs, settings)
        request = SpooledRequest(JOBS_PATH, job.to_wire(), _idempotency_key(call))
        if call:
            return await self._enqueue_alone(request, call)
        return await self.batcher.enqueue(request, job.run_at)

    async def _enqueue_alone(self, request: SpooledRequest, options: RequestOptions) -> JobRef:
        """Send one enqueue by itself (``POST /jobs/v1/jobs``), or spool it."""
        answer = await self._send_or_spool(request, options)
        if answer is None:
            return JobRef(request.idempotency_key, is_spooled=True)
        return JobRef.of_job(request.idempotency_key, Job.model_validate_json(answer.content))

    async def _send_batch(self, body: dict[str, Any], idempotency_key: str) -> BatchAnswer:
        """A batch of concurrent callers' enqueues, sent (never spooled) under its key."""
        response = await self.api.post(BATCH_PATH, json=body, idempotency_key=idempotency_key)
        return BatchAnswer.model_validate_json(response.content)

    async def enqueue_many(
        self, jobs: Sequence[NewJob], **options: Unpack[RequestOptions]
    ) -> JobBatchRef:
        """Enqueue up to 10,000 jobs in one call, all or none; their ids in order. With a
        spool and Keel unreachable, the batch is spooled whole (``is_spooled``)."""
        if not jobs:
            raise ValueError("enqueue_many needs at least one job")
        body = {"jobs": [job.to_wire() for job in jobs]}
        request = SpooledRequest(BATCH_PATH, body, _idempotency_key(options))
        answer = await self._send_or_spool(request, options)
        if answer is None:
            return JobBatchRef(request.idempotency_key, is_spooled=True)
        ids = BatchAnswer.model_validate_json(answer.content).ids
        return JobBatchRef(request.idempotency_key, ids=ids)

    async def _send_or_spool(
        self, request: SpooledRequest, options: RequestOptions
    ) -> httpx.Response | None:
        """Keel's answer, or ``None`` when the request went to the spool."""
        spool = self._spool
        if spool is not None and spool.pending:
            # Behind what waits already: jobs reach Keel in the order they were enqueued.
            spool.append(request)
            return None
        call: RequestOptions = {**options, "idempotency_key": request.idempotency_key}
        try:
            response = await self.api.post(request.path, json=request.body, **call)
        except KeelHTTPError as error:
            spool = self._spool
            if spool is None or not is_unreachable(error):
                raise
            # Nothing was sent with the circuit open; anything else may have reached Keel.
            spool.append(replace(request, was_sent=not isinstance(error, CircuitOpenError)))
            return None
        return response

    # -- read and manage ---------------------------------------------------------------------

    async def get(self, job_id: str, **options: Unpack[RequestOptions]) -> Job:
        """A job with its errors, result and progress."""
        return await self.api.get(f"{JOBS_PATH}/{job_id}", response_model=Job, **options)

    async def list_jobs(
        self,
        queue: str,
        *,
        state: JobState | str | None = None,
        limit: int = 100,
        after: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> JobPage:
        """One page of a queue's jobs (in a state), oldest first; ``page.next`` as ``after``
        for the next."""
        params: dict[str, str | int] = {"queue": queue, "limit": limit}
        if state is not None:
            params["state"] = JobState(state).value
        if after is not None:
            params["after"] = after
        return await self.api.get(JOBS_PATH, params=params, response_model=JobPage, **options)

    async def cancel(self, job_id: str, **options: Unpack[RequestOptions]) -> Job:
        """Cancel a job: one not yet running never runs; a running one's worker hears of it
        at its next heartbeat and stops it."""
        call: RequestOptions = {"idempotent": True, **options}
        return await self.api.post(f"{JOBS_PATH}/{job_id}/cancel", response_model=Job, **call)

    async def requeue(self, job_id: str, **options: Unpack[RequestOptions]) -> Job:
        """Make a dead (discarded) or cancelled job available again."""
        call: RequestOptions = {"idempotent": True, **options}
        return await self.api.post(f"{JOBS_PATH}/{job_id}/requeue", response_model=Job, **call)

    # -- the worker's calls ------------------------------------------------------------------

    async def fetch(
        self,
        queues: Sequence[str],
        *,
        worker_id: str,
        limit: int = 1,
        wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> list[Lease]:
        """Claim up to ``limit`` jobs from ``queues`` (in that order of preference), waiting
        up to ``wait_seconds`` (at most 30) for one to come; each with a lease to keep."""
        answer = await self.ack_and_fetch(
            (), queues, worker_id=worker_id, limit=limit, wait_seconds=wait_seconds,
            lease_seconds=lease_seconds, **options,
        )  # fmt: skip
        return answer.jobs

    async def ack_and_fetch(
        self,
        acks: Sequence[Ack],
        queues: Sequence[str],
        *,
        worker_id: str,
        limit: int = 1,
        wait_seconds: float = 0.0,
        lease_seconds: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> FetchAnswer:
        """Complete up to 100 finished attempts, then :meth:`fetch`, in one request: the
        answer's ``jobs``, and its ``acked`` and ``refused`` as :meth:`ack_many`'s. The acks
        are applied before the fetch waits, whatever it then finds."""
        if len(acks) > MAX_ACKS:
            raise ValueError(f"at most {MAX_ACKS} acks a request")
        wait = min(max(wait_seconds, 0.0), MAX_WAIT_SECONDS)
        body: dict[str, Any] = {"queues": list(queues), "limit": limit, "wait_seconds": wait,
                                "worker_id": worker_id}  # fmt: skip
        if lease_seconds is not None:
            body["lease_seconds"] = max(1, round(lease_seconds))
        if acks:
            body["ack"] = [ack.to_wire() for ack in acks]
        # The long poll may hold the answer for `wait` seconds: the read timeout is longer.
        call: RequestOptions = {"timeout": wait + 10.0, "deadline": wait + 30.0, **options}
        return await self.api.post(FETCH_PATH, json=body, response_model=FetchAnswer, **call)

    async def heartbeat(
        self,
        lease: Lease,
        *,
        lease_seconds: float | None = None,
        progress: Any = None,
        **options: Unpack[RequestOptions],
    ) -> HeartbeatAnswer:
        """Extend ``lease``; the answer says whether the job was cancelled meanwhile. A
        ``ClientError`` with status 409 when the lease is no longer this worker's."""
        body: dict[str, Any] = {"lease_token": lease.lease_token}
        if lease_seconds is not None:
            body["lease_seconds"] = max(1, round(lease_seconds))
        if progress is not None:
            body["progress"] = progress
        call: RequestOptions = {"idempotent": True, **options}
        return await self.api.post(
            f"{JOBS_PATH}/{lease.id}/heartbeat", json=body, response_model=HeartbeatAnswer, **call
        )

    async def ack(self, lease: Lease, result: Any = None, **options: Unpack[RequestOptions]) -> Job:
        """Complete the job, keeping a small JSON ``result``."""
        body: dict[str, Any] = {"lease_token": lease.lease_token}
        if result is not None:
            body["result"] = result
        call: RequestOptions = {"idempotent": True, **options}
        return await self.api.post(
            f"{JOBS_PATH}/{lease.id}/ack", json=body, response_model=Job, **call
        )

    async def ack_many(self, acks: Sequence[Ack], **options: Unpack[RequestOptions]) -> AckAnswer:
        """Complete up to 100 attempts in one request (one transaction in Keel). An ack
        Keel refuses (409 the lease is no longer this worker's, 404 no such job) is in
        ``answer.refused`` with its status, and the others are taken all the same."""
        if not acks:
            return AckAnswer()
        if len(acks) > MAX_ACKS:
            raise ValueError(f"at most {MAX_ACKS} acks a request")
        body = {"acks": [ack.to_wire() for ack in acks]}
        call: RequestOptions = {"idempotent": True, **options}
        return await self.api.post(ACK_PATH, json=body, response_model=AckAnswer, **call)

    async def fail(
        self,
        lease: Lease,
        error: str,
        *,
        traceback: str | None = None,
        retry_in_seconds: float | None = None,
        discard: bool = False,
        **options: Unpack[RequestOptions],
    ) -> Job:
        """Report a failed attempt: retried as the job's policy says (or in
        ``retry_in_seconds``), dead when out of attempts or with ``discard``."""
        body: dict[str, Any] = {"lease_token": lease.lease_token, "error": error}
        if traceback is not None:
            body["traceback"] = traceback
        if retry_in_seconds is not None:
            body["retry_in_seconds"] = max(0, round(retry_in_seconds))
        if discard:
            body["discard"] = True
        call: RequestOptions = {"idempotent": True, **options}
        return await self.api.post(
            f"{JOBS_PATH}/{lease.id}/fail", json=body, response_model=Job, **call
        )


def _idempotency_key(options: RequestOptions) -> str:
    return options.get("idempotency_key") or str(uuid.uuid4())
