"""``Idempotency-Key``: a retried write answers what the first one answered, and does it once.

A client that did not hear the answer to a write (a timeout, a reset, its own crash before
reading it) sends it again with the same ``Idempotency-Key`` header. The first request stores
its answer in the same transaction as its effect, so "the write happened" and "its answer is
kept" commit together; a later request with the key replays the kept answer instead of
writing again. Keys are a tenant's and a scope's (an endpoint such as ``jobs.enqueue``), kept
for :data:`RETENTION` and pruned by the platform's background work.

The same key with a different request (another body) is a client error: 422, never a replay
of an answer to something else. Two concurrent requests with one key: the unique key makes
the second insert fail; its transaction rolls back (its effect with it) and it replays the
first one's answer.

A router runs its write through :func:`idempotent`, which does the following: the write and
:func:`remember_answer` in one unit of work; if that fails on the key (it was seen before),
:func:`kept_answer` in another gives the answer to replay::

    try:
        async with database.session() as session:
            document = ...  # the write
            await remember_answer(session, tenant_id, "jobs.enqueue", key, digest, 201, document)
    except IntegrityError:
        async with database.session() as session:
            kept = await kept_answer(session, tenant_id, "jobs.enqueue", key, digest)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Header
from fastapi.responses import JSONResponse
from sqlalchemy import JSON, ForeignKey, Integer, String, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.errors import Conflict, ValidationFailed
from keel.core.logging import get_logger
from keel.core.tenancy import TenantScoped, bind_tenant

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.ext.asyncio import AsyncSession

    from keel.core.context import AppContext
    from keel.core.db import Database

log = get_logger(__name__)

#: How long a key is remembered (Stripe keeps them 24 hours too).
RETENTION = timedelta(hours=24)
#: An ``Idempotency-Key`` is 1-200 printable characters (a UUID is the usual choice).
MAX_KEY_LENGTH = 200
#: Keys pruned in one statement.
PRUNE_BATCH = 5_000


class IdempotencyKey(TenantScoped, Base):
    """One remembered answer of a write."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), primary_key=True)
    # Keys are a tenant's: the tenant is part of the primary key.
    tenant_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tenants.id", ondelete="RESTRICT"), primary_key=True
    )
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    answer: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


@dataclass(frozen=True)
class KeptAnswer:
    status: int
    document: Any


def check_key(key: str) -> str:
    """``key`` if it is a valid ``Idempotency-Key``; a 422 otherwise."""
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise ValidationFailed(f"An Idempotency-Key is 1-{MAX_KEY_LENGTH} printable characters.")
    return key


