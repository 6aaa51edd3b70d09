"""Change streams: what changed, kept in order, so a subscriber can resume where it left off.

A service records a change with :func:`record_change` in the same transaction as the change
itself; after commit it is published on the broadcast (in-process or Redis) on
``changes.<tenant_id>.<stream>`` as ``{seq, stream, subject, data}``. Subscribers read
Server-Sent Events (:func:`change_stream_response`): first what they missed since
``Last-Event-ID`` (from this table), then live events. Events older than
``KEEL_CHANGES__RETENTION_DAYS`` are pruned; a resume point older than what is kept gets an
``event: reset`` (reload everything). While a stream is open its caller is checked again
(:class:`CallerChangeFilter`): a revoked credential or a lost permission ends it.

Wire format of one event::

    id: 42
    event: secrets
    data: {"seq": 42, "stream": "secrets", "subject": "secret/apps/db", "data": {...}}

The first event of every connection is ``ready`` (or ``reset``) carrying the position the
stream starts from, so a client that reconnects before any change resumes without a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import JSON, BigInteger, Index, Integer, String, delete, event, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapped, Session, mapped_column
from starlette.requests import Request
from starlette.responses import StreamingResponse

from keel.core.audit import Actor, record_event_now
from keel.core.broadcast import Broadcast, InMemoryBroadcast, MessagesLost, Subscription
from keel.core.db import Base, Database, UTCDateTime, utcnow
from keel.core.errors import BadRequest
from keel.core.logging import get_logger
from keel.core.outages import Outcome, note_outage
from keel.core.tenancy import ALL_TENANTS_OPTION, TenantScoped, bind_tenant, bound_tenant
from keel_client.auth import Principal

if TYPE_CHECKING:
    from keel.core.context import AppContext

log = get_logger(__name__)

STREAM_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_SUBJECT_LENGTH = 600
#: Stored events one replay query reads at most.
REPLAY_PAGE_SIZE = 500
#: Pruning runs this often (the retention itself is ``KEEL_CHANGES__RETENTION_DAYS``).
PRUNE_INTERVAL_SECONDS = 3600.0
#: How often a stream reads the table while the broadcast may be dropping events.
POLL_WHILE_UNRELIABLE_SECONDS = 1.0
#: How often a stream reads the table when the broadcast is this process's own: changes
#: committed by another process (``keel serve --workers``, a CLI command) wake nobody here.
POLL_LOCAL_BROADCAST_SECONDS = 1.0
#: Suggested to clients as the SSE ``retry:`` (milliseconds).
CLIENT_RETRY_MS = 2000


class ChangeEvent(TenantScoped, Base):
    """One change of one stream (``secrets``, ``config``, ``flags``, ...) of a tenant."""

    __tablename__ = "change_events"
    __table_args__ = (Index("ix_change_events_stream", "tenant_id", "stream", "seq"),)

    #: Increasing over the whole table: the SSE event id.
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    stream: Mapped[str] = mapped_column(String(32))
    #: What changed, e.g. ``secret/apps/billing`` (never a value).
    subject: Mapped[str] = mapped_column(String(600))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


@dataclass(frozen=True)
class Change:
    """A committed change as subscribers receive it."""

    seq: int
    stream: str
    subject: str
    data: dict[str, Any]

    def message(self) -> dict[str, Any]:
        return {"seq": self.seq, "stream": self.stream, "subject": self.subject, "data": self.data}


def change_channel(tenant_id: str, stream: str) -> str:
    """The broadcast channel of a tenant's stream."""
    return f"changes.{tenant_id}.{stream}"


# -- recording ------------------------------------------------------------------------------

_PENDING = "keel.changes.pending"
_COMMITTED = "keel.changes.committed"


def record_change(
    session: Any, tenant_id: str, stream: str, subject: str, data: Mapping[str, Any]
) -> None:
    """Keep a change on ``session``: stored when, and only if, the session commits, then
    published on the broadcast. ``data`` describes the change (a version, an operation),
    never a secret value: it is stored in the clear and sent to every subscriber."""
    if not STREAM_PATTERN.fullmatch(stream):
        raise ValueError(f"{stream!r} is not a stream name")
    if not subject or len(subject) > MAX_SUBJECT_LENGTH:
        raise ValueError(f"a change's subject is 1 to {MAX_SUBJECT_LENGTH} characters")
    if bound_tenant(session) not in (None, tenant_id):
        raise ValueError("a change must belong to the session's tenant")
    # JSON now, so a value the table cannot store fails the caller, not the commit.
    document = json.loads(json.dumps(dict(data)))
    sync_session = session.sync_session if hasattr(session, "sync_session") else session
    sync_session.info.setdefault(_PENDING, []).append(
        {"tenant_id": tenant_id, "stream": stream, "subject": subject, "data": document}
    )


