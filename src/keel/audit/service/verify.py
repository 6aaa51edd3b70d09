"""``keel audit verify``: recompute a tenant's log from its stored rows and check everything.

From the rows alone, without trusting any stored hash: every document must hash to its leaf,
every column of ``audit_events`` taken from the document (id, time, action, outcome,
sensitivity, actor and target type and id) must hold what the sequencer would have stored
from it, and the document must name the tenant; leaf indexes must run 0, 1, 2... without a
gap, every stored tree node must equal the one recomputed from the leaves, every signed tree
head must carry a valid signature and the root recomputed at its size, and each head must be
consistent with the one before (an RFC 6962 consistency proof, checked with the SDK's
verifier). Every value is read as the database holds it, whatever its type: a value the
sequencer could not have stored (text for bytes, a hash of the wrong size, a number for a
time) is reported where it is, never an error of the check itself.

The first changed event is reported (:attr:`Report.first_divergent_event`). A row that
disagrees with its own document is pinned exactly; an event swapped, inserted or edited with
its leaf hash recomputed agrees with itself, and only the tree tells: see
:func:`_check_nodes` for how the tree names the event.

A document may be missing only where retention erased it: an ``audit.retention.erase`` event
(in the log, or committed to the outbox and not yet sequenced) must cover its leaf, recorded
after it, with a cutoff later than the event's time. Any other missing document is reported.

Signatures are checked with the keys in the database unless trusted keys are given: someone
who can rewrite the tables could replace those too, so pin the JWK set of ``/audit/v1/keys``
elsewhere and pass it for a check that trusts nothing in the database.
"""

from __future__ import annotations

import bisect
import functools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import NullType

from keel.audit.audit_actions import ERASE_ACTION
from keel.audit.models import AuditEvent, AuditNode, AuditPayload, AuditSigningKey, AuditTreeHead
from keel.audit.service.retention import erased_ranges
from keel.audit.service.storage import bound_columns
from keel.audit.service.tree import event_columns
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
#: What stands for a leaf hash that is missing or unreadable: it keeps the others in place.
_NO_HASH = b"\0" * 32
#: What reading a stored value the sequencer never wrote may raise: not JSON, JSON nested
#: deeper than the parser goes, a time out of range, an object where text belongs.
_UNREADABLE = (ValueError, TypeError, AttributeError, RecursionError, OverflowError)
#: Signed integers are JSON numbers: RFC 8785 takes them up to 2**53 - 1.
_MAX_JSON_INTEGER = 2**53 - 1
#: A jump in leaf indexes longer than this is a row out of place, not events deleted: the
#: gap would be held in memory (a leaf index of 10**12 is one edit away).
_MAX_GAP = 1 << 24


@dataclass
class Report:
    tenant_id: str
    tree_size: int = 0
    heads_checked: int = 0
    #: Documents retention erased, each covered by an erasure event.
    erased: int = 0
    problems: list[str] = field(default_factory=list)
    #: The first changed event: the lowest leaf index at which the stored log departs from
    #: what was signed or from its own documents; ``None`` when every event is intact (the
    #: problems are then in the tree's own rows, or the keys).
    first_divergent_event: int | None = None
    #: Its id, as its document (else its row) holds it now.
    first_divergent_event_id: str | None = None
    #: Leaves ``0 .. proven - 1`` are those of a signed head that verified: not changed.
    proven: int = 0
    #: Events pinned down by their own rows.
    _pinned: int | None = field(default=None, repr=False)
    #: From the tree: the first changed event is in ``[first, end)``, not before ``first``.
    _subtree: tuple[int, int] | None = field(default=None, repr=False)
    #: Only bounded, as ``[first, end)`` (a failing signed head blames every event it added).
    _bounds: list[tuple[int, int]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(
        self, message: str, at_event: int | None = None, *, until: int | None = None
    ) -> None:
        """Record a problem, pinned to ``at_event``, or, with ``until``, one of the events
        from ``at_event`` up to ``until`` (excluded)."""
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)
        if at_event is None:
            return
        if until is not None:
            self._bounds.append((at_event, until))
        elif self._pinned is None or at_event < self._pinned:
            self._pinned = at_event

    def blame_subtree(self, first: int, end: int) -> None:
        self._subtree = (first, end)

    def finish(self) -> None:
        """Settle the first changed event: no event a verified signed head proves intact."""
        found = [] if self._pinned is None else [self._pinned]
        if self._subtree is not None:
            found += self._unproven(*self._subtree)
        if not found:  # bounds only stand in for what no row or node pins down
            for first, end in self._bounds:
                found += self._unproven(first, end)
        self.first_divergent_event = min(found, default=None)

    def _unproven(self, first: int, end: int) -> list[int]:
        """The first event of ``[first, end)`` no verified head proves, if any."""
        first = max(first, self.proven)
        return [first] if first < end else []

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant_id,
            "ok": self.ok,
            "tree_size": self.tree_size,
            "heads_checked": self.heads_checked,
            "erased": self.erased,
            "first_divergent_event": self.first_divergent_event,
            "first_divergent_event_id": self.first_divergent_event_id,
            "problems": self.problems,
        }

    def summary(self) -> str:
        """One line: the verdict, the counts and, when changed, the first changed event."""
        erased = f", {self.erased} erased by retention" if self.erased else ""
        counts = f"({self.tree_size} events{erased}, {self.heads_checked} signed heads)"
        if self.ok:
            return f"ok {counts}"
        if self.first_divergent_event is None:
            return f"TAMPERED {counts}; no event changed"
        named = f" (id {self.first_divergent_event_id!r})" if self.first_divergent_event_id else ""
        return f"TAMPERED {counts}; first changed event: {self.first_divergent_event}{named}"