def fingerprint(request: Any) -> str:
    """A hash of a request's JSON body (keys sorted), to tell a retry from another request."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def kept_answer(
    session: AsyncSession, tenant_id: str, scope: str, key: str, request_hash: str
) -> KeptAnswer | None:
    """The answer kept for ``key`` (a replay), or None when the key is new.

    A kept key of another request is a 422: the client reused a key for something else.
    """
    bind_tenant(session, tenant_id)
    kept = await session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id,
            IdempotencyKey.scope == scope,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at > utcnow() - RETENTION,
        )
    )
    if kept is None:
        return None
    if kept.request_hash != request_hash:
        raise ValidationFailed(
            "This Idempotency-Key was used for another request; use a new key for a new request."
        )
    return KeptAnswer(kept.status, kept.answer)


async def forget_expired_key(session: AsyncSession, tenant_id: str, scope: str, key: str) -> None:
    """Delete ``key``'s row if it is past :data:`RETENTION` (not yet pruned): the key is new
    again. A row still within it is left alone."""
    bind_tenant(session, tenant_id)
    await session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id,
            IdempotencyKey.scope == scope,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at <= utcnow() - RETENTION,
        )
    )


async def remember_answer(
    session: AsyncSession,
    tenant_id: str,
    scope: str,
    key: str,
    request_hash: str,
    status: int,
    document: Any,
) -> None:
    """Keep ``document`` as the answer to ``key``, in the unit of work (stored if, and only
    if, it commits). A key kept already fails here, on the primary key (``IntegrityError``);
    a concurrent request's key makes this wait for that request's commit, then fail."""
    await session.execute(
        _INSERT_KEY, kept_row(tenant_id, KeyToKeep(scope, key, request_hash), status, document)
    )


@dataclass(frozen=True)
class KeyToKeep:
    """A key whose answer a write keeps itself (the jobs enqueue's one-statement path):
    what :func:`idempotent` would pass :func:`remember_answer`."""

    scope: str
    key: str
    request_hash: str

    @classmethod
    def of(cls, scope: str, key: str, request: Any) -> KeyToKeep:
        """The key of ``request`` (its JSON body), checked as :func:`idempotent` checks it."""
        return cls(scope, check_key(key), fingerprint(request))


def kept_row(tenant_id: str, key: KeyToKeep, status: int, document: Any) -> dict[str, Any]:
    """The column values of ``key``'s row keeping ``document``."""
    return {
        "tenant_id": tenant_id,
        "scope": key.scope,
        "key": key.key,
        "request_hash": key.request_hash,
        "status": status,
        "answer": document,
        "created_at": utcnow(),
    }


#: :func:`remember_answer`'s insert, built once (the row is its parameters: no statement to
#: build, coerce and compute a cache key of on every call).
_INSERT_KEY = insert(cast("Table", IdempotencyKey.__table__))


async def prune_idempotency_keys(database: Database, *, now: datetime | None = None) -> int:
    """Forget keys older than :data:`RETENTION`, a batch at a time (by age, so no statement
    holds its locks for long); returns how many."""
    cutoff = (now or utcnow()) - RETENTION
    pruned = 0
    while True:
        async with database.session() as session:
            edge = await session.scalar(
                select(IdempotencyKey.created_at)
                .where(IdempotencyKey.created_at < cutoff)
                .order_by(IdempotencyKey.created_at)
                .offset(PRUNE_BATCH - 1)
                .limit(1)
                .execution_options(all_tenants=True)
            )
            last_batch = edge is None
            result = await session.execute(
                delete(IdempotencyKey)
                .where(
                    IdempotencyKey.created_at < cutoff
                    if edge is None
                    else IdempotencyKey.created_at <= edge
                )
                .execution_options(all_tenants=True)
            )
        pruned += int(getattr(result, "rowcount", 0) or 0)
        if last_batch:
            return pruned


#: How often the platform prunes old keys.
PRUNE_INTERVAL_SECONDS = 3600.0


async def prune_idempotency_keys_periodically(context: AppContext) -> None:
    """The platform's retention of idempotency keys (:data:`RETENTION`), hourly."""
    while True:
        try:
            pruned = await prune_idempotency_keys(context.database)
            if pruned:
                log.info("idempotency.pruned", keys=pruned)
        except Exception:  # a failed round must not end the loop
            log.exception("idempotency.prune.failed")
        await asyncio.sleep(PRUNE_INTERVAL_SECONDS)


#: The request header a creating POST takes (FastAPI parameter type).
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Send the same key when retrying: the first request's answer is replayed.",
    ),
]

#: A write run once per key: ``write(session) -> (status, document)``.
IdempotentWrite = Callable[["AsyncSession"], Awaitable[tuple[int, Any]]]


async def idempotent(
    database: Database,
    tenant_id: str,
    scope: str,
    key: str | None,
    request: Any,
    write: IdempotentWrite,
) -> JSONResponse:
    """Run ``write`` in one unit of work, once per ``Idempotency-Key`` (none: every time): a
    retry with the key replays the first answer; the key with another ``request`` is 422."""
    if key is None:
        async with database.session() as session:
            status, document = await write(session)
        return JSONResponse(document, status_code=status)
    check_key(key)
    request_hash = fingerprint(request)
    for _ in range(3):
        # The write goes first and the key's row with it: a new key (the usual case) costs
        # no read. A key seen before fails on the key's primary key, and the write is rolled
        # back with it; its first answer is then replayed.
        try:
            async with database.session() as session:
                status, document = await write(session)
                await remember_answer(
                    session, tenant_id, scope, key, request_hash, status, document
                )
            return JSONResponse(document, status_code=status)
        except IntegrityError:
            async with database.session() as session:
                kept = await kept_answer(session, tenant_id, scope, key, request_hash)
                if kept is not None:
                    return JSONResponse(kept.document, status_code=kept.status)
                await forget_expired_key(session, tenant_id, scope, key)
    raise Conflict("A request with this Idempotency-Key is in progress; retry.")
