"""Natural batching: concurrent enqueues of one ``JobsClient`` share a request, and a
worker's acks go several to a request, so a busy service pays Keel one request for many
jobs instead of one each, and an idle one waits for nothing.

Enqueues (:class:`EnqueueBatcher`), one lane per client::

    enqueue ── lane free, alone at the loop's next turn? ── POST /jobs/v1/jobs ──▶ JobRef(job)
       └── a request of the lane in flight (or others of the same moment) ── wait in line
    the lane frees ── everyone in line (up to 500) ── one POST /jobs/v1/jobs/batch ─▶ JobRef(id)
        ├─ refused whole (400/413/422; 403 over several queues) ─▶ the two halves again,
        │      down to the job Keel refuses, sent alone: only its caller gets the error
        ├─ unreachable, with a spool ─▶ spooled: each job under its own key when nothing was
        │      sent, else the batch under its key (it may have reached Keel)
        └─ anything else ─▶ every caller of the batch gets the error

The batch carries one ``Idempotency-Key``, the same on the client's retries. An enqueue
with request options of its own (an ``idempotency_key``, a timeout) goes alone: a key must
mean exactly its job.

Acks (:class:`AckBuffer`), per running ``Worker``::

    job done ── queued ──┬─ the worker's next fetch carries them (``"ack": [...]``)
                         ├─ else POST /jobs/v1/ack about 5 ms after the first (at 50: at once)
                         └─ at shutdown: all sent before the worker returns
    answered ── refused alone (409 the lease was lost, 404) ─▶ logged, as a single ack's
       └── the request refused whole (4xx) ─▶ each ack alone, for its own answer
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keel_client.http import CircuitOpenError, ClientError, KeelHTTPError
from keel_client.jobs._models import Ack, AckAnswer, BatchAnswer, JobRef, JobState
from keel_client.jobs._policy import is_unreachable, splits_batch
from keel_client.jobs._spool import BATCH_PATH, JobSpool, SpooledRequest

__all__ = ["ACK_DELAY_SECONDS", "ACK_FLUSH_AT", "MAX_ACKS", "MAX_ENQUEUE_BATCH", "AckBuffer",
           "EnqueueBatcher"]  # fmt: skip

logger = logging.getLogger("keel_client.jobs")

#: Enqueues one batch carries at most (Keel takes 10,000; this bounds one request's body).
MAX_ENQUEUE_BATCH = 500
#: Acks one request carries at most (Keel's limit).
MAX_ACKS = 100
#: How long a finished job's ack waits for others (or for a fetch to carry it).
ACK_DELAY_SECONDS = 0.005
#: Acks that go at once, without waiting out the delay.
ACK_FLUSH_AT = 50


#: Sends one enqueue alone (``POST /jobs/v1/jobs``) or spools it.
SendAlone = Callable[[SpooledRequest], Awaitable[JobRef]]
#: Sends a batch body under an ``Idempotency-Key``; raises a ``KeelHTTPError`` if refused.
SendBatch = Callable[[dict[str, Any], str], Awaitable[BatchAnswer]]


@dataclass(eq=False)
class _InLine:
    """One caller's enqueue waiting for the lane; ``request`` is how it goes alone."""

    request: SpooledRequest
    run_at: datetime | None
    answer: asyncio.Future[JobRef] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def resolve(self, ref: JobRef) -> None:
        if not self.answer.done():  # the caller may have given up (cancelled)
            self.answer.set_result(ref)

    def refuse(self, error: BaseException) -> None:
        if not self.answer.done():
            self.answer.set_exception(error)