async def verify_tenant(
    session: AsyncSession,
    tenant_id: str,
    trusted_keys: Mapping[str, Ed25519PublicKey] | None = None,
) -> Report:
    bind_tenant(session, tenant_id)
    await _read_one_snapshot(session)
    report = Report(tenant_id)
    erasures = await _erasures(session, report, tenant_id)
    leaves, in_doubt = await _check_leaves(session, report, erasures)
    levels = _levels(leaves)
    keys = trusted_keys if trusted_keys is not None else await _stored_keys(session, report)
    await _check_heads(session, report, levels, keys)
    await _check_nodes(session, report, levels, in_doubt)
    report.tree_size = len(leaves)
    report.finish()
    if report.first_divergent_event is not None:
        report.first_divergent_event_id = await _event_id(session, report.first_divergent_event)
    return report


def _raw(column: Any) -> ColumnElement[Any]:
    """``column`` as the driver gives it, unconverted: a text where bytes belong stays text,
    and a value no type could read (``time`` = 12345 on SQLite) is no error."""
    return type_coerce(column, NullType())


def _is_whole(value: object) -> bool:
    return type(value) is int


def _is_json_integer(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_JSON_INTEGER


def _is_hash(value: object, size: int = 32) -> bool:
    return type(value) is bytes and len(value) == size


def _show(value: object) -> str:
    """A stored value in a problem, briefly (bytes by their length)."""
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    if isinstance(value, datetime):
        return value.isoformat()
    try:
        shown = repr(value)
    except RecursionError:
        return "a value nested too deep to show"
    return shown if len(shown) <= 80 else f"{shown[:77]}..."


def _kind(value: object) -> str:
    """What a stored value is, where its kind is what is wrong."""
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    kinds = {str: "text", int: "a number", float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


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
        select(_raw(AuditEvent.leaf_index), _raw(AuditPayload.document))
        .join(
            AuditPayload,
            (AuditPayload.tenant_id == AuditEvent.tenant_id)
            & (AuditPayload.leaf_index == AuditEvent.leaf_index),
        )
        .where(AuditEvent.action == ERASE_ACTION)
    )
    recorded: list[tuple[Any, Any]] = [(index, document) for index, document in rows]
    marker = canonical_json({"action": ERASE_ACTION})[1:-1]  # as every document spells it
    pending = await session.scalars(
        select(_raw(AuditOutbox.document)).where(AuditOutbox.tenant_id == tenant_id)
    )
    recorded += [
        (None, document)
        for document in pending
        if isinstance(document, bytes) and marker in document
    ]
    erasures = []
    for index, document in recorded:
        if index is not None and not _is_whole(index):
            continue  # a row out of place: reported with the leaves
        try:
            fields = json.loads(document)
            if fields.get("action") != ERASE_ACTION:
                continue
            covered = erased_ranges(fields.get("data") or {})
            if any(cutoff.utcoffset() is None for _, cutoff in covered):
                raise ValueError("a cutoff without its offset")
        except _UNREADABLE as error:
            where = "an erasure waiting in the outbox" if index is None else f"event {index}"
            at_event = index if _is_whole(index) else None
            report.problem(f"{where}: not a readable erasure record ({error})", at_event)
            continue
        erasures += [_Erasure(first, last, cutoff, index) for (first, last), cutoff in covered]
    return _Erasures(erasures)


class _Ranges:
    """Disjoint ranges of leaves ``[first, end)``, added in increasing order."""

    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._ends: list[int] = []

    def add(self, first: int, end: int) -> None:
        if self._ends and self._ends[-1] == first:
            self._ends[-1] = end
        else:
            self._firsts.append(first)
            self._ends.append(end)

    def overlaps(self, first: int, end: int) -> bool:
        position = bisect.bisect_left(self._firsts, end) - 1
        return position >= 0 and self._ends[position] > first


async def _check_leaves(
    session: AsyncSession, report: Report, erasures: _Erasures
) -> tuple[list[bytes], _Ranges]:
    """The stored leaf hashes in order (a stand-in where one is missing or unreadable), and
    the leaves in doubt: missing, or whose hash is unreadable or not its document's (each
    reported at its event already)."""
    columns = [column.key for column in AuditEvent.__mapper__.column_attrs]
    rows = await session.stream(
        select(*(_raw(getattr(AuditEvent, name)) for name in columns), _raw(AuditPayload.document))
        .join(
            AuditPayload,
            (AuditPayload.tenant_id == AuditEvent.tenant_id)
            & (AuditPayload.leaf_index == AuditEvent.leaf_index),
            isouter=True,
        )
        .order_by(AuditEvent.leaf_index)
        .execution_options(yield_per=5_000)
    )
    leaves = _Leaves(report, erasures, session.get_bind().dialect)
    async for partition in rows.partitions():  # by the row, each costs a greenlet switch
        for *values, document in partition:
            leaves.add(dict(zip(columns, values, strict=True)), document)
    return leaves.hashes, leaves.in_doubt


class _Leaves:
    """The leaves read so far, each row checked as it comes, in leaf index order."""

    def __init__(self, report: Report, erasures: _Erasures, dialect: Any) -> None:
        self.report = report
        self.erasures = erasures
        self.dialect = dialect
        self.hashes: list[bytes] = []
        self.in_doubt = _Ranges()

    def add(self, stored: dict[str, Any], document: object) -> None:
        report, index, expected = self.report, stored["leaf_index"], len(self.hashes)
        if not _is_whole(index) or not expected <= index <= expected + _MAX_GAP:
            # Rows come in leaf index order: this one (text, a fraction, far beyond) sits here.
            report.problem(
                f"a row with leaf index {_show(index)} is out of place, after event {expected - 1}",
                expected,
            )
            return
        if index != expected:
            report.problem(f"events {expected}..{index - 1} are missing (deleted)", expected)
            self.hashes.extend([_NO_HASH] * (index - expected))  # keep positions aligned
            self.in_doubt.add(expected, index)
        if document is None:
            problems, is_in_doubt = _leaf_hash_problems(stored["leaf_hash"], None)
            time = _read_time(stored["time"], self.dialect)
            if time is None:
                problems.append(f"its time column holds {_show(stored['time'])}, not a time")
            else:
                _check_erased(report, self.erasures, index, time)
        else:
            problems, is_in_doubt = _row_problems(stored, document, report.tenant_id, self.dialect)
        if problems:
            report.problem(f"event {index}: " + "; ".join(problems), index)
        if is_in_doubt:
            self.in_doubt.add(index, index + 1)
        self.hashes.append(stored["leaf_hash"] if _is_hash(stored["leaf_hash"]) else _NO_HASH)


def _leaf_hash_problems(digest: object, document: bytes | None) -> tuple[list[str], bool]:
    """A stored leaf hash's problem (unreadable, or not ``document``'s), and whether the
    leaf is in doubt."""
    if not _is_hash(digest):
        return [f"its leaf_hash column holds {_kind(digest)}, not a 32-byte hash"], True
    if document is not None and leaf_hash(document) != digest:
        return ["its leaf_hash column is not the hash of its document"], True
    return [], False


def _row_problems(
    stored: Mapping[str, Any], document: object, tenant_id: str, dialect: Any
) -> tuple[list[str], bool]:
    """What is wrong with an event's row and document, and whether its leaf is in doubt.

    Each column taken from the document must hold what the sequencer would have stored from
    it: the value :func:`event_columns` takes, bound as SQLAlchemy binds it on ``dialect``
    (on SQLite a time is text in one format, and a time in another would sort apart from
    the others in a query). The stored values are compared as the driver gives them."""
    if not isinstance(document, bytes):
        problems, is_in_doubt = _leaf_hash_problems(stored["leaf_hash"], None)
        return [f"its document is stored as {_kind(document)}, not bytes", *problems], is_in_doubt
    problems, is_in_doubt = _leaf_hash_problems(stored["leaf_hash"], document)
    try:
        fields = json.loads(document)
        derived = event_columns(fields)
        names = tuple(derived)
        _, processors, _ = bound_columns(AuditEvent, names, dialect)
        expected = {
            name: derived[name] if process is None else process(derived[name])
            for name, process in zip(names, processors, strict=True)
        }
    except (*_UNREADABLE, KeyError) as error:
        reason = f"no {error}" if isinstance(error, KeyError) else str(error) or repr(error)
        return [*problems, f"its document is not an event Keel stores ({reason})"], is_in_doubt
    problems += [
        f"its {name} column holds {_show(stored[name])}, its document {_show(value)}"
        for name, value in expected.items()
        if stored[name] != value
    ]
    if fields.get("tenant") != tenant_id:
        problems.append(f"its document is of tenant {_show(fields.get('tenant'))}")
    return problems, is_in_doubt


@functools.lru_cache(maxsize=4)
def _time_reader(dialect: Any) -> Callable[[Any], Any] | None:
    """How SQLAlchemy reads ``audit_events.time`` on ``dialect`` (SQLite's text to a datetime)."""
    column_type = AuditEvent.__table__.c.time.type
    return column_type.dialect_impl(dialect).result_processor(dialect, None)


def _read_time(value: object, dialect: Any) -> datetime | None:
    """A stored time as a timezone-aware datetime; ``None`` if it is none."""
    process = _time_reader(dialect)
    try:
        time = value if process is None else process(value)
    except _UNREADABLE:
        return None
    return time if isinstance(time, datetime) and time.utcoffset() is not None else None


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
    session: AsyncSession, report: Report, levels: list[list[bytes]], in_doubt: _Ranges
) -> None:
    """Compare every stored tree node with the one recomputed from the leaves, and find in
    them the first changed event (the signed heads checked first: what they prove is not
    blamed).

    A changed leaf shows in every node above it. Of the nodes that differ (leaving out those
    over a leaf in doubt, reported at its event already, and those over leaves only that a
    verified head proves), the one that ends first, at the lowest level, holds the first
    changed event. Which half of it? The left half is unchanged if it hashes, with some
    recomputed subtree of its level, to the stored node: the right half's original is then
    elsewhere in the log, as when two events swap or one is inserted. Otherwise the first
    changed event is named as the first of the node: where the stored hashes cannot tell
    which of two siblings changed (an edit with its leaf hash recomputed), the earlier.
    """
    rows = await session.stream(
        select(_raw(AuditNode.level), _raw(AuditNode.index), _raw(AuditNode.hash))
        .order_by(AuditNode.level, AuditNode.index)
        .execution_options(yield_per=10_000)
    )
    size = len(levels[0])
    seen = 0
    first_differing: tuple[int, int, int, object] | None = None  # end, level, index, stored
    async for partition in rows.partitions():
        for level, index, stored in partition:
            if not (_is_whole(level) and _is_whole(index) and 0 < level < 64 and index >= 0):
                report.problem(f"a tree node row ({_show(level)}, {_show(index)}) is no node")
                continue
            start, end = index << level, (index + 1) << level
            if level >= len(levels) or index >= len(levels[level]):
                # Events deleted at the end (with their signed heads, else those tell), or a row
                # added: only bounds the first changed event.
                report.problem(f"tree node ({level}, {index}) covers events beyond the last", size,
                               until=end)  # fmt: skip
                continue
            seen += 1
            if levels[level][index] == stored or in_doubt.overlaps(start, end):
                continue
            if _is_hash(stored):
                report.problem(f"tree node ({level}, {index}) differs from the events it covers")
            else:
                report.problem(f"tree node ({level}, {index}) holds {_kind(stored)}, not a hash")
            if end > report.proven and (
                first_differing is None or (end, level) < first_differing[:2]
            ):
                first_differing = (end, level, index, stored)
    expected = sum(len(level) for level in levels[1:])
    if seen < expected:
        report.problem(f"{expected - seen} tree nodes are missing")
    if first_differing is not None:
        end, level, index, stored = first_differing
        report.blame_subtree(_first_changed_under(levels[level - 1], level, index, stored), end)


