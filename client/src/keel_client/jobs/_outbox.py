"""Transactional enqueue for a service with its own SQLAlchemy database: ``Outbox`` and
``OutboxRelay``.

The job is written as a row of the service's own ``keel_jobs_outbox`` table, in the
caller's transaction, so it exists if and only if that transaction commits; a relay sends
the rows to Keel in order and deletes them once Keel answered::

    service transaction: UPDATE orders ...; INSERT INTO keel_jobs_outbox ...; COMMIT
    relay: SELECT ... ORDER BY seq ── POST /jobs/v1/jobs (Idempotency-Key: the row's key)
             ├─ answered ──────────────▶ DELETE the row
             ├─ refused for good (4xx) ─▶ log, ``on_rejected``, DELETE the row
             └─ unreachable ────────────▶ keep the rows, back off, try again

Each row's idempotency key is a UUID drawn at insert, not its sequence number: a sequence
number comes back on SQLite after the last row is deleted, and every service's outbox
numbers from 1, so two rows of the fleet would share a key and Keel would answer the second
with the first's job. A row sent again after a crash between the answer and the delete is
answered with its first job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Self, Unpack

from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, String, delete, event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from keel_client.audit import retry_delay
from keel_client.http import KeelHTTPError
from keel_client.jobs._client import JobsClient, JobSettings, NewJob
from keel_client.jobs._policy import is_rejected
from keel_client.jobs._spool import JOBS_PATH, RejectedJob, SpooledRequest

__all__ = ["OUTBOX_TABLE", "Outbox", "OutboxJob", "OutboxRelay", "outbox_metadata"]

logger = logging.getLogger("keel_client.jobs")

OUTBOX_TABLE = "keel_jobs_outbox"
#: The outbox table's metadata: add it to the service's migrations (Alembic's
#: ``target_metadata = [Base.metadata, outbox_metadata]``) or create it with
#: :meth:`Outbox.create_table`.
outbox_metadata = MetaData()
_WAKE_KEY = "keel_jobs_outbox_wake"


class _OutboxBase(DeclarativeBase):
    metadata = outbox_metadata


class OutboxJob(_OutboxBase):
    """A job written in a service's transaction, waiting for the relay."""

    __tablename__ = OUTBOX_TABLE
    # AUTOINCREMENT on SQLite: numbers never come back, so ``seq`` order is enqueue order.
    __table_args__ = {"sqlite_autoincrement": True}

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Outbox:
    """Enqueue jobs in the caller's SQLAlchemy transaction.

    Example::

        outbox = Outbox()
        async with session.begin():                      # the service's AsyncSession
            session.add(Order(id=order_id))
            outbox.enqueue(session, "send_receipt", order_id, queue="billing")
        # committed: the relay sends it; rolled back: there never was a job

        async with outbox.relay(engine, keel):          # in the service's process
            ...

    ``enqueue`` adds a row to the session (``Session`` or ``AsyncSession``) and returns its
    idempotency key; it does not flush or commit. The table is ``keel_jobs_outbox`` in the
    session's database (:data:`outbox_metadata`).
    """

    def __init__(self) -> None:
        self._relays: set[OutboxRelay] = set()

    @staticmethod
    async def create_table(engine: AsyncEngine) -> None:
        """Create the outbox table if it is missing (services with migrations add
        :data:`outbox_metadata` to them instead)."""
        async with engine.begin() as connection:
            await connection.run_sync(outbox_metadata.create_all)

    def enqueue(
        self,
        session: Session | AsyncSession,
        task: str,
        /,
        *args: Any,
        kwargs: Mapping[str, Any] | None = None,
        **settings: Unpack[JobSettings],
    ) -> str:
        """Write ``task(*args)`` to the outbox in ``session``'s transaction, with the job's
        settings (:class:`JobSettings`, as :meth:`JobsClient.enqueue` takes them). Returns
        the idempotency key the relay sends it with."""
        return self.enqueue_job(session, NewJob.of(task, args, kwargs, settings))

    def enqueue_job(self, session: Session | AsyncSession, job: NewJob) -> str:
        """:meth:`enqueue` for a :class:`NewJob`."""
        key = f"outbox-{uuid.uuid4()}"
        row = OutboxJob(idempotency_key=key, body=job.to_wire(), created_at=datetime.now(UTC))
        session.add(row)
        self._wake_relays_on_commit(session)
        return key

    def relay(self, engine: AsyncEngine, jobs: Any, **options: Any) -> OutboxRelay:
        """An :class:`OutboxRelay` of ``engine``'s outbox to ``jobs`` (a ``Keel`` or a
        :class:`JobsClient`), woken by this outbox's commits in this process; not started."""
        relay = OutboxRelay(engine, jobs, **options)
        relay._outbox = self
        return relay

    def _wake_relays_on_commit(self, session: Session | AsyncSession) -> None:
        sync_session = session.sync_session if isinstance(session, AsyncSession) else session
        if sync_session.info.get(_WAKE_KEY):
            return
        sync_session.info[_WAKE_KEY] = True

        def committed(committed_session: Session) -> None:
            committed_session.info.pop(_WAKE_KEY, None)
            for relay in list(self._relays):
                relay.wake()

        event.listen(sync_session, "after_commit", committed, once=True)