class EnqueueBatcher:
    """The lane a ``JobsClient``'s enqueues share: at most one of its requests in flight, and
    whatever arrives meanwhile goes together in the next (see the module's drawing)."""

    def __init__(
        self,
        *,
        send_alone: SendAlone,
        send_batch: SendBatch,
        spool: Callable[[], JobSpool | None],
        max_batch: int = MAX_ENQUEUE_BATCH,
    ) -> None:
        self._send_alone = send_alone
        self._send_batch = send_batch
        self._spool = spool
        self.max_batch = max_batch
        self._line: deque[_InLine] = deque()
        self._is_busy = False
        self._drainer: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None  # made by wait_idle, on the caller's loop
        #: Requests the lane sent: one enqueue alone, or a batch (and its halves).
        self.requests = 0

    async def enqueue(self, request: SpooledRequest, run_at: datetime | None) -> JobRef:
        """The reference to the job of ``request``: in line, sent when the lane is free
        (``run_at``: the job's, for the state it is given). A free lane sends at the event
        loop's next turn, alone unless enqueues of the same moment joined it: the callers a
        batch's answer wakes all enqueue again at once, and go together instead of one alone
        and the rest behind it."""
        waiting = _InLine(request, run_at)
        self._line.append(waiting)
        self._start_draining()
        return await waiting.answer

    async def wait_idle(self) -> None:
        """Wait until the request in flight and everything in line were answered
        (``JobsClient.aclose``)."""
        while self._is_busy or self._line:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()

    def _note_if_idle(self) -> None:
        if self._idle is not None and not self._is_busy and not self._line:
            self._idle.set()
            self._idle = None

    def _start_draining(self) -> None:
        if self._is_busy or self._drainer is not None or not self._line:
            return
        self._is_busy = True  # before the task runs: a new enqueue must not overtake the line
        self._drainer = asyncio.create_task(self._drain(), name="keel-jobs-enqueue-batch")

    async def _drain(self) -> None:
        group: list[_InLine] = []
        try:
            while self._line:
                group = []
                while self._line and len(group) < self.max_batch:
                    waiting = self._line.popleft()
                    if not waiting.answer.done():
                        group.append(waiting)
                if group:
                    await self._send(group)
        except BaseException as error:
            # Cancelled with the loop, or a bug: nobody in line may wait forever.
            reason = (
                error
                if isinstance(error, Exception)
                else RuntimeError("the enqueue was cancelled before Keel answered")
            )
            for waiting in [*group, *self._line]:
                waiting.refuse(reason)
            self._line.clear()
            raise
        finally:
            self._drainer = None
            self._is_busy = False
            self._note_if_idle()

    async def _send(self, group: list[_InLine]) -> None:
        group = [waiting for waiting in group if not waiting.answer.done()]
        if len(group) == 1:
            [waiting] = group
            self.requests += 1
            try:
                waiting.resolve(await self._send_alone(waiting.request))
            except Exception as error:
                waiting.refuse(error)
            return
        if not group:
            return
        spool = self._spool()
        if spool is not None and spool.pending:
            self._spool_each(spool, group)  # behind the backlog, in order
            return
        key = str(uuid.uuid4())
        body = {"jobs": [waiting.request.body for waiting in group]}
        self.requests += 1
        try:
            answer = await self._send_batch(body, key)
            if len(answer.ids) != len(group):
                raise ValueError(f"Keel answered {len(answer.ids)} ids for {len(group)} jobs")
        except KeelHTTPError as error:
            await self._batch_failed(group, key, body, error)
            return
        except Exception as error:
            for waiting in group:
                waiting.refuse(error)
            return
        duplicates = answer.duplicates
        if len(duplicates) != len(group):  # a Keel that does not say
            duplicates = [False] * len(group)
        now = datetime.now(UTC)
        for waiting, job_id, is_duplicate in zip(group, answer.ids, duplicates, strict=True):
            waiting.resolve(
                JobRef(key, job_id, is_duplicate, None if is_duplicate else _state(waiting, now))
            )

    async def _batch_failed(
        self, group: list[_InLine], key: str, body: dict[str, Any], error: KeelHTTPError
    ) -> None:
        spool = self._spool()
        if spool is not None and is_unreachable(error):
            if isinstance(error, CircuitOpenError):
                self._spool_each(spool, group)  # nothing was sent: each job under its own key
                return
            # The batch may have reached Keel: replayed whole, under its key, so it is one
            # set of jobs whatever happened.
            try:
                spool.append(SpooledRequest(BATCH_PATH, dict(body), key, was_sent=True))
            except Exception as spool_error:
                for waiting in group:
                    waiting.refuse(spool_error)
                return
            for waiting in group:
                waiting.resolve(JobRef(key, is_spooled=True))
            return
        queues = {waiting.request.body.get("queue") for waiting in group}
        if splits_batch(error, len(queues)):
            half = len(group) // 2
            await asyncio.gather(self._send(group[:half]), self._send(group[half:]))
            return
        for waiting in group:
            waiting.refuse(error)

    @staticmethod
    def _spool_each(spool: JobSpool, group: list[_InLine]) -> None:
        for waiting in group:
            try:
                spool.append(waiting.request)
            except Exception as error:
                waiting.refuse(error)
            else:
                waiting.resolve(JobRef(waiting.request.idempotency_key, is_spooled=True))


def _state(waiting: _InLine, now: datetime) -> JobState:
    """The state Keel gave a new job of a batch: ``scheduled`` for a ``run_at`` ahead (by
    this machine's clock), else ``available``."""
    run_at = waiting.run_at
    return JobState.SCHEDULED if run_at is not None and run_at > now else JobState.AVAILABLE