def _tenant_lock_key(tenant_id: str) -> int:
    digest = hashlib.blake2b(f"keel.changes:{tenant_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@event.listens_for(Session, "before_commit")
def _store_pending_changes(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # Subscribers resume from the highest seq they saw, so within a tenant the seqs must
        # become visible in order. A sequence hands them out at insert, not at commit; this
        # lock (held until commit, taken right before it) makes commit order seq order.
        # SQLite needs none: it has one writer at a time.
        for tenant_id in sorted({row["tenant_id"] for row in pending}):
            connection.execute(func.pg_advisory_xact_lock(_tenant_lock_key(tenant_id)).select())
    now = utcnow()
    committed = []
    for row in pending:
        seq = connection.execute(
            insert(ChangeEvent).values(**row, created_at=now).returning(ChangeEvent.seq)
        ).scalar_one()
        committed.append(
            (row["tenant_id"], Change(seq, row["stream"], row["subject"], row["data"]))
        )
    session.info[_COMMITTED] = (connection.engine, committed)


@event.listens_for(Session, "after_commit")
def _publish_committed_changes(session: Session) -> None:
    committed = session.info.pop(_COMMITTED, None)
    if committed is None:
        return
    engine, changes = committed
    broadcast = _publishers.get(engine)
    if broadcast is None:
        return  # no process-wide broadcast here (a CLI command): subscribers replay later
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for tenant_id, change in changes:
        task = loop.create_task(_publish(broadcast, tenant_id, change))
        _publishing.add(task)
        task.add_done_callback(_publishing.discard)


@event.listens_for(Session, "after_rollback")
def _forget_pending_changes(session: Session) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop(_COMMITTED, None)


async def _publish(broadcast: Broadcast, tenant_id: str, change: Change) -> None:
    try:
        await broadcast.publish(change_channel(tenant_id, change.stream), change.message())
    except Exception as error:  # fail open: subscribers still find the change in the table
        note_outage("redis", "change-publish", error, outcome=Outcome.fail_open)


#: The broadcast of each engine's process, installed at start-up.
_publishers: weakref.WeakKeyDictionary[Any, Broadcast] = weakref.WeakKeyDictionary()
_publishing: set[asyncio.Task[None]] = set()


def use_change_publisher(engine: AsyncEngine, broadcast: Broadcast) -> Callable[[], None]:
    """Publish the changes committed on ``engine``'s sessions on ``broadcast``; returns an
    undo."""
    _publishers[engine.sync_engine] = broadcast

    def undo() -> None:
        _publishers.pop(engine.sync_engine, None)

    return undo


# -- reading --------------------------------------------------------------------------------


async def changes_since(
    database: Database,
    tenant_id: str,
    streams: Sequence[str],
    after: int,
    limit: int = REPLAY_PAGE_SIZE,
) -> list[Change]:
    """Stored changes of the tenant's ``streams`` with ``seq > after``, in order."""
    async with database.session() as session:
        bind_tenant(session, tenant_id)
        rows = await session.scalars(
            select(ChangeEvent)
            .where(ChangeEvent.stream.in_(list(streams)), ChangeEvent.seq > after)
            .order_by(ChangeEvent.seq)
            .limit(limit)
        )
        return [Change(row.seq, row.stream, row.subject, dict(row.data)) for row in rows]


_ReadKey = tuple[int, str, tuple[str, ...], int, int]
#: The read in flight for each question, with the notification count when it began.
_reading: dict[_ReadKey, tuple[int, asyncio.Task[list[Change]]]] = {}
#: Notifications delivered to streams of this process so far (see ``_listen``).
_notified = 0


async def _changes_since_shared(
    database: Database,
    tenant_id: str,
    streams: Sequence[str],
    after: int,
    limit: int,
    *,
    told: int = 0,
) -> list[Change]:
    """:func:`changes_since`, one query for every stream of this process asking the same at
    the same time: a change wakes all of a tenant's watchers at once, at the same position,
    and a hundred of them would otherwise read the same rows a hundred times.

    A stream joins a read in flight only if that read began after the notification it is
    answering (``told``, a value of ``_notified``): one that began before may have missed
    the change the notification announces, and the stream would then wait for its next
    poll, a second later.
    """
    key = (id(database), tenant_id, tuple(streams), after, limit)
    entry = _reading.get(key)
    if entry is None or entry[0] < told:
        task = asyncio.get_running_loop().create_task(
            changes_since(database, tenant_id, streams, after, limit)
        )
        _reading[key] = (_notified, task)

        def forget(done: asyncio.Task[list[Change]]) -> None:
            if _reading.get(key, (0, None))[1] is done:
                del _reading[key]

        task.add_done_callback(forget)
    else:
        task = entry[1]
    # Shielded: one watcher going away must not cancel the read the others wait for.
    return list(await asyncio.shield(task))


async def kept_range(database: Database) -> tuple[int | None, int | None]:
    """The lowest and highest seq the table keeps (every tenant), ``None`` when empty."""
    async with database.session() as session:
        row = (
            await session.execute(
                select(func.min(ChangeEvent.seq), func.max(ChangeEvent.seq)).execution_options(
                    all_tenants=True
                )
            )
        ).one()
        return row[0], row[1]


def is_resumable(after: int, lowest: int | None, highest: int | None) -> bool:
    """Whether a subscriber that saw everything up to ``after`` can resume from the table.

    Pruning removes a prefix of seqs and keeps the newest event, so an empty table means
    nothing ever happened here. Anything between ``after`` and the lowest kept seq may have
    been pruned (seqs are global, so the gap may as well have held other tenants' events, or
    none: a needless reset is safe, a missed change is not); a resume point past the highest
    seq comes from another database.
    """
    if lowest is None or highest is None:
        return after == 0
    return lowest - 1 <= after <= highest


async def prune_change_events(database: Database, older_than: timedelta) -> int:
    """Delete events older than ``older_than`` (every tenant); returns how many.

    What goes is a prefix of seqs, up to the newest event older than the cutoff, so what is
    kept is everything after one seq (:func:`is_resumable` relies on it). The newest event
    always stays: it tells a later resume point from a stale one.
    """
    cutoff = utcnow() - older_than
    every_tenant = {ALL_TENANTS_OPTION: True}
    async with database.session() as session:
        newest = await session.scalar(
            select(func.max(ChangeEvent.seq)).execution_options(**every_tenant)
        )
        through = await session.scalar(
            select(func.max(ChangeEvent.seq))
            .where(ChangeEvent.created_at < cutoff)
            .execution_options(**every_tenant)
        )
        if newest is None or through is None:
            return 0
        result: Any = await session.execute(
            delete(ChangeEvent)
            .where(ChangeEvent.seq <= min(through, newest - 1))
            .execution_options(**every_tenant)
        )
        return int(result.rowcount or 0)


async def prune_change_events_periodically(context: AppContext) -> None:
    """Retention of the change streams (``KEEL_CHANGES__RETENTION_DAYS``)."""
    days = context.settings.changes.retention_days
    while True:
        try:
            pruned = await prune_change_events(context.database, timedelta(days=days))
            if pruned:
                log.info("changes.pruned", events=pruned)
        except Exception:  # a failed round must not end the loop
            log.exception("changes.prune.failed")
        await asyncio.sleep(PRUNE_INTERVAL_SECONDS)


# -- Server-Sent Events ---------------------------------------------------------------------


class StreamClosed(Exception):
    """Raised by a :data:`ChangeFilter` to end a stream (the caller lost its access)."""


#: Keeps the changes a subscriber may see. Called with each batch about to be sent, and with
#: an empty batch at each heartbeat so it can re-check the caller (raise
#: :class:`StreamClosed` to end the stream).
ChangeFilter = Callable[[Sequence[Change]], Awaitable[Sequence[Change]]]


async def _everything(changes: Sequence[Change]) -> Sequence[Change]:
    return changes


def sse_event(event: str, data: Mapping[str, Any], event_id: int | None = None) -> str:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    # One line: compact JSON escapes every newline.
    lines.append("data: " + json.dumps(dict(data), separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


def resume_point(request: Request) -> int | None:
    """``Last-Event-ID`` (what a reconnecting EventSource sends) or ``?since=``; ``None``
    when neither is given (start from now)."""
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        raw = request.query_params.get("since")
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        raise BadRequest("Last-Event-ID and since are the id of an event: a non-negative integer")
    return int(raw)


@dataclass
class _Wakeup:
    """What the broadcast told a stream since it last read the table."""

    event: asyncio.Event
    highest_seen: int = 0
    lost: bool = False
    #: ``_notified`` when this stream was last told something: a read to answer it must
    #: have begun after that.
    told: int = 0
    #: Between a loss and the next event delivered: the broadcast may still be dropping
    #: events (Redis reconnecting), so the stream polls the table meanwhile.
    unreliable: bool = False


async def _listen(subscription: Subscription, wakeup: _Wakeup) -> None:
    global _notified
    while True:
        try:
            published = await subscription.__anext__()
        except MessagesLost:
            wakeup.lost = wakeup.unreliable = True
        else:
            wakeup.unreliable = False
            seq = published.data.get("seq")
            if isinstance(seq, int):
                wakeup.highest_seen = max(wakeup.highest_seen, seq)
        _notified += 1
        wakeup.told = _notified
        wakeup.event.set()


async def change_events(
    database: Database,
    broadcast: Broadcast,
    tenant_id: str,
    streams: Sequence[str],
    after: int | None,
    *,
    allow: ChangeFilter = _everything,
    heartbeat_seconds: float = 15.0,
    page_size: int = REPLAY_PAGE_SIZE,
) -> AsyncIterator[str]:
    """The SSE text of a tenant's ``streams`` from ``after`` (``None``: from now) on.

    Subscribes first, then reads the table, so nothing committed in between is missed. A
    published event only wakes the stream, which then reads the table from its last seq:
    replicas publish in the order their commits end, not in seq order, and a stream that
    sent a live seq directly could skip an earlier one published late. The table has them
    in order (see ``_store_pending_changes``), and reading it also recovers what the
    broadcast dropped (``MessagesLost``); until the broadcast delivers again, the stream
    reads the table every ``POLL_WHILE_UNRELIABLE_SECONDS``.
    """
    wakeup = _Wakeup(asyncio.Event())
    process_local = isinstance(broadcast, InMemoryBroadcast)
    loop = asyncio.get_running_loop()
    last_beat = loop.time()
    listeners: list[asyncio.Task[None]] = []
    rechecked = False
    try:
        async with AsyncExitStack() as subscriptions:
            for stream in streams:
                subscription = await subscriptions.enter_async_context(
                    broadcast.subscribe(change_channel(tenant_id, stream))
                )
                listeners.append(asyncio.create_task(_listen(subscription, wakeup)))
            lowest, highest = await kept_range(database)
            position = highest or 0
            yield f"retry: {CLIENT_RETRY_MS}\n\n"
            if after is None:
                yield sse_event("ready", {"position": position}, position)
            elif not is_resumable(after, lowest, highest):
                yield sse_event(
                    "reset",
                    {"reason": "the resume point is older than the kept changes; reload"},
                    position,
                )
            else:
                position = after
            while True:
                wakeup.event.clear()
                wakeup.lost = False
                while True:
                    batch = await _changes_since_shared(
                        database, tenant_id, streams, position, page_size, told=wakeup.told
                    )
                    if not batch:
                        break
                    position = batch[-1].seq
                    for change in await allow(batch):
                        yield sse_event(change.stream, change.message(), change.seq)
                    if len(batch) < page_size:
                        break
                # Told of something newer than what was read (a shared read may have started
                # just before it committed): read again at once, once.
                woken = not rechecked and (wakeup.lost or wakeup.highest_seen > position)
                rechecked = woken
                while not woken:
                    beat_in = heartbeat_seconds - (loop.time() - last_beat)
                    poll = (
                        POLL_WHILE_UNRELIABLE_SECONDS
                        if wakeup.unreliable
                        else POLL_LOCAL_BROADCAST_SECONDS
                        if process_local
                        else None
                    )
                    try:
                        async with asyncio.timeout(min(beat_in, poll) if poll else beat_in):
                            await wakeup.event.wait()
                    except TimeoutError:
                        if loop.time() - last_beat >= heartbeat_seconds:
                            await allow(())
                            yield ": keepalive\n\n"
                            last_beat = loop.time()
                            woken = True  # and read the table: a safety net for lost events
                        else:
                            woken = poll is not None
                        continue
                    # Already sent (the replay read it): no need to read the table again.
                    woken = wakeup.lost or wakeup.highest_seen > position
                    rechecked = False
                    wakeup.event.clear()
    except StreamClosed:
        yield sse_event("closed", {"reason": "access to this stream ended"})
    except Exception as error:  # a client reconnects and resumes; no trace leaves the process
        log.warning("changes.stream.failed", error=type(error).__name__)
    finally:
        for listener in listeners:
            listener.cancel()
        for listener in listeners:
            with contextlib.suppress(asyncio.CancelledError):
                await listener


def change_stream_response(
    request: Request,
    tenant_id: str,
    streams: Sequence[str],
    *,
    allow: ChangeFilter = _everything,
) -> StreamingResponse:
    """The ``text/event-stream`` answer of a change stream: resume point from the request,
    database and broadcast from the app. ``BadRequest`` for a malformed resume point."""
    context: AppContext = request.app.state.keel
    after = resume_point(request)
    for stream in streams:
        if not STREAM_PATTERN.fullmatch(stream):
            raise BadRequest(f"{stream!r} is not a stream name")
    return StreamingResponse(
        change_events(
            context.database,
            context.broadcast,
            tenant_id,
            list(streams),
            after,
            allow=allow,
            heartbeat_seconds=context.settings.changes.heartbeat_seconds,
        ),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def audited_change_stream(
    request: Request,
    session: AsyncSession,
    tenant_id: str,
    streams: Sequence[str],
    *,
    since: int | None,
    allow: ChangeFilter,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str,
) -> StreamingResponse:
    """:func:`change_stream_response`, its opening audited as ``action`` with ``since`` (the
    request's :func:`resume_point`). The event is committed before the answer starts: the
    stream outlives the request's unit of work."""
    await record_event_now(
        session,
        tenant_id=tenant_id,
        action=action,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        data={"since": since},
    )
    await session.commit()
    return change_stream_response(request, tenant_id, streams, allow=allow)


class Authenticator(Protocol):
    """What a stream needs of the auth service to check its caller again."""

    async def authenticate(self, session: AsyncSession, credential: str) -> Principal | None: ...


class CallerChangeFilter(ABC):
    """The :data:`ChangeFilter` of one caller's stream: keeps what the caller may see
    (:meth:`visible`) and, every :attr:`recheck_seconds`, authenticates the caller's
    credential again. A credential that stopped working (expired, revoked), a principal of
    another tenant, or :meth:`may_watch` answering no ends the stream (:class:`StreamClosed`).

    A service says what its callers see and may watch::

        class EnvironmentChanges(CallerChangeFilter):
            recheck_seconds = 30.0

            def visible(self, changes):
                return [change for change in changes if change.subject == "production"]

            async def may_watch(self, session, principal):
                return principal.has_permission("flags:production:read")
    """

    #: How often the caller is checked again.
    recheck_seconds: float = 30.0

    def __init__(
        self, request: Request, principal: Principal, auth: Authenticator, credential: str | None
    ) -> None:
        context: AppContext = request.app.state.keel
        self._database = context.database
        self._auth = auth
        self._credential = credential
        self._tenant_id = principal.tenant_id
        self._checked_at = time.monotonic()

    async def __call__(self, changes: Sequence[Change]) -> Sequence[Change]:
        if time.monotonic() - self._checked_at >= self.recheck_seconds:
            await self._recheck()
        return self.visible(changes)

    @abstractmethod
    def visible(self, changes: Sequence[Change]) -> Sequence[Change]:
        """The changes of ``changes`` the caller may see."""

    @abstractmethod
    async def may_watch(self, session: AsyncSession, principal: Principal) -> bool:
        """Whether the caller, authenticated again as ``principal``, may still watch."""

    async def _recheck(self) -> None:
        async with self._database.session() as session:
            principal = (
                await self._auth.authenticate(session, self._credential)
                if self._credential
                else None
            )
            allowed = (
                principal is not None
                and principal.tenant_id == self._tenant_id
                and await self.may_watch(session, principal)
            )
        if not allowed:
            raise StreamClosed()
        self._checked_at = time.monotonic()


class SubjectChanges(CallerChangeFilter):
    """Keeps the changes of one subject (an environment, ``<app>/<env>``), for as long as
    ``permits(principal)`` says the caller may read it."""

    def __init__(
        self,
        request: Request,
        principal: Principal,
        auth: Authenticator,
        credential: str | None,
        *,
        subject: str,
        permits: Callable[[Principal], bool],
    ) -> None:
        super().__init__(request, principal, auth, credential)
        self.subject = subject
        self._permits = permits

    def visible(self, changes: Sequence[Change]) -> Sequence[Change]:
        return [change for change in changes if change.subject == self.subject]

    async def may_watch(self, session: AsyncSession, principal: Principal) -> bool:
        return self._permits(principal)
