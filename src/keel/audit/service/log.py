"""The audit log of a process: :class:`AuditLog`, which sequences events into each tenant's
Merkle tree and signs its heads, and the one object the API, the CLI and the jobs call.

Events arrive two ways. Keel's own services record through :func:`keel.core.audit.record_event`,
which stores them in the outbox in the transaction of the change they record; the sequencer
(:meth:`AuditLog.sequence_outbox`) moves them into the log shortly after (woken by the commit,
and every second in case a wake-up was missed). Services of the fleet append over HTTP
(:meth:`AuditLog.append`), which sequences at once and answers with receipts.

Sequencing a batch, under a per-tenant lock: give each new event the next leaf index, store its
leaf hash and document, store the perfect-subtree nodes it completes, and sign a tree head
for the new size. Nothing already stored is ever changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit import schemas
from keel.audit.models import AuditEvent, AuditNode, AuditPayload, AuditTreeHead
from keel.audit.service import catalogue, heads, proofs, reads, storage
from keel.audit.service.reads import EventFilter, StoredEvent
from keel.audit.service.tree import (
    Leaf,
    Node,
    Receipt,
    fresh_leaves,
    frontier_of,
    new_leaf,
    plan_append,
    tree_root,
)
from keel.core.audit import ActionSpec, Actor, AuditOutbox
from keel.core.context import ResourceKey
from keel.core.crypto import Keyring
from keel.core.db import Base, utcnow
from keel.core.sqlite import OneHopConnection
from keel.core.tenancy import bind_tenant
from keel_client.audit import TreeHead, canonical_json

SessionFactory = Callable[[], AbstractAsyncContextManager[AsyncSession]]

#: Events sequenced in one transaction at most.
SEQUENCE_BATCH = 2_000
#: After a conflict (another process appended to the tenant's log), appends take the lock and
#: read the tree for this long instead of trying the remembered frontier: with two processes
#: appending, that frontier is stale at nearly every batch, and each failed try on PostgreSQL
#: waits for the other's commit before it fails (2 workers: 121 tokens/s against 295).
CONTENDED_SECONDS = 5.0
#: Where a unit of work keeps the frontier it leaves, taken up once it has committed.
_FRONTIER = "keel.audit.frontier"


class AuditLog:
    """The tamper-evident log of every tenant, as one process runs it.

    It remembers what makes appends cheap (each tenant's frontier as this process last
    committed it, the signing key) and serialises each tenant's sequencing in this process;
    the database's locks do so across processes. Reads, proofs and the catalogue take the
    caller's session; appending and sequencing open their own (``sessions``).

    Example::

        audit = AuditLog(context.keyring, context.database.session)
        (receipt,) = await audit.append(tenant_id, [document])
        async with context.database.session() as session:
            proof = await audit.inclusion_proof(session, tenant_id, receipt.leaf_index, 1)
    """

    def __init__(self, keyring: Keyring, sessions: SessionFactory) -> None:
        self.keyring = keyring
        self.sessions = sessions
        self.signer = heads.HeadSigner(keyring)
        self._tenant_locks: dict[str, asyncio.Lock] = {}
        #: Each tenant's tree size and frontier nodes as this process last committed them:
        #: an append finding the tree at that size (leaves never change) skips reading them.
        self._frontiers: dict[str, tuple[int, dict[Node, bytes]]] = {}
        #: When an append of each tenant last met a conflict: another process appends too,
        #: so for a while appends lock and read (see CONTENDED_SECONDS).
        self._contended: dict[str, float] = {}

    # -- the catalogue ------------------------------------------------------------------------

    async def action(self, session: AsyncSession, tenant_id: str, name: str) -> ActionSpec:
        """The catalogue entry of ``name`` for this tenant, or a validation error."""
        return await catalogue.action(session, tenant_id, name)

    async def register_action(
        self, session: AsyncSession, tenant_id: str, spec: ActionSpec, *, actor: Actor
    ) -> tuple[ActionSpec, bool]:
        """Create or update a tenant's action (recorded when new or changed); Keel's own
        names are reserved."""
        return await catalogue.register_action(session, tenant_id, spec, actor=actor)

    async def tenant_actions(self, session: AsyncSession, tenant_id: str) -> list[ActionSpec]:
        """The actions the tenant registered, by name."""
        return await catalogue.tenant_actions(session, tenant_id)

    # -- appending ----------------------------------------------------------------------------

    async def append_events(
        self, session: AsyncSession, tenant_id: str, events: Sequence[schemas.EventIn]
    ) -> tuple[list[Receipt], TreeHead]:
        """Append events sent over the API, checked against the catalogue, all or none:
        their receipts and the signed head that covers them. A retry must repeat the events
        as they were sent (before redaction or defaults)."""
        documents = await catalogue.appended_documents(session, tenant_id, events)
        return await self.append_documents(session, tenant_id, documents, request_hashes(events))

    async def append_documents(
        self,
        session: AsyncSession,
        tenant_id: str,
        documents: Sequence[dict[str, Any]],
        hashes: Sequence[bytes],
    ) -> tuple[list[Receipt], TreeHead]:
        """:meth:`append` for a request whose unit of work is ``session``: the receipts and
        the latest signed head, which covers them."""
        # The unit of work ends first: a request holds one connection at a time, and the
        # log takes its own.
        await session.commit()
        receipts = await self.append(tenant_id, documents, hashes)
        head = await self.latest_head(session, tenant_id)
        assert head is not None
        return receipts, head

    async def append(
        self,
        tenant_id: str,
        documents: Sequence[dict[str, Any]],
        request_hashes: Sequence[bytes] | None = None,
        *,
        sign: bool = True,
    ) -> list[Receipt]:
        """Append validated event documents now; idempotent on each document's ``id``.

        An id already in the log sent with the same content (``request_hashes``: a hash of
        each event as the appender sent it; default, of its document) answers its first
        receipt; with other content it is a conflict, and nothing of the batch is stored.
        With ``sign=False`` no head is signed for the new size: the caller arranges one soon
        (see :class:`keel.audit.service.writer.GroupWriter`).
        """
        hashes: Sequence[bytes | None] = request_hashes or [None] * len(documents)
        leaves = [
            new_leaf(document, digest) for document, digest in zip(documents, hashes, strict=True)
        ]
        for attempt in range(3):
            try:
                async with self._tenant_lock(tenant_id), self.sessions() as session:
                    # Optimistic first: new ids are the rule, and the unique key on the
                    # event id catches a repeat, which the next attempt looks up.
                    receipts = await self._append(
                        session, tenant_id, leaves, look_up=attempt > 0, sign=sign
                    )
                self._remember_frontier(session)
                return receipts
            except Exception as error:
                # A repeated id, or another process took the same index (which two appends
                # on one stale frontier may be told as a deadlock: their statements insert
                # the tables' rows in no set order).
                if not storage.lost_a_race(error):
                    raise
                self._contended[tenant_id] = time.monotonic()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _append(
        self,
        session: AsyncSession,
        tenant_id: str,
        leaves: list[Leaf],
        *,
        look_up: bool,
        sign: bool = True,
    ) -> list[Receipt]:
        ids = [leaf.event_id for leaf in leaves]
        receipts = None
        contended = time.monotonic() - self._contended.get(tenant_id, -CONTENDED_SECONDS)
        if not look_up and contended >= CONTENDED_SECONDS:
            receipts = await self._append_on_frontier(session, tenant_id, leaves, sign=sign)
        if receipts is not None:
            by_id = {receipt.event_id: receipt for receipt in receipts}
            return [by_id[event_id] for event_id in ids]
        await storage.lock_tenant_log(session, tenant_id)
        known = await self._known(session, ids) if look_up else {}
        fresh = fresh_leaves(
            leaves, {event_id: request for event_id, (_, _, request) in known.items()}
        )
        receipts = await self._sequence(session, tenant_id, fresh, sign=sign)
        by_id = {receipt.event_id: receipt for receipt in receipts}
        for event_id, (index, digest, _) in known.items():
            by_id[event_id] = Receipt(event_id, index, digest)
        return [by_id[event_id] for event_id in ids]

    async def _append_on_frontier(
        self, session: AsyncSession, tenant_id: str, leaves: list[Leaf], *, sign: bool
    ) -> list[Receipt] | None:
        """The append planned on the frontier this process last committed, without reading
        the tree: the receipts, or None (nothing written) where no frontier is known.

        The leaf index is the primary key, so a frontier gone stale (another process appended
        since) cannot store a wrong tree: the first leaf's index is taken, the insert fails,
        and :meth:`append` retries on the general path, which locks and reads. On PostgreSQL
        that saves the advisory lock and the size query, two of seven round trips. On SQLite
        the whole append is one call on the connection's thread: through SQLAlchemy and
        aiosqlite each of its statements was a hand-over to SQLite's thread and back, more
        than all the rest of a secret read; that call takes the write lock and checks the
        size first, so a stale frontier falls back inside the same transaction.
        """
        known = self._frontiers.get(tenant_id)
        if known is None:
            return None
        size, frontier = known
        plan = plan_append(tenant_id, size, frontier, fresh_leaves(leaves, {}), utcnow())
        if not plan.receipts:
            return None
        if sign:
            await self.signer.signing_key(session)
        rows: list[tuple[type[Base], list[dict[str, Any]]]] = [
            (AuditEvent, plan.events),
            (AuditPayload, plan.payloads),
            (AuditNode, plan.nodes),
        ]
        if sign:
            rows.append(
                (AuditTreeHead, [self.signer.head_row(tenant_id, plan.new_size, plan.root)])
            )
        connection = await session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        if isinstance(driver, OneHopConnection):
            statements = [
                storage.sqlite_insert(model, batch, connection.dialect) for model, batch in rows
            ]
            await driver.before("DELETE")  # this process's writer turn, as any write takes it
            if not await driver.run(storage.store_if_size, tenant_id, size, statements):
                self._contended[tenant_id] = time.monotonic()
                return None
        elif (
            connection.dialect.name == "postgresql" and len(plan.receipts) < storage.COPY_FROM_ROWS
        ):
            await storage.insert_together(
                connection, rows, shared_lock=storage.tenant_lock_key(tenant_id)
            )
        else:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock_shared(:key)"),
                    {"key": storage.tenant_lock_key(tenant_id)},
                )
            for model, batch in rows:
                await storage.insert_rows(connection, model, batch)
        session.info[_FRONTIER] = (tenant_id, plan.new_size, plan.frontier)  # once committed
        return plan.receipts

    async def _known(
        self, session: AsyncSession, event_ids: Sequence[str]
    ) -> dict[str, tuple[int, bytes, bytes]]:
        """``{event id: (leaf index, leaf hash, request hash)}`` of those already in the log."""
        rows = await session.execute(
            select(
                AuditEvent.event_id,
                AuditEvent.leaf_index,
                AuditEvent.leaf_hash,
                AuditEvent.request_hash,
            ).where(AuditEvent.event_id.in_(set(event_ids)))
        )
        return {row.event_id: (row.leaf_index, row.leaf_hash, row.request_hash) for row in rows}

    # -- sequencing ---------------------------------------------------------------------------

    async def sequence_outbox(self, tenant_id: str) -> int:
        """Move the tenant's outbox into its log, batch by batch; returns the events added."""
        added = 0
        lost = 0
        while True:
            try:
                async with self._tenant_lock(tenant_id), self.sessions() as session:
                    count, more = await self._sequence_outbox_batch(session, tenant_id)
            except Exception as error:
                # Another process took an index first (or deadlocked with this one):
                # nothing was stored, the rows are still queued.
                lost += 1
                if not storage.lost_a_race(error) or lost == 3:
                    raise
                self._contended[tenant_id] = time.monotonic()
                continue
            self._remember_frontier(session)
            added += count
            if not more:
                return added

    async def _sequence_outbox_batch(
        self, session: AsyncSession, tenant_id: str
    ) -> tuple[int, bool]:
        await storage.lock_tenant_log(session, tenant_id)
        rows = (
            await session.execute(
                select(AuditOutbox.seq, AuditOutbox.event_id, AuditOutbox.document)
                .where(AuditOutbox.tenant_id == tenant_id)
                .order_by(AuditOutbox.seq)
                .limit(SEQUENCE_BATCH)
            )
        ).all()
        if not rows:
            return 0, False
        known = await self._known(session, [row.event_id for row in rows])
        leaves: dict[str, Leaf] = {}
        for row in rows:
            if row.event_id not in known and row.event_id not in leaves:
                leaves[row.event_id] = Leaf(
                    row.event_id,
                    row.document,
                    json.loads(row.document),
                    hashlib.sha256(row.document).digest(),
                )
        await self._sequence(session, tenant_id, list(leaves.values()))
        await session.execute(
            delete(AuditOutbox).where(AuditOutbox.seq.in_([row.seq for row in rows]))
        )
        return len(leaves), len(rows) == SEQUENCE_BATCH

    async def tenants_with_stale_heads(self, age_seconds: float) -> list[str]:
        """Tenants whose latest signed head is older than ``age_seconds``."""
        cutoff = int((time.time() - age_seconds) * 1000)
        async with self.sessions() as session:
            latest = (
                select(AuditTreeHead.tenant_id, func.max(AuditTreeHead.timestamp).label("last"))
                .group_by(AuditTreeHead.tenant_id)
                .execution_options(all_tenants=True)
                .subquery()
            )
            return list(
                await session.scalars(
                    select(latest.c.tenant_id)
                    .where(latest.c.last < cutoff)
                    .execution_options(all_tenants=True)
                )
            )

    async def tenants_with_outbox(self) -> list[str]:
        """Tenants with recorded events waiting to be sequenced."""
        async with self.sessions() as session:
            return list(await session.scalars(select(AuditOutbox.tenant_id).distinct()))

    async def _sequence(
        self, session: AsyncSession, tenant_id: str, leaves: list[Leaf], *, sign: bool = True
    ) -> list[Receipt]:
        """Append ``leaves`` after the current tree; store nodes and (``sign``) a new signed
        head."""
        if not leaves:
            return []
        bind_tenant(session, tenant_id)
        size = await storage.tree_size(session, tenant_id)
        nodes = await self._frontier(session, tenant_id, size)
        plan = plan_append(tenant_id, size, nodes, leaves, utcnow())
        connection = await session.connection()
        for model, rows in (
            (AuditEvent, plan.events),
            (AuditPayload, plan.payloads),
            (AuditNode, plan.nodes),
        ):
            await storage.insert_rows(connection, model, rows)
        session.info[_FRONTIER] = (tenant_id, plan.new_size, plan.frontier)  # once committed
        if sign:
            await self.signer.sign(session, tenant_id, plan.new_size, plan.root)
        return plan.receipts

    async def _frontier(
        self, session: AsyncSession, tenant_id: str, size: int
    ) -> dict[Node, bytes]:
        """The frontier of the tenant's tree at ``size``: remembered, or read."""
        known = self._frontiers.get(tenant_id)
        if known is not None and known[0] == size:
            return known[1]
        return await storage.fetch_nodes(session, frontier_of(size))

    def _remember_frontier(self, session: AsyncSession) -> None:
        """After a commit: the frontier the committed unit of work left, if it appended."""
        committed = session.info.pop(_FRONTIER, None)
        if committed is not None:
            tenant_id, size, frontier = committed
            self._frontiers[tenant_id] = (size, frontier)

    def _tenant_lock(self, tenant_id: str) -> asyncio.Lock:
        """One sequencer per tenant at a time in this process (the database's lock,
        :func:`keel.audit.service.storage.lock_tenant_log`, for other processes)."""
        return self._tenant_locks.setdefault(tenant_id, asyncio.Lock())

    # -- the tree and its signed heads --------------------------------------------------------

    async def tree_size(self, session: AsyncSession, tenant_id: str) -> int:
        """How many leaves the tenant's tree has."""
        return await storage.tree_size(session, tenant_id)

    async def fetch_nodes(self, session: AsyncSession, wanted: Iterable[Node]) -> dict[Node, bytes]:
        """Stored hashes of perfect subtrees: leaves from the events, others from the nodes
        table."""
        return await storage.fetch_nodes(session, wanted)

    async def sign_current_head(self, tenant_id: str) -> TreeHead:
        """A fresh signed head of the tree as it is (the timer's heartbeat, and the head of
        events appended with ``sign=False``)."""
        async with self._tenant_lock(tenant_id), self.sessions() as session:
            await storage.lock_tenant_log(session, tenant_id)
            size = await storage.tree_size(session, tenant_id)
            root = tree_root(size, await self._frontier(session, tenant_id, size))
            return await self.signer.sign(session, tenant_id, size, root)

    async def fresh_head(self, session: AsyncSession, tenant_id: str) -> TreeHead | None:
        """The latest signed head, signed anew first when the log has grown past it (events
        appended with ``sign=False`` wait up to
        :data:`keel.audit.service.writer.MAX_MERGE_DELAY` for their head); None for an empty
        log."""
        head = await self.latest_head(session, tenant_id)
        size = await storage.tree_size(session, tenant_id)
        if size == 0 or (head is not None and head.tree_size >= size):
            return head
        return await self.sign_current_head(tenant_id)

    async def latest_head(self, session: AsyncSession, tenant_id: str) -> TreeHead | None:
        """The tenant's latest signed head, None for a log never signed."""
        return await heads.latest_head(session, tenant_id)

    async def heads(self, session: AsyncSession, tenant_id: str) -> list[TreeHead]:
        """Every head signed of the tenant's log, oldest first."""
        return await heads.all_heads(session, tenant_id)

    async def signing_key(self, session: AsyncSession) -> tuple[str, Ed25519PrivateKey]:
        """The log's Ed25519 key, created on first use, its private half sealed at rest."""
        return await self.signer.signing_key(session)

    async def jwks(self, session: AsyncSession) -> dict[str, Any]:
        """The log's public keys as a JWK set: what verifies signed tree heads."""
        return await heads.public_jwks(session)

    # -- proofs -------------------------------------------------------------------------------

    async def inclusion_proof(
        self, session: AsyncSession, tenant_id: str, leaf_index: int, tree_size: int
    ) -> list[bytes]:
        """The proof that leaf ``leaf_index`` is in the tenant's tree of ``tree_size``."""
        return await proofs.inclusion_proof(session, tenant_id, leaf_index, tree_size)

    async def consistency_proof(
        self, session: AsyncSession, tenant_id: str, first: int, second: int
    ) -> list[bytes]:
        """The proof that the tree of size ``first`` is a prefix of that of ``second``."""
        return await proofs.consistency_proof(session, tenant_id, first, second)

    # -- reading events -----------------------------------------------------------------------

    async def event(self, session: AsyncSession, tenant_id: str, event_id: str) -> StoredEvent:
        """The tenant's event of id ``event_id``; :class:`NotFound` if the log has none."""
        return await reads.read_event(session, tenant_id, event_id)

    async def events(
        self,
        session: AsyncSession,
        tenant_id: str,
        *,
        filters: EventFilter | None = None,
        after_index: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
    ) -> list[StoredEvent]:
        """The tenant's events that ``filters`` keeps, a page in log order (or newest first)."""
        return await reads.read_events(
            session,
            tenant_id,
            filters=filters,
            after_index=after_index,
            limit=limit,
            newest_first=newest_first,
        )


#: Where a process that runs the audit service keeps its log.
AUDIT_RESOURCE: ResourceKey[AuditLog] = ResourceKey("audit")


def request_hashes(events: Sequence[BaseModel]) -> list[bytes]:
    """What a retry must repeat: the events as sent, before redaction or defaults."""
    return [
        hashlib.sha256(canonical_json(event.model_dump(mode="json", exclude_none=True))).digest()
        for event in events
    ]
