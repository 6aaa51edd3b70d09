"""Putting jobs on a queue: one, or many in one bulk insert; unique jobs.

**Unique jobs.** A job enqueued with a ``unique_key`` is not created when the tenant has a job
with that key whose state is among ``unique_states`` (default: the states that have not ended)
and, when ``unique_period_seconds`` is given, that was created within that many seconds; the
enqueue returns that job instead, as a duplicate (:class:`Enqueued`). Which states count is
the enqueuer's choice (``{"available", "scheduled"}`` allows a new job while one runs; all
states and a period of a day make "once a day"), so no index can hold it: the check and the
insert run under a lock of the key instead, held to the end of the transaction — a
transaction-scoped advisory lock of a hash of tenant and key on PostgreSQL, the database's
write lock on SQLite (its writers take turns) — so of any number of concurrent enqueues of
one key, the first commits its job and every other one, waiting on the lock, then sees it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import Boolean, and_, bindparam, exists, func, insert, literal, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import Database, utcnow
from keel.core.errors import ValidationFailed
from keel.core.idempotency import IdempotencyKey, KeyToKeep, kept_row
from keel.core.ids import new_id
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.jobs.models import LIVE_STATES, Job, JobQueue, JobState
from keel.jobs.service.retry import MAX_BACKOFF_SECONDS, Backoff

if TYPE_CHECKING:
    from sqlalchemy import Table

DEFAULT_PRIORITY = 0
DEFAULT_MAX_ATTEMPTS = 20
DEFAULT_TIMEOUT_SECONDS = 300

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")


def validate_name(kind: str, name: str) -> str:
    """A queue or task name: 1-128 letters, digits and ``_.:-``, not starting with
    punctuation other than ``_``."""
    if not _NAME.fullmatch(name):
        raise ValidationFailed(f"{kind} name {name!r} is not 1-128 letters, digits, _.:-.")
    return name


@dataclass(frozen=True)
class NewJob:
    """One job of :func:`enqueue_many`, with :func:`enqueue`'s arguments."""

    queue: str
    task: str
    args: Any = field(default_factory=list)
    priority: int = DEFAULT_PRIORITY
    run_at: datetime | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    tags: Sequence[str] = ()
    unique_key: str | None = None
    unique_period_seconds: float | None = None
    unique_states: Collection[str] | None = None
    #: The job's own retry policy (see :mod:`.retry`): the longest wait between attempts
    #: (default an hour) and the scale of the ``attempt**4`` curve (default 1 s).
    max_backoff_seconds: float | None = None
    backoff_base_seconds: float | None = None


@dataclass(frozen=True)
class Enqueued:
    """What an enqueue did: :attr:`job` was ``created``, or is the job holding the unique key
    already (a duplicate: nothing was created).

    ``record`` is the duplicate's ORM object, or the created job's column values: the API
    answers from those (``schemas.Job`` reads either), and :attr:`job` makes the (transient)
    ORM object of a created job only when asked for — making it on every enqueue was about
    80 µs of CPU, more than building the answer itself."""

    record: Job | Mapping[str, Any]
    created: bool

    @cached_property
    def job(self) -> Job:
        record = self.record
        return record if isinstance(record, Job) else Job(**record)

    @property
    def id(self) -> str:
        record = self.record
        return record.id if isinstance(record, Job) else str(record["id"])


class Taker(Protocol):
    """A fetch waiting in this process, taken by this enqueue (``keel.jobs.signals.Waiting``)."""

    worker_id: str
    lease_seconds: float
    #: The rows of the jobs handed to it (their lease columns set).
    rows: list[dict[str, Any]]


class Handing(Protocol):
    """The fetches waiting in this process that an enqueue may hand its jobs to
    (``keel.jobs.signals.Handing``): a job due now on a queue without pause or limits is
    inserted already leased to one of them (its first attempt running), in the enqueue's
    transaction; the caller answers those fetches once it commits."""

    def offered(self, queue: str) -> bool: ...

    def take(self, queue: str) -> Taker | None: ...


_queues = cast("Table", JobQueue.__table__)
#: The read of queue configurations of :func:`open_queues` and of a claim, built once (the
#: tenant and names are its parameters): both run it on every call, and most queues have no
#: row at all (no pause, no limit), so no ORM object is needed to say so.
QUEUE_CONFIGS = (
    select(
        _queues.c.id,
        _queues.c.name,
        _queues.c.paused,
        _queues.c.concurrency_limit,
        _queues.c.rate_limit_per_second,
    )
    .where(
        _queues.c.tenant_id == bindparam("tenant_id"),
        _queues.c.name.in_(bindparam("names", expanding=True)),
    )
    .execution_options(all_tenants=True)
)