def _first_changed_under(below: list[bytes], level: int, index: int, stored: object) -> int:
    """The first changed leaf under node ``(level, index)``, whose stored hash ``stored``
    differs from the one recomputed from ``below`` (the recomputed level under it): the
    first of its right half if its left half, with any subtree of that level, hashes to
    ``stored``; else its first. One pass over ``below``, for one node of the log."""
    left = below[2 * index]
    if isinstance(stored, bytes) and any(node_hash(left, other) == stored for other in below):
        return (2 * index + 1) << (level - 1)
    return index << level


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
    rows = await session.execute(
        select(
            _raw(AuditTreeHead.id),
            _raw(AuditTreeHead.tree_size),
            _raw(AuditTreeHead.root_hash),
            _raw(AuditTreeHead.timestamp),
            _raw(AuditTreeHead.key_id),
            _raw(AuditTreeHead.signature),
        ).order_by(AuditTreeHead.id)
    )
    for row_id, *stored in rows:
        report.heads_checked += 1
        tree_size = stored[0]
        if _is_whole(tree_size) and tree_size >= 0:
            largest = max(largest, tree_size)
        malformed = _malformed_head(*stored)
        if malformed is not None:
            report.problem(f"signed head (row {_show(row_id)}): {malformed}")
            continue
        head = TreeHead(report.tenant_id, *stored)
        try:
            verify_tree_head(head, keys)
            is_signed = True
        except ProofError as error:
            report.problem(f"signed head of size {head.tree_size}: {error}")
            is_signed = False
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
                until=head.tree_size,
            )
        elif is_signed:
            report.proven = max(report.proven, head.tree_size)
        if previous is not None:
            if head.tree_size < previous.tree_size:
                report.problem(f"signed head of size {head.tree_size} follows a larger tree")
            elif previous.tree_size and head.tree_size <= size:
                _check_consistency(report, previous, head, node)
        previous = head
    if size > largest:
        report.problem(f"events {largest}..{size - 1} are under no signed head (inserted)", largest)


