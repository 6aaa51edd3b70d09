"""Waking idle workers: a long-polling fetch sleeps until jobs may be there for it.

A fetch that found nothing waits on :class:`JobSignals` instead of polling the table: the
request that made jobs available (an enqueue, a requeue, a resume) calls
:func:`signal_after_commit`, and once its unit of work commits, the fetches of this process
waiting on one of those queues for that tenant wake at once. Other replicas hear of it
through Redis when ``KEEL_REDIS_URL`` is set: the platform's broadcast carries ``{"tenant":
..., "queues": [...]}`` on :data:`CHANNEL`, and each replica's listener
(:func:`listen_for_job_signals`, run beside the API) wakes its own waiting fetches. A single
process without Redis publishes nothing (nobody else would hear it). The signal never wakes
a fetch before the jobs are committed.

On PostgreSQL without Redis, replicas share no broadcast; the signal then travels by
``NOTIFY`` on :data:`PG_CHANNEL`: each replica's listener holds one connection on which it
runs ``LISTEN`` and sends, after commit, the signals its own requests committed.

**Hand-off.** A fetch that waits also offers itself (:meth:`JobSignals.offer`): an enqueue in
this process of a job due now on one of its queues (not paused, no concurrency or rate limit)
may take it (:meth:`JobSignals.take`, at most one enqueue takes a fetch) and insert the job
already leased to it, in the enqueue's own transaction; once that commits, the fetch answers
with the job (:func:`hand_after_commit`), without a claim transaction of its own or a wake-up.
If the enqueue rolls back, the fetch is handed nothing and reads the table again.

Signals are hints, never the truth: a fetch re-reads the table after each wake, and also
every :data:`RECHECK_SECONDS` without one, so a lost message (Redis down, a job whose
``run_at`` came, a lease rescued) costs at most that long, never a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from keel.core.broadcast import Broadcast, MessagesLost
from keel.core.context import ResourceKey
from keel.core.logging import get_logger
from keel.core.outages import Outcome, note_outage

if TYPE_CHECKING:
    from keel.core.context import AppContext

log = get_logger(__name__)

CHANNEL = "jobs:available"
#: The ``NOTIFY`` channel of replicas on PostgreSQL without Redis.
PG_CHANNEL = "keel_jobs_available"
#: PostgreSQL refuses a payload of 8,000 bytes or more; a longer list of queues wakes all.
_PG_PAYLOAD_LIMIT = 7_000
#: A waiting fetch looks at the table at least this often, signal or not.
RECHECK_SECONDS = 1.0

_PENDING = "keel.jobs.signals"


#: The tenant of a :meth:`JobSignals.wait` that any tenant's signal ends (Keel's own runner
#: works every tenant's platform queues).
ANY_TENANT = "*"


class JobSignals:
    """The fetches of this process waiting for jobs, by tenant.

    A waiter takes a :meth:`mark` before it reads the table and waits with it: a signal that
    arrived between the read and the wait is not missed.
    """

    def __init__(self, recheck_seconds: float = RECHECK_SECONDS) -> None:
        #: The longest a waiting fetch goes without looking at the table.
        self.recheck_seconds = recheck_seconds
        self._generation = 0
        self._waiters: dict[str, set[tuple[frozenset[str], asyncio.Event]]] = defaultdict(set)
        self._last: dict[tuple[str, str], int] = {}
        self._offers: list[Waiting] = []

    def mark(self) -> int:
        return self._generation

    def wake(self, tenant_id: str, queues: Iterable[str]) -> None:
        """Wake this tenant's fetches waiting on any of ``queues`` (and the waits of
        :data:`ANY_TENANT` on them)."""
        self._generation += 1
        names = set(queues)
        for queue in names:
            self._last[(tenant_id, queue)] = self._generation
            self._last[(ANY_TENANT, queue)] = self._generation
        for owner in (tenant_id, ANY_TENANT):
            for wanted, woken in list(self._waiters.get(owner, ())):
                if wanted & names:
                    woken.set()

    def wake_all(self) -> None:
        """Wake every waiting fetch (signals may have been lost: everyone looks again)."""
        self._generation += 1
        for waiters in self._waiters.values():
            for _, woken in waiters:
                woken.set()

    async def wait(
        self,
        tenant_id: str,  # or ANY_TENANT: a signal of any tenant on the queues
        queues: Iterable[str],
        since: int,
        timeout: float,
        *,
        until: asyncio.Future[Any] | None = None,
        handed: asyncio.Future[Any] | None = None,
    ) -> None:
        """Return when one of ``queues`` was signalled after :meth:`mark` gave ``since``,
        after ``timeout`` seconds, once ``until`` is done (the caller went away), or once
        ``handed`` is (an enqueue handed the waiting fetch jobs)."""
        wanted = frozenset(queues)
        if any(self._last.get((tenant_id, queue), 0) > since for queue in wanted):
            return
        entry = (wanted, asyncio.Event())
        self._waiters[tenant_id].add(entry)
        woken = asyncio.ensure_future(entry[1].wait())
        try:
            await asyncio.wait(
                [woken, *(future for future in (until, handed) if future is not None)],
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            woken.cancel()
            waiters = self._waiters[tenant_id]
            waiters.discard(entry)
            if not waiters:
                del self._waiters[tenant_id]
        # Generations only grow; forget old per-queue marks now and then.
        if len(self._last) > 10_000:
            self._last.clear()

    # -- hand-off ---------------------------------------------------------------------------

    def offer(
        self,
        tenant_id: str,
        queues: Iterable[str],
        worker_id: str,
        limit: int,
        lease_seconds: float,
    ) -> Waiting:
        """A waiting fetch's offer to be handed jobs (see the module's text); withdraw it
        with :meth:`withdraw` before the fetch answers."""
        waiting = Waiting(tenant_id, frozenset(queues), worker_id, limit, lease_seconds)
        self._offers.append(waiting)
        return waiting

    def withdraw(self, waiting: Waiting) -> bool:
        """Withdraw ``waiting``'s offer; False when an enqueue took it already (the fetch
        must then await :attr:`Waiting.handed`, which that enqueue's outcome settles)."""
        try:
            self._offers.remove(waiting)
        except ValueError:
            return False
        return True

    def offered(self, tenant_id: str, queue: str) -> bool:
        return any(
            waiting.tenant_id == tenant_id and queue in waiting.queues for waiting in self._offers
        )

    def take(self, tenant_id: str, queue: str) -> Waiting | None:
        """The longest-waiting fetch of ``tenant_id`` on ``queue``, its offer taken (no other
        enqueue can take it), or None."""
        for waiting in self._offers:
            if waiting.tenant_id == tenant_id and queue in waiting.queues:
                self._offers.remove(waiting)
                return waiting
        return None