async def open_queues(session: AsyncSession, tenant_id: str, names: Collection[str]) -> set[str]:
    """Those of ``names`` a claim would take from without a lock: not paused, no concurrency
    or rate limit (most queues have no row at all)."""
    configs = (
        await session.execute(QUEUE_CONFIGS, {"tenant_id": tenant_id, "names": list(names)})
    ).all()
    closed = {
        config.name
        for config in configs
        if config.paused
        or config.concurrency_limit is not None
        or config.rate_limit_per_second is not None
    }
    return set(names) - closed


def _hand(row: dict[str, Any], taker: Taker, now: datetime) -> None:
    """Make ``row`` (an available job) the first attempt of ``taker``'s lease, as a claim
    would, and give ``taker`` the row."""
    row.update(
        state=JobState.running,
        attempt=1,
        lease_token=secrets.token_urlsafe(24),
        lease_expires_at=now + timedelta(seconds=taker.lease_seconds),
        worker_id=taker.worker_id,
        attempted_at=now,
    )
    taker.rows.append(row)


async def _hand_rows(
    session: AsyncSession,
    tenant_id: str,
    rows: Sequence[dict[str, Any]],
    handing: Handing | None,
    now: datetime,
) -> int:
    """Hand the available ``rows`` to fetches ``handing`` offers, while there are any and
    their queues are open; how many were handed."""
    if handing is None:
        return 0
    wanted = {row["queue"] for row in rows if row["state"] == JobState.available}
    wanted = {queue for queue in wanted if handing.offered(queue)}
    if not wanted:
        return 0
    opened = await open_queues(session, tenant_id, wanted)
    handed = 0
    for row in rows:
        if row["state"] == JobState.available and row["queue"] in opened:
            taker = handing.take(row["queue"])
            if taker is None:
                opened.discard(row["queue"])
                continue
            _hand(row, taker, now)
            handed += 1
    return handed


def _unique_states(states: Collection[str] | None) -> list[str]:
    if states is None:
        return sorted(LIVE_STATES)
    chosen = set(states)
    unknown = chosen - set(JobState)
    if unknown or not chosen:
        raise ValidationFailed(
            f"unique states are one or more of {', '.join(JobState)}; "
            f"not {', '.join(sorted(unknown)) or 'none'}."
        )
    return sorted(chosen)


def _row(new: NewJob, now: datetime) -> dict[str, Any]:
    """The validated column values of ``new``."""
    validate_name("Queue", new.queue)
    validate_name("Task", new.task)
    if new.max_attempts < 1:
        raise ValidationFailed("max_attempts is at least 1.")
    if new.timeout_seconds < 1:
        raise ValidationFailed("timeout_seconds is at least 1.")
    if new.unique_key is not None and not 0 < len(new.unique_key) <= 200:
        raise ValidationFailed("A unique key is 1-200 characters.")
    if new.unique_key is None and (
        new.unique_period_seconds is not None or new.unique_states is not None
    ):
        raise ValidationFailed("A unique period or unique states need a unique key.")
    if new.unique_period_seconds is not None and new.unique_period_seconds <= 0:
        raise ValidationFailed("A unique period is a positive number of seconds.")
    run_at = new.run_at or now
    if run_at.tzinfo is None:
        raise ValidationFailed("run_at must be timezone-aware.")
    backoff = None
    if new.max_backoff_seconds is not None or new.backoff_base_seconds is not None:
        backoff = Backoff(
            base_seconds=new.backoff_base_seconds or 1.0,
            max_seconds=new.max_backoff_seconds or MAX_BACKOFF_SECONDS,
        )
    return {
        "id": new_id(),
        "queue": new.queue,
        "task": new.task,
        "args": list(new.args) if isinstance(new.args, tuple) else new.args,
        "priority": new.priority,
        "state": JobState.scheduled if run_at > now else JobState.available,
        "run_at": run_at,
        "attempt": 0,
        "max_attempts": new.max_attempts,
        "timeout_seconds": new.timeout_seconds,
        "tags": list(new.tags),
        "unique_key": new.unique_key,
        "backoff": backoff.to_json() if backoff else None,
        "errors": [],
        "created_at": now,
        # Set when the job is handed to a waiting fetch (:func:`_hand`); every row has the
        # same columns, so a batch stays one insert.
        "lease_token": None,
        "lease_expires_at": None,
        "worker_id": None,
        "attempted_at": None,
    }