class OutboxRelay:
    """Sends an outbox's rows to Keel in order and deletes each once Keel answered.

    Example::

        relay = OutboxRelay(engine, keel, interval=1.0)
        async with relay:                  # start(); on exit: a last round, then stop
            ...

    Rows are read every ``interval`` seconds, and at once after an :class:`Outbox` commit in
    this process (``outbox.relay(...)``). Several relays on one database (replicas) are
    safe: a row sent twice is one job (its idempotency key). A row Keel refuses for good
    (unknown queue, arguments too large) is logged, handed to ``on_rejected`` and deleted.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        jobs: Any,
        *,
        interval: float = 1.0,
        batch_size: int = 100,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        on_rejected: Callable[[RejectedJob], None] | None = None,
    ) -> None:
        client = jobs if isinstance(jobs, JobsClient) else getattr(jobs, "jobs", None)
        if not isinstance(client, JobsClient):
            raise TypeError("OutboxRelay takes a Keel or a JobsClient")
        self.engine = engine
        self.jobs = client
        self.interval = interval
        self.batch_size = batch_size
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.on_rejected = on_rejected
        self.sent = 0
        self.rejected = 0
        self.consecutive_failures = 0
        self._outbox: Outbox | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("an OutboxRelay starts once")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wakeup = asyncio.Event()
        if self._outbox is not None:
            self._outbox._relays.add(self)
        self._task = asyncio.create_task(self._relay_forever(), name="keel-jobs-outbox-relay")

    async def aclose(self) -> None:
        """Stop relaying; rows left are sent by the next relay on the database."""
        if self._outbox is not None:
            self._outbox._relays.discard(self)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """Look at the outbox now (thread-safe)."""
        wakeup, loop = self._wakeup, self._loop
        if wakeup is None or loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            wakeup.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(wakeup.set)

    async def relay_once(self) -> int:
        """Send the rows there now, in order, until the outbox is empty or a send fails;
        the rows sent or refused. Raises the ``KeelHTTPError`` that stopped it."""
        done = 0
        while True:
            async with self.engine.connect() as connection:
                rows = (
                    await connection.execute(
                        select(OutboxJob.seq, OutboxJob.idempotency_key, OutboxJob.body)
                        .order_by(OutboxJob.seq)
                        .limit(self.batch_size)
                    )
                ).all()
            if not rows:
                return done
            answered: list[int] = []
            try:
                for seq, key, body in rows:
                    request = SpooledRequest(JOBS_PATH, body, key)
                    try:
                        await self.jobs._send(request)
                    except KeelHTTPError as error:
                        if not is_rejected(error):
                            raise
                        self._reject(request, error)
                    else:
                        self.sent += 1
                    answered.append(seq)
            finally:
                if answered:
                    async with self.engine.begin() as connection:
                        await connection.execute(
                            delete(OutboxJob).where(OutboxJob.seq.in_(answered))
                        )
                    done += len(answered)
            if len(rows) < self.batch_size:
                return done

    async def _relay_forever(self) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            wakeup.clear()
            try:
                await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.consecutive_failures += 1
                if self.consecutive_failures == 1:
                    logger.warning("the jobs outbox relay failed, retrying: %s", error)
                delay = retry_delay(
                    self.consecutive_failures, base=self.backoff_base, cap=self.backoff_max
                )
                await asyncio.sleep(delay)
                continue
            self.consecutive_failures = 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await wakeup.wait()

    def _reject(self, request: SpooledRequest, error: KeelHTTPError) -> None:
        self.rejected += 1
        logger.error("an outbox job was refused by Keel and deleted: %s %s (%s %s)",
                     request.body.get("task"), request.idempotency_key, error.status,
                     error.code)  # fmt: skip
        if self.on_rejected is not None:
            try:
                self.on_rejected(RejectedJob(request, error.status, error.code, error.detail))
            except Exception:
                logger.exception("on_rejected raised; the row is deleted all the same")