def _malformed_head(
    tree_size: object, root_hash: object, timestamp: object, key_id: object, signature: object
) -> str | None:
    """What of a stored signed head no signer could have written, if anything."""
    if not _is_json_integer(tree_size):
        return f"its tree_size holds {_show(tree_size)}, not a size"
    if not _is_hash(root_hash):
        return f"its root_hash holds {_kind(root_hash)}, not a 32-byte hash"
    if not _is_json_integer(timestamp):
        return f"its timestamp holds {_show(timestamp)}, not milliseconds"
    if not isinstance(key_id, str):
        return f"its key_id holds {_show(key_id)}, not text"
    if not _is_hash(signature, 64):
        return f"its signature holds {_kind(signature)}, not a 64-byte signature"
    return None


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
            until=new.tree_size,
        )


def _first_leaf_off(previous: TreeHead | None, head: TreeHead) -> int:
    """The events a failing head can blame: those it added over the head before it."""
    return previous.tree_size if previous and previous.tree_size < head.tree_size else 0


async def _stored_keys(session: AsyncSession, report: Report) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    rows = await session.execute(
        select(_raw(AuditSigningKey.key_id), _raw(AuditSigningKey.public_key))
    )
    for key_id, public_key in rows:
        if isinstance(key_id, str) and _is_hash(public_key):
            try:
                keys[key_id] = Ed25519PublicKey.from_public_bytes(public_key)
                continue
            except ValueError:
                pass
        report.problem(
            f"signing key {_show(key_id)}: its public_key holds {_kind(public_key)}, "
            "not an Ed25519 key"
        )
    return keys


async def _event_id(session: AsyncSession, index: int) -> str | None:
    """The id of the event stored at leaf ``index``: its document's, else its row's."""
    row = (
        await session.execute(
            select(_raw(AuditEvent.event_id), _raw(AuditPayload.document))
            .join(
                AuditPayload,
                (AuditPayload.tenant_id == AuditEvent.tenant_id)
                & (AuditPayload.leaf_index == AuditEvent.leaf_index),
                isouter=True,
            )
            .where(AuditEvent.leaf_index == index)
        )
    ).first()
    if row is None:
        return None
    event_id, document = row
    try:
        named = json.loads(document)["id"]
    except (*_UNREADABLE, KeyError, IndexError):
        named = None
    if isinstance(named, str):
        return named
    return event_id if isinstance(event_id, str) else None