class AckBuffer:
    """A running worker's finished jobs waiting to be acknowledged together (see the module's
    drawing): the fetch loop :meth:`take`\\ s them for its next fetch, else a timer sends them.

    Example::

        acks = AckBuffer(ack_many=client.ack_many, ack_one=lambda ack: client.ack(ack.lease))
        acks.add(Ack(lease, result))
        ...
        await acks.aclose()            # at shutdown: every queued ack sent
    """

    def __init__(
        self,
        *,
        ack_many: Callable[[list[Ack]], Awaitable[AckAnswer]],
        ack_one: Callable[[Ack], Awaitable[object]],
        delay: float = ACK_DELAY_SECONDS,
        flush_at: int = ACK_FLUSH_AT,
    ) -> None:
        self._ack_many = ack_many
        self._ack_one = ack_one
        self.delay = delay
        self.flush_at = flush_at
        self._queued: list[Ack] = []
        #: Jobs whose ack went out in a request whose answer was lost: a 409 for one of them
        #: may be Keel refusing the second copy of an ack it took.
        self._resent: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        #: Requests sent by the buffer itself (``POST /jobs/v1/ack`` and single acks).
        self.requests = 0

    @property
    def pending(self) -> int:
        return len(self._queued)

    def add(self, ack: Ack) -> None:
        """Queue ``ack``: sent with the next fetch, or within ``delay`` seconds."""
        self._queued.append(ack)
        if len(self._queued) >= self.flush_at:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self.flush)

    def take(self, limit: int = MAX_ACKS) -> list[Ack]:
        """The queued acks (up to ``limit``) for a fetch to carry; :meth:`settle` its answer,
        or :meth:`give_back` them when the fetch failed."""
        taken, self._queued = self._queued[:limit], self._queued[limit:]
        if not self._queued:
            self._cancel_timer()
        return taken

    def give_back(self, acks: Sequence[Ack], *, may_have_reached: bool) -> None:
        """The acks of a fetch that failed or was cancelled: sent again at once, on their own
        (a fetch refused whole may have been refused for one of them)."""
        if not acks:
            return
        if may_have_reached:
            self._resent.update(ack.lease.id for ack in acks)
        self._queued[:0] = acks
        self.flush()

    def settle(self, acks: Sequence[Ack], answer: AckAnswer) -> None:
        """Log the acks Keel refused (each alone) among ``acks``."""
        for refused in answer.refused:
            _log_refusal(refused.id, refused.status, refused.detail, refused.id in self._resent)
        for ack in acks:
            self._resent.discard(ack.lease.id)

    def flush(self) -> None:
        """Send every queued ack now, up to 100 a request, in the background."""
        self._cancel_timer()
        while self._queued:
            batch, self._queued = self._queued[:MAX_ACKS], self._queued[MAX_ACKS:]
            sending = asyncio.get_running_loop().create_task(
                self._send(batch), name="keel-jobs-acks"
            )
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)

    async def aclose(self) -> None:
        """Send what is queued and wait for every ack request to end."""
        self.flush()
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _send(self, acks: list[Ack]) -> None:
        self.requests += 1
        try:
            answer = await self._ack_many(acks)
        except ClientError as error:
            logger.warning("Keel refused %d acks together (%s); sending each alone",
                           len(acks), error.status)  # fmt: skip
            await asyncio.gather(*(self._send_alone(ack) for ack in acks))
            return
        except KeelHTTPError as error:
            for ack in acks:
                logger.error("job %s: the report did not reach Keel: %s", ack.lease.id, error)
                self._resent.discard(ack.lease.id)
            return
        self.settle(acks, answer)

    async def _send_alone(self, ack: Ack) -> None:
        self.requests += 1
        job_id = ack.lease.id
        try:
            await self._ack_one(ack)
        except ClientError as error:
            _log_refusal(job_id, error.status, error.detail, job_id in self._resent)
        except KeelHTTPError as error:
            logger.error("job %s: the report did not reach Keel: %s", job_id, error)
        finally:
            self._resent.discard(job_id)


def _log_refusal(job_id: str, status: int | None, detail: str | None, was_resent: bool) -> None:
    """Log a refused ack as a single ack's refusal is logged (``Worker._report``)."""
    if status == 409 and was_resent:
        logger.info("job %s: an ack sent again after a lost answer was refused (%s): Keel "
                    "took the first, or the lease was taken over", job_id, detail)  # fmt: skip
    elif status == 409:
        logger.warning("job %s: the lease was taken over; the report is refused", job_id)
    else:
        logger.error("job %s: Keel refused the report: %s %s", job_id, status, detail)