@dataclass(eq=False)
class Waiting:
    """A fetch of this process waiting for jobs, offered to enqueues (:meth:`JobSignals.offer`).

    ``handed`` is settled once the enqueue that took it ends: with what it committed for
    it (the rows of jobs leased to this fetch's ``worker_id``), or ``None`` when that enqueue
    rolled back.
    """

    tenant_id: str
    queues: frozenset[str]
    worker_id: str
    limit: int
    lease_seconds: float
    #: The jobs the enqueue that took this fetch leased to it, as rows (committed only once
    #: ``handed`` says so).
    rows: list[dict[str, Any]] = field(default_factory=list)
    handed: asyncio.Future[list[dict[str, Any]] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def room(self) -> int:
        return self.limit - len(self.rows)

    def settle(self, rows: list[dict[str, Any]] | None) -> None:
        if not self.handed.done():
            self.handed.set_result(rows)


_HANDING = "keel.jobs.handing"


class Handing:
    """The fetches one enqueue's unit of work took (:meth:`JobSignals.take`): handed their
    jobs when it commits, nothing when it rolls back (:func:`hand_after_commit`)."""

    def __init__(self, signals: JobSignals, tenant_id: str) -> None:
        self.signals = signals
        self.tenant_id = tenant_id
        self.taken: list[Waiting] = []

    def offered(self, queue: str) -> bool:
        return self.signals.offered(self.tenant_id, queue) or any(
            queue in waiting.queues and waiting.room > 0 for waiting in self.taken
        )

    def take(self, queue: str) -> Waiting | None:
        """A fetch waiting on ``queue`` with room for one more job: one this unit of work
        took already, else a new one."""
        for waiting in self.taken:
            if queue in waiting.queues and waiting.room > 0:
                return waiting
        taken = self.signals.take(self.tenant_id, queue)
        if taken is not None:
            self.taken.append(taken)
        return taken

    def hand_over(self) -> None:
        """The unit of work committed: the fetches taken answer with their jobs."""
        for waiting in self.taken:
            waiting.settle(list(waiting.rows) if waiting.rows else None)

    def abandon(self) -> None:
        """Settle what was not settled (the unit of work ended without committing)."""
        for waiting in self.taken:
            waiting.settle(None)

    @property
    def handed_jobs(self) -> bool:
        """Whether a fetch taken was handed jobs (settled with rows)."""
        return any(
            waiting.handed.done() and not waiting.handed.cancelled() and waiting.handed.result()
            for waiting in self.taken
        )


async def handed_answers_first(handings: Iterable[Handing]) -> None:
    """Let the fetches ``handings`` handed jobs to answer before the enqueue does: their
    workers start the jobs while the enqueuer reads its own answer (the job's start is what
    an enqueue is waiting for; its answer only confirms it). A settled hand-off wakes its
    fetch two turns of the event loop later (the future's callback, then the task), and a
    handed fetch answers without waiting on anything, so two turns suffice."""
    if any(handing.handed_jobs for handing in handings):
        await asyncio.sleep(0)
        await asyncio.sleep(0)


def hand_after_commit(session: AsyncSession, handing: Handing) -> None:
    """Once ``session`` commits, the fetches ``handing`` took answer with their jobs; if it
    rolls back, they are handed nothing."""
    session.sync_session.info.setdefault(_HANDING, []).append(handing)


@event.listens_for(Session, "after_commit")
def _hand_over(sync_session: Session) -> None:
    for handing in sync_session.info.pop(_HANDING, ()):
        handing.hand_over()


@event.listens_for(Session, "after_rollback")
def _hand_nothing(sync_session: Session) -> None:
    for handing in sync_session.info.pop(_HANDING, ()):
        for waiting in handing.taken:
            waiting.rows.clear()
            waiting.settle(None)


JOB_SIGNALS_RESOURCE: ResourceKey[JobSignals] = ResourceKey("jobs.signals")


@dataclass
class _Route:
    broadcast: Broadcast
    signals: JobSignals
    #: Replicas share no broadcast (PostgreSQL, no Redis): signal them by ``NOTIFY``.
    notify: bool
    #: Replicas share the broadcast (Redis): signal them through it.
    shared: bool
    #: Signals committed and not yet sent by ``NOTIFY``, by tenant; ``ready`` says there are.
    outbox: dict[str, set[str]] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


#: The route of each engine's signals in this process (several apps may share a process in
#: tests), installed by :func:`listen_for_job_signals`.
_routes: weakref.WeakKeyDictionary[Any, _Route] = weakref.WeakKeyDictionary()
_publishing: set[asyncio.Task[None]] = set()


def signal_after_commit(session: AsyncSession, tenant_id: str, queues: Iterable[str]) -> None:
    """Once ``session`` commits, tell every replica that ``queues`` of the tenant have jobs."""
    sync_session = session.sync_session
    pending: dict[str, set[str]] = sync_session.info.setdefault(_PENDING, {})
    pending.setdefault(tenant_id, set()).update(queues)


def _pg_payloads(pending: dict[str, set[str]]) -> list[str]:
    payloads = []
    for tenant_id, queues in pending.items():
        payload = json.dumps({"tenant": tenant_id, "queues": sorted(queues)})
        if len(payload) > _PG_PAYLOAD_LIMIT:
            payload = json.dumps({"tenant": tenant_id, "queues": None})  # wake them all
        payloads.append(payload)
    return payloads


@event.listens_for(Session, "after_commit")
def _publish_signals(sync_session: Session) -> None:
    pending: dict[str, set[str]] | None = sync_session.info.pop(_PENDING, None)
    if pending and sync_session.bind is not None:
        publish_signals(sync_session.get_bind().engine, pending)


def publish_signals(engine: Any, pending: dict[str, set[str]]) -> None:
    """Tell every replica that ``pending`` queues (by tenant) have jobs, committed on
    ``engine`` (a sync ``Engine``): what :func:`signal_after_commit` does once its unit of
    work commits, for a write that committed by itself (a statement outside a transaction)."""
    route = _routes.get(engine)
    if route is None:
        return  # no listener in this process (a CLI command): fetches find the jobs on recheck
    for tenant_id, queues in pending.items():
        route.signals.wake(tenant_id, queues)  # this replica at once
    if route.notify:  # the listener's connection sends them, a batch at a time
        for tenant_id, queues in pending.items():
            route.outbox.setdefault(tenant_id, set()).update(queues)
        route.ready.set()
        return
    if not route.shared:
        return  # one process (no Redis, not PostgreSQL): its own fetches are all there are
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    task = loop.create_task(_publish(route.broadcast, pending))
    _publishing.add(task)
    task.add_done_callback(_publishing.discard)


@event.listens_for(Session, "after_rollback")
def _forget_signals(sync_session: Session) -> None:
    sync_session.info.pop(_PENDING, None)


async def _publish(broadcast: Broadcast, pending: dict[str, set[str]]) -> None:
    for tenant_id, queues in pending.items():
        try:
            await broadcast.publish(CHANNEL, {"tenant": tenant_id, "queues": sorted(queues)})
        except Exception as error:  # fail open: other replicas' fetches recheck within a second
            note_outage("redis", "jobs-wake", error, outcome=Outcome.fail_open)


async def listen_for_job_signals(context: AppContext) -> None:
    """Deliver other replicas' job signals to this replica's waiting fetches, for ever: from
    the broadcast, or from PostgreSQL's ``NOTIFY`` where replicas share no broadcast."""
    signals = context.resources[JOB_SIGNALS_RESOURCE]
    engine = context.database.engine.sync_engine
    shared = context.settings.redis_url is not None
    notify = context.database.dialect == "postgresql" and not shared
    route = _Route(context.broadcast, signals, notify, shared)
    _routes[engine] = route
    try:
        while True:
            try:
                if notify:
                    await _listen_to_postgres(context, route)
                elif shared:
                    await _listen_to_broadcast(context, signals)
                else:  # one process: its commits wake its fetches directly (after_commit)
                    await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise
            except Exception:  # the channel failed: everyone rechecks; listen again
                log.warning("jobs.signals.listen_failed", exc_info=True)
                signals.wake_all()
                await asyncio.sleep(RECHECK_SECONDS)
    finally:
        _routes.pop(engine, None)


async def _listen_to_broadcast(context: AppContext, signals: JobSignals) -> None:
    async with context.broadcast.subscribe(CHANNEL) as subscription:
        while True:
            try:
                data = (await subscription.get()).data
            except MessagesLost:
                signals.wake_all()
                continue
            signals.wake(str(data.get("tenant")), data.get("queues") or ())


def _heard(signals: JobSignals, payload: str) -> None:
    try:
        data = json.loads(payload)
        tenant, queues = str(data["tenant"]), data["queues"]
    except (ValueError, KeyError, TypeError):
        signals.wake_all()
        return
    if queues is None:
        signals.wake_all()
    else:
        signals.wake(tenant, queues)


async def _listen_to_postgres(context: AppContext, route: _Route) -> None:
    """``LISTEN`` on a connection of its own (not the pool's: it is held for ever), checked
    every few seconds so a lost connection is noticed and replaced; this replica's committed
    signals go out on it too, by ``NOTIFY``, as many as have gathered in one statement each
    (not in the enqueuing transaction: PostgreSQL serialises the commits of transactions
    that notify, which held concurrent enqueues back)."""
    import asyncpg  # only here: a server on SQLite never loads the PostgreSQL driver

    url = context.database.engine.url.set(drivername="postgresql")
    connection = await asyncpg.connect(
        url.render_as_string(hide_password=False),
        timeout=context.settings.database_pool.connect_timeout_seconds,
    )
    try:
        await connection.add_listener(
            PG_CHANNEL,
            lambda _connection, _pid, _channel, payload: _heard(route.signals, payload),
        )
        route.signals.wake_all()  # what was signalled while nobody listened: look again
        while True:
            try:
                async with asyncio.timeout(5.0):
                    await route.ready.wait()
            except TimeoutError:
                await connection.execute("SELECT 1")
                continue
            route.ready.clear()
            outbox, route.outbox = route.outbox, {}
            for payload in _pg_payloads(outbox):
                await connection.execute("SELECT pg_notify($1, $2)", PG_CHANNEL, payload)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), timeout=2.0)