#: The insert of one job; every row has the same columns (:func:`_row` and ``tenant_id``).
_INSERT_JOB = insert(cast("Table", Job.__table__))


def _key_lock_id(tenant_id: str, unique_key: str) -> int:
    """A signed 64-bit number for ``pg_advisory_xact_lock``, from tenant and key."""
    digest = hashlib.blake2b(f"{tenant_id}\0{unique_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock_unique_key(session: AsyncSession, tenant_id: str, unique_key: str) -> None:
    """Hold the lock of ``unique_key`` until the transaction ends (see the module's text)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"),
            {"key": _key_lock_id(tenant_id, unique_key)},
        )
    else:
        await hold_write_lock(session)


async def _holder_of_key(
    session: AsyncSession, new: NewJob, states: list[str], now: datetime
) -> Job | None:
    query = select(Job).where(Job.unique_key == new.unique_key, Job.state.in_(states))
    if new.unique_period_seconds is not None:
        query = query.where(Job.created_at >= now - timedelta(seconds=new.unique_period_seconds))
    return await session.scalar(
        query.order_by(Job.created_at.desc()).limit(1).execution_options(populate_existing=True)
    )


async def enqueue_one(
    session: AsyncSession, tenant_id: str, new: NewJob, handing: Handing | None = None
) -> Enqueued:
    """:func:`enqueue` of a :class:`NewJob`; handed to a waiting fetch when ``handing``
    offers one (see :class:`Handing`)."""
    bind_tenant(session, tenant_id)
    now = utcnow()
    row = _row(new, now)
    if new.unique_key is not None:
        states = _unique_states(new.unique_states)
        await lock_unique_key(session, tenant_id, new.unique_key)
        holder = await _holder_of_key(session, new, states, now)
        if holder is not None:
            return Enqueued(holder, created=False)
    await _hand_rows(session, tenant_id, [row], handing, now)
    # A Core insert: the hottest write of the service, and nothing in the unit of work needs
    # the row as an ORM object (the returned one is transient, for the answer). One statement
    # built once, the row as its parameters: ``.values(**row)`` would build and coerce a new
    # statement, and compute its cache key, on every call.
    await session.execute(_INSERT_JOB, {**row, "tenant_id": tenant_id})
    return Enqueued({**row, "tenant_id": tenant_id}, created=True)


def _at_once_statement(*, keeps_key: bool) -> Any:
    """:func:`enqueue_at_once`'s statement: the job's insert, refused when it is ``handed``
    and its queue is closed to hand-offs (:func:`open_queues`' test, on the same row), and
    the insert of the key's row for each job inserted; it answers how many jobs it inserted.
    Every value is a parameter (the job's columns by name, the key's as ``key_<column>``)."""
    jobs = cast("Table", Job.__table__)
    columns = [*_row(NewJob("q", "t"), utcnow()), "tenant_id"]
    closed = select(literal(1)).where(
        _queues.c.tenant_id == bindparam("tenant_id"),
        _queues.c.name == bindparam("queue"),
        or_(
            _queues.c.paused,
            _queues.c.concurrency_limit.is_not(None),
            _queues.c.rate_limit_per_second.is_not(None),
        ),
    )
    values = select(*(bindparam(name, type_=jobs.c[name].type) for name in columns)).where(
        ~and_(bindparam("handed", type_=Boolean()), exists(closed))
    )
    job = insert(jobs).from_select(columns, values).returning(jobs.c.id).cte("job")
    statement = select(func.count()).select_from(job)
    if keeps_key:
        keys = cast("Table", IdempotencyKey.__table__)
        names = list(kept_row("t", KeyToKeep("s", "k", "h"), 201, None))
        kept = select(*(bindparam(f"key_{name}", type_=keys.c[name].type) for name in names))
        statement = statement.add_cte(
            insert(keys).from_select(names, kept.select_from(job)).returning(keys.c.key).cte("kept")
        )
    return statement


#: :func:`enqueue_at_once`'s statements, built once, without and with a key to keep.
_AT_ONCE = {keeps: _at_once_statement(keeps_key=keeps) for keeps in (False, True)}


async def enqueue_at_once(
    database: Database,
    tenant_id: str,
    new: NewJob,
    handing: Handing | None,
    answer: Callable[[Enqueued], Any],
    key: KeyToKeep | None = None,
) -> tuple[Enqueued, Any] | None:
    """On PostgreSQL, a job without a unique key in one statement outside any transaction
    (its own, committed when it returns): one round trip, where a unit of work takes five
    (``BEGIN``, the queue's configuration, the job, the key, ``COMMIT``). The job is handed
    to a fetch ``handing`` offers, as :func:`enqueue_one` would; ``answer(enqueued)`` is
    the document kept under ``key`` (status 201), and is returned with it.

    ``None`` when nothing was written: the job was to be handed and its queue is closed to
    hand-offs (paused, limited); the caller then enqueues in a unit of work. A key kept
    already raises ``IntegrityError`` (nothing written either). Unlike this package's other
    functions it takes no session: the statement is its own transaction, and the caller
    hands the taken fetches their job (or abandons them) once it returns."""
    now = utcnow()
    row = _row(new, now)
    taker = None
    if handing is not None and row["state"] == JobState.available and handing.offered(new.queue):
        taker = handing.take(new.queue)
        if taker is not None:
            _hand(row, taker, now)
    enqueued = Enqueued({**row, "tenant_id": tenant_id}, created=True)
    document = answer(enqueued)
    parameters = {**row, "tenant_id": tenant_id, "handed": taker is not None}
    if key is not None:
        kept = kept_row(tenant_id, key, 201, document)
        parameters.update({f"key_{name}": value for name, value in kept.items()})
    async with database.engine.connect() as connection:
        alone = await connection.execution_options(isolation_level="AUTOCOMMIT")
        inserted = await alone.scalar(_AT_ONCE[key is not None], parameters)
    return (enqueued, document) if inserted else None


async def enqueue(
    session: AsyncSession,
    tenant_id: str,
    queue: str,
    task: str,
    args: Any = (),
    *,
    priority: int = DEFAULT_PRIORITY,
    run_at: datetime | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    tags: Sequence[str] = (),
    unique_key: str | None = None,
    unique_period_seconds: float | None = None,
    unique_states: Collection[str] | None = None,
    max_backoff_seconds: float | None = None,
    backoff_base_seconds: float | None = None,
) -> Enqueued:
    """A new job (``scheduled`` when ``run_at`` is in the future, else ``available``), or,
    with a ``unique_key`` another counted job holds, that job as a duplicate."""
    new = NewJob(
        queue,
        task,
        args,
        priority,
        run_at,
        max_attempts,
        timeout_seconds,
        tags,
        unique_key,
        unique_period_seconds,
        unique_states,
        max_backoff_seconds,
        backoff_base_seconds,
    )
    return await enqueue_one(session, tenant_id, new)


async def enqueue_many(
    session: AsyncSession, tenant_id: str, jobs: Sequence[NewJob | Mapping[str, Any]]
) -> list[str]:
    """Enqueue ``jobs`` and return their ids in order (:func:`enqueue_batch`, ids only)."""
    return [entry.id for entry in await enqueue_batch(session, tenant_id, jobs)]


@dataclass(frozen=True)
class BatchEntry:
    """A job of :func:`enqueue_batch`: its id, and whether its unique key named a live job
    (``duplicate``: the id is that job's)."""

    id: str
    duplicate: bool


async def enqueue_batch(
    session: AsyncSession,
    tenant_id: str,
    jobs: Sequence[NewJob | Mapping[str, Any]],
    handing: Handing | None = None,
) -> list[BatchEntry]:
    """Enqueue ``jobs``, in order. All are validated before any is written; jobs without a
    unique key go in one bulk insert (10,000 take well under a second on SQLite); one with a
    key is enqueued as :func:`enqueue` does, so its id may be the existing job's. Jobs without
    a unique key may be handed to fetches ``handing`` offers (see :class:`Handing`), and so may
    one with a key that creates its job."""
    bind_tenant(session, tenant_id)
    now = utcnow()
    news = [job if isinstance(job, NewJob) else NewJob(**job) for job in jobs]
    rows = [_row(new, now) for new in news]  # validate all before writing any
    for new in news:
        if new.unique_key is not None:
            _unique_states(new.unique_states)
    entries: list[BatchEntry] = []
    plain: list[dict[str, Any]] = []
    for new, row in zip(news, rows, strict=True):
        if new.unique_key is None:
            plain.append({**row, "tenant_id": tenant_id})
            entries.append(BatchEntry(row["id"], duplicate=False))
        else:
            enqueued = await enqueue_one(session, tenant_id, new, handing)
            entries.append(BatchEntry(enqueued.id, duplicate=not enqueued.created))
    if plain:
        await _hand_rows(session, tenant_id, plain, handing, now)
        await session.execute(insert(Job), plain)
    return entries
