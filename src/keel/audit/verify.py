"""``keel audit verify``: recompute a tenant's log from its stored rows and check everything.

From the rows alone, without trusting any stored hash: every document must hash to its leaf,
leaf indexes must run 0, 1, 2... without a gap, every stored tree node must equal the one
recomputed from the leaves, every signed tree head must carry a valid signature and the root
recomputed at its size, and each head must be consistent with the one before (an RFC 6962
consistency proof, checked with the SDK's verifier). The first event where the stored log
departs from what was signed is reported.

A document may be missing only where retention erased it: an ``audit.retention.erase`` event
(in the log, or committed to the outbox and not yet sequenced) must cover its leaf, recorded
after it, with a cutoff later than the event's time. Any other missing document is reported.

Signatures are checked with the keys in the database unless trusted keys are given: someone
who can rewrite the tables could replace those too, so pin the JWK set of ``/audit/v1/keys``
elsewhere and pass it for a check that trusts nothing in the database.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.models import AuditEvent, AuditNode, AuditPayload, AuditSigningKey, AuditTreeHead
from keel.audit.retention import ERASE_ACTION, erased_ranges
from keel.core.audit import AuditOutbox
from keel.core.tenancy import bind_tenant
from keel_client.audit import (
    EMPTY_ROOT,
    ProofError,
    TreeHead,
    canonical_json,
    consistency_path,
    leaf_hash,
    node_hash,
    range_hash,
    verify_consistency,
    verify_tree_head,
)

#: Problems listed in a report at most (the first divergence is always among them).
MAX_PROBLEMS = 50


@dataclass
class Report:
    tenant_id: str
    tree_size: int = 0
    heads_checked: int = 0
    #: Documents retention erased, each covered by an erasure event.
    erased: int = 0
    problems: list[str] = field(default_factory=list)
    #: The lowest leaf index at which the stored log departs from what was signed.
    first_divergent_event: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    #: Divergence only bounded (a failing signed head blames every event it added), used when
    #: no row pins it down.
    bound: int | None = None

    def problem(self, message: str, at_event: int | None = None, *, bound: bool = False) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)
        if at_event is None:
            return
        if bound:
            self.bound = at_event if self.bound is None else min(self.bound, at_event)
        elif self.first_divergent_event is None or at_event < self.first_divergent_event:
            self.first_divergent_event = at_event

    def finish(self) -> None:
        if self.first_divergent_event is None:
            self.first_divergent_event = self.bound

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant_id,
            "ok": self.ok,
            "tree_size": self.tree_size,
            "heads_checked": self.heads_checked,
            "erased": self.erased,
            "first_divergent_event": self.first_divergent_event,
            "problems": self.problems,
        }


async def verify_tenant(
    session: AsyncSession,
    tenant_id: str,
    trusted_keys: Mapping[str, Ed25519PublicKey] | None = None,
) -> Report:
    bind_tenant(session, tenant_id)
    await _read_one_snapshot(session)
    report = Report(tenant_id)
    erasures = await _erasures(session, report, tenant_id)
    leaves, missing = await _check_leaves(session, report, erasures)
    levels = _levels(leaves)
    await _check_nodes(session, report, levels, missing)
    keys = trusted_keys if trusted_keys is not None else await _stored_keys(session)
    await _check_heads(session, report, levels, keys)
    report.tree_size = len(leaves)
    report.finish()
    return report


async def _read_one_snapshot(session: AsyncSession) -> None:
    """Make every read of the check see the log as of one moment: a sequencer appending
    meanwhile (``keel serve`` while ``keel audit verify`` runs) would otherwise show as
    events deleted at the end, or as tree nodes over no event. ``session`` must be fresh."""
    if session.get_bind().dialect.name == "postgresql":
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        return
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    if driver is not None and not driver.in_transaction:
        # pysqlite begins no transaction for reads; in WAL mode one holds a read snapshot.
        await connection.exec_driver_sql("BEGIN")


@dataclass(frozen=True)
class _Erasure:
    first: int
    last: int
    cutoff: datetime
    #: The leaf of the erasure event; ``None`` while it waits in the outbox.
    recorded_at: int | None

    def allows(self, index: int, time: datetime) -> bool:
        return (self.recorded_at is None or index < self.recorded_at) and time < self.cutoff


class _Erasures:
    """The leaf ranges erasure events cover, looked up by leaf index."""

    def __init__(self, erasures: list[_Erasure]) -> None:
        self._erasures = sorted(erasures, key=lambda erasure: erasure.first)
        self._firsts = [erasure.first for erasure in self._erasures]
        # The largest ``last`` up to each position: a backward scan stops once it is passed.
        self._reach = list(_running_max(erasure.last for erasure in self._erasures))

    def covering(self, index: int) -> Iterator[_Erasure]:
        position = bisect.bisect_right(self._firsts, index) - 1
        while position >= 0 and self._reach[position] >= index:
            if self._erasures[position].last >= index:
                yield self._erasures[position]
            position -= 1


def _running_max(values: Any) -> Iterator[int]:
    largest = -1
    for value in values:
        largest = max(largest, value)
        yield largest


async def _erasures(session: AsyncSession, report: Report, tenant_id: str) -> _Erasures:
    """Every erasure recorded for the tenant: in the log, and in the outbox, where the
    transaction that erased put it."""
    rows = await session.execute(
        select(AuditEvent.leaf_index, AuditPayload.document)
        .join(
            AuditPayload,
            (AuditPayload.tenant_id == AuditEvent.tenant_id)
            & (AuditPayload.leaf_index == AuditEvent.leaf_index),
        )
        .where(AuditEvent.action == ERASE_ACTION)
    )
    recorded: list[tuple[int | None, bytes]] = [(index, document) for index, document in rows]
    marker = canonical_json({"action": ERASE_ACTION})[1:-1]  # as every document spells it
    pending = await session.scalars(
        select(AuditOutbox.document).where(AuditOutbox.tenant_id == tenant_id)
    )
    recorded += [(None, document) for document in pending if marker in document]
    erasures = []
    for index, document in recorded:
        try:
            fields = json.loads(document)
            if fields.get("action") != ERASE_ACTION:
                continue
            covered = erased_ranges(fields.get("data") or {})
        except (ValueError, AttributeError) as error:
            where = "an erasure waiting in the outbox" if index is None else f"event {index}"
            report.problem(f"{where}: not a readable erasure record ({error})", index)
            continue
        erasures += [_Erasure(first, last, cutoff, index) for (first, last), cutoff in covered]
    return _Erasures(erasures)


async def _check_leaves(
    session: AsyncSession, report: Report, erasures: _Erasures
) -> tuple[list[bytes], set[int]]:
    """The stored leaf hashes in order (a placeholder where one is missing), and the missing."""
    rows = await session.stream(
        select(
            AuditEvent.leaf_index,
            AuditEvent.event_id,
            AuditEvent.action,
            AuditEvent.time,
            AuditEvent.leaf_hash,
            AuditPayload.document,
        )
        .join(
            AuditPayload,
            (AuditPayload.tenant_id == AuditEvent.tenant_id)
            & (AuditPayload.leaf_index == AuditEvent.leaf_index),
            isouter=True,
        )
        .order_by(AuditEvent.leaf_index)
        .execution_options(yield_per=5_000)
    )
    leaves: list[bytes] = []
    missing: set[int] = set()
    async for index, event_id, action, time, stored_hash, document in rows:
        expected = len(leaves)
        if index != expected:
            report.problem(f"events {expected}..{index - 1} are missing (deleted)", expected)
            leaves.extend([b"\0" * 32] * (index - expected))  # keep positions aligned
            missing.update(range(expected, index))
        if document is None:
            _check_erased(report, erasures, index, time)
        else:
            if leaf_hash(document) != stored_hash:
                report.problem(f"event {index}: its document does not hash to its leaf", index)
            try:
                fields = json.loads(document)
            except ValueError:
                fields = {}
            if fields.get("id") != event_id or fields.get("action") != action:
                report.problem(f"event {index}: its columns differ from its document", index)
        leaves.append(stored_hash)
    return leaves, missing


def _check_erased(report: Report, erasures: _Erasures, index: int, time: datetime) -> None:
    covering = list(erasures.covering(index))
    if any(erasure.allows(index, time) for erasure in covering):
        report.erased += 1
    elif covering:
        report.problem(f"event {index}: its document was erased before it expired", index)
    else:
        report.problem(f"event {index}: its document is missing", index)


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every perfect-subtree hash, level by level, recomputed from the leaves."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    return levels


async def _check_nodes(
    session: AsyncSession, report: Report, levels: list[list[bytes]], missing: set[int]
) -> None:
    rows = await session.stream(
        select(AuditNode.level, AuditNode.index, AuditNode.hash)
        .order_by(AuditNode.level, AuditNode.index)
        .execution_options(yield_per=10_000)
    )
    seen = 0
    # A changed leaf shows in every node above it: blame the lowest level that differs.
    differing: list[tuple[int, int]] = []
    async for level, index, stored in rows:
        seen += 1
        if level >= len(levels) or index >= len(levels[level]):
            report.problem(f"tree node ({level}, {index}) covers no stored events", index << level)
        elif levels[level][index] != stored and not any(
            index << level <= gap < (index + 1) << level for gap in missing
        ):  # (a node over a missing event differs for that reason, reported already)
            differing.append((level, index))
    lowest = min((level for level, _ in differing), default=None)
    for level, index in differing:
        report.problem(
            f"tree node ({level}, {index}) differs from the events it covers",
            index << level if level == lowest else None,
        )
    expected = sum(len(level) for level in levels[1:])
    if seen != expected:
        report.problem(f"{expected - seen} tree nodes are missing" if seen < expected else
                       f"{seen - expected} tree nodes too many")  # fmt: skip


async def _check_heads(
    session: AsyncSession,
    report: Report,
    levels: list[list[bytes]],
    keys: Mapping[str, Ed25519PublicKey],
) -> None:
    size = len(levels[0])

    def node(level: int, index: int) -> bytes:
        return levels[level][index]

    def root(at: int) -> bytes:
        return EMPTY_ROOT if at == 0 else range_hash(0, at, node)

    previous: TreeHead | None = None
    largest = 0
    rows = await session.scalars(select(AuditTreeHead).order_by(AuditTreeHead.id))
    for row in rows:
        head = TreeHead(
            row.tenant_id, row.tree_size, row.root_hash, row.timestamp, row.key_id, row.signature
        )
        report.heads_checked += 1
        try:
            verify_tree_head(head, keys)
        except ProofError as error:
            report.problem(f"signed head of size {head.tree_size}: {error}")
        if head.tree_size > size:
            report.problem(
                f"signed head of size {head.tree_size}: the log holds only {size} events "
                "(events deleted at the end)",
                size,
            )
        elif root(head.tree_size) != head.root_hash:
            report.problem(
                f"signed head of size {head.tree_size}: the stored events no longer have its root",
                _first_leaf_off(previous, head),
                bound=True,
            )
        if previous is not None:
            if head.tree_size < previous.tree_size:
                report.problem(f"signed head of size {head.tree_size} follows a larger tree")
            elif previous.tree_size and head.tree_size <= size:
                _check_consistency(report, previous, head, node)
        largest = max(largest, head.tree_size)
        previous = head
    if size > largest:
        report.problem(f"events {largest}..{size - 1} are under no signed head (inserted)", largest)


def _check_consistency(report: Report, old: TreeHead, new: TreeHead, node: Any) -> None:
    """The SDK's verifier on a proof built from the recomputed tree: the two signed roots
    must describe one growing log."""
    if old.tree_size == new.tree_size:
        if old.root_hash != new.root_hash:
            report.problem(f"two signed heads of size {new.tree_size} differ (a fork)")
        return
    proof = [
        range_hash(start, end, node)
        for start, end in consistency_path(old.tree_size, new.tree_size)
    ]
    try:
        verify_consistency(old.tree_size, new.tree_size, old.root_hash, new.root_hash, proof)
    except ProofError as error:
        report.problem(
            f"signed heads {old.tree_size} -> {new.tree_size} are not consistent: {error}",
            old.tree_size,
            bound=True,
        )


def _first_leaf_off(previous: TreeHead | None, head: TreeHead) -> int:
    """The events a failing head can blame: those it added over the head before it."""
    return previous.tree_size if previous and previous.tree_size < head.tree_size else 0


async def _stored_keys(session: AsyncSession) -> dict[str, Ed25519PublicKey]:
    rows = await session.execute(select(AuditSigningKey.key_id, AuditSigningKey.public_key))
    return {kid: Ed25519PublicKey.from_public_bytes(raw) for kid, raw in rows}
