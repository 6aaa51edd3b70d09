"""Audit-log figures (issue #5): batch appends, inclusion proofs and verification at 1M events.

Everything runs on a fresh PostgreSQL database (created with asyncpg, migrated with
``keel.migrations.upgrade``, dropped at the end) through Keel's own ``Database`` (SQLAlchemy 2
on asyncpg) and ``AuditLog``:

- ``audit.batch_append_per_s``: events appended per second by ``AuditLog.append`` in batches
  of ``BATCH`` realistic documents (built beforehand with ``build_document``: a user paying an
  invoice, with actor, target, request id and four data fields), tree maintenance included:
  leaves, payloads, nodes and one signed head per batch, one transaction per batch. The peer
  inserts the same rows without any tree: a table with ``audit_events``' columns, keys and
  indexes plus the canonical document, rows built beforehand, one SQLAlchemy Core
  ``executemany`` and one transaction per batch, on the same engine. Rounds alternate (after
  one unmeasured round, then ``ANALYZE``, as autovacuum would); the figure is the median. One
  INSERT statement per row is in ``extra`` for context, with the CPU time per event of this
  process and of the PostgreSQL backends, and what RFC 8785 canonical JSON costs per event.
- ``audit.inclusion_proof_ms``: ``AuditLog.inclusion_proof`` for random leaves of a
  1,000,000-event log, each in its own session as an API request would (the figure times the
  call, which checks out the connection; ``session_*`` adds the commit), each proof checked
  with the SDK's ``verify_inclusion`` against the signed head (itself checked with the log's
  published keys). The log is written straight into its tables (COPY), row for row what
  ``AuditLog.append`` stores in batches of ``BATCH``; sampled rows are compared with those
  ``build_document`` and the service's own row builders give, the last batch is appended by
  ``AuditLog.append`` on top (so the service reads the bulk-written tree), its signed root must
  equal the one recomputed here, and ``verify_tenant`` must pass on the whole log.
- ``audit.verify_1m_s``: wall time of ``verify_tenant`` over that log, in a child process
  (as ``keel audit verify`` runs it), whose peak RSS is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks._databases import postgres_database
from benchmarks._figures import Figure, emit
from benchmarks._servers import REPO_ROOT, clean_env

#: Events per ``AuditLog.append`` call (the batch endpoint's limit) and per peer executemany.
BATCH = 1_000
APPEND_ROUNDS = 9
#: Batches each side writes per round (after one unmeasured round).
BATCHES_PER_ROUND = 5
LOG_SIZE = 1_000_000
#: Rows generated and copied per transaction while writing the large log.
BULK_CHUNK = 50_000
PROOFS = 200
PROOF_WARMUP = 20
#: Distinct actors the events name (the rest of each event is distinct).
ACTORS = 500
SEED = 5

TARGET_APPEND_PER_S = 5_000.0
TARGET_APPEND_RATIO = 0.5
TARGET_PROOF_MS = 5.0

_STARTED = time.perf_counter()


def _progress(message: str) -> None:
    print(f"[audit {time.perf_counter() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _ratio(value: float, peer: float) -> float | None:
    return round(value / peer, 3) if peer else None


def _load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (2 CPUs: above 2 means contention)."""
    return [round(load, 2) for load in os.getloadavg()]


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


def _action() -> Any:
    from keel.core.audit import ActionSpec

    return ActionSpec("billing.invoice.pay", "An invoice paid.", "finance")


def _event_fields(number: Any, actor: Any) -> dict[str, Any]:
    """What a service sends for one event: a user pays an invoice."""
    return {
        "actor": {"type": "user", "id": f"user-{actor}", "display": "Alice", "ip": "10.0.0.1"},
        "target": {"type": "invoice", "id": f"inv-{number}"},
        "request_id": f"req-{number}",
        "data": {"amount": "12.30", "currency": "EUR", "method": "card", "number": number},
    }


def _documents(tenant_id: str, first: int, count: int) -> list[dict[str, Any]]:
    """``count`` event documents as the API builds them (each with a new id and the time now)."""
    from keel.core.audit import build_document

    spec = _action()
    return [
        build_document(
            tenant_id=tenant_id, action=spec.name, spec=spec, **_event_fields(n, n % ACTORS)
        )
        for n in range(first, first + count)
    ]


# ---------------------------------------------------------------------------------------------
# audit.batch_append_per_s
# ---------------------------------------------------------------------------------------------


def _plain_table() -> Any:
    """``audit_events``' columns, primary key, constraints and indexes, plus the document: the
    same rows in one table, as an events table without a Merkle tree would hold them."""
    from sqlalchemy import (
        Column,
        ForeignKeyConstraint,
        Index,
        LargeBinary,
        MetaData,
        Table,
        UniqueConstraint,
    )

    from keel.audit.models import AuditEvent

    events = AuditEvent.metadata.tables[AuditEvent.__tablename__]
    name = "bench_plain_events"
    columns = [
        Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
        for c in events.columns
    ]
    constraints: list[Any] = [
        ForeignKeyConstraint(
            [fk.parent.name for fk in constraint.elements],
            [fk.column for fk in constraint.elements],
        )
        for constraint in events.foreign_key_constraints
    ]
    constraints += [
        UniqueConstraint(*[c.name for c in constraint.columns])
        for constraint in events.constraints
        if isinstance(constraint, UniqueConstraint)
    ]
    constraints += [
        Index(
            str(index.name).replace(events.name, name),
            *[c.name for c in index.columns],
            unique=bool(index.unique),
        )
        for index in events.indexes
    ]
    return Table(
        name, MetaData(), *columns, Column("document", LargeBinary, nullable=False), *constraints
    )


def _plain_rows(tenant_id: str, first_index: int, documents: list[dict[str, Any]]) -> list[Any]:
    """The rows ``AuditLog.append`` would store for ``documents`` (event columns + document)."""
    from keel.audit.service.tree import event_row, new_leaf
    from keel.core.db import utcnow
    from keel_client.audit import leaf_hash

    now = utcnow()
    rows = []
    for offset, document in enumerate(documents):
        leaf = new_leaf(document)
        row = event_row(tenant_id, first_index + offset, leaf, leaf_hash(leaf.document), now)
        row["document"] = leaf.document
        rows.append(row)
    return rows


async def _backend_pids(database: Any) -> list[int]:
    from sqlalchemy import text

    async with database.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        )
        return [int(row.pid) for row in rows]


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the PostgreSQL backends serving this process used so far."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += times.user + times.system
    return total


async def _measure(
    run: Callable[[], Awaitable[None]], events: int, pids: list[int]
) -> dict[str, float]:
    wall, cpu, db_cpu = time.perf_counter(), time.process_time(), _cpu_seconds(pids)
    await run()
    wall = time.perf_counter() - wall
    return {
        "per_s": events / wall,
        "client_cpu_us": (time.process_time() - cpu) / events * 1e6,
        "db_cpu_us": (_cpu_seconds(pids) - db_cpu) / events * 1e6,
    }


async def batch_append(database: Any, audit: Any, tenant_id: str) -> Figure:
    from sqlalchemy import insert, text

    from keel.audit.service.verify import verify_tenant
    from keel_client.audit import canonical_json

    plain = _plain_table()
    async with database.engine.begin() as connection:
        await connection.run_sync(plain.create)

    counters = {"ours": 0, "plain": 0}

    async def ours(batches: list[list[dict[str, Any]]]) -> None:
        for documents in batches:
            await audit.append(tenant_id, documents)

    async def plain_many(batches: list[list[Any]]) -> None:
        for rows in batches:
            async with database.session() as session:
                connection = await session.connection()
                await connection.execute(insert(plain), rows)

    async def plain_per_row(batches: list[list[Any]]) -> None:
        for rows in batches:
            async with database.session() as session:
                connection = await session.connection()
                for row in rows:
                    await connection.execute(insert(plain), row)

    def plain_batches(count: int) -> list[list[Any]]:
        batches = []
        for _ in range(count):
            first = counters["plain"]
            batches.append(_plain_rows(tenant_id, first, _documents(tenant_id, first, BATCH)))
            counters["plain"] += BATCH
        return batches

    def our_batches(count: int) -> list[list[dict[str, Any]]]:
        batches = []
        for _ in range(count):
            batches.append(_documents(tenant_id, counters["ours"], BATCH))
            counters["ours"] += BATCH
        return batches

    runs: dict[str, list[dict[str, float]]] = {"ours": [], "plain": [], "plain_per_row": []}
    pids = await _backend_pids(database)
    canonical_us: list[float] = []
    for round_ in range(APPEND_ROUNDS + 1):
        # Inputs are built outside the clock: documents for ours, finished rows for the peer.
        measures: list[tuple[str, Callable[[], Awaitable[None]], int]] = []
        documents = our_batches(BATCHES_PER_ROUND)
        measures.append(("ours", functools.partial(ours, documents), BATCHES_PER_ROUND * BATCH))
        rows = plain_batches(BATCHES_PER_ROUND)
        measures.append(("plain", functools.partial(plain_many, rows), BATCHES_PER_ROUND * BATCH))
        single = plain_batches(1)
        measures.append(("plain_per_row", functools.partial(plain_per_row, single), BATCH))
        shift = round_ % len(measures)
        for name, run, events in measures[shift:] + measures[:shift]:
            result = await _measure(run, events, pids)
            if round_:  # the first round warms connections, statements and code paths
                runs[name].append(result)
        if not round_:
            # Without statistics (autovacuum is off on the benchmark machine's server) the
            # planner answers append's idempotency lookup by scanning the tenant's whole log
            # once PostgreSQL settles on a generic plan. Analyse once, as autovacuum would.
            async with database.engine.begin() as connection:
                autovacuum = await connection.scalar(text("SHOW autovacuum"))
                await connection.execute(text("ANALYZE"))
        else:
            started = time.process_time()
            for document in documents[0]:
                canonical_json(document)
            canonical_us.append((time.process_time() - started) / BATCH * 1e6)
        _progress(
            f"append round {round_}/{APPEND_ROUNDS}: "
            + ", ".join(f"{name} {runs[name][-1]['per_s']:.0f}/s" for name in runs if runs[name])
        )

    async with database.session() as session:
        report = await verify_tenant(session, tenant_id)
    if not report.ok or report.tree_size != counters["ours"]:
        raise RuntimeError(f"the appended log does not verify: {report.to_json()}")

    def median_of(name: str, key: str) -> float:
        return _median([run[key] for run in runs[name]])

    value = median_of("ours", "per_s")
    peer_value = median_of("plain", "per_s")
    ratio = _ratio(value, peer_value)
    return emit(
        Figure(
            "audit.batch_append_per_s", round(value), "events/s", "plain INSERT executemany",
            ratio,
            {
                "database": "postgresql",
                "batch": BATCH,
                "rounds": APPEND_ROUNDS,
                "events_per_round": BATCHES_PER_ROUND * BATCH,
                "runs": [round(run["per_s"]) for run in runs["ours"]],
                "plain_per_s": round(peer_value),
                "plain_runs": [round(run["per_s"]) for run in runs["plain"]],
                "plain_one_statement_per_row_per_s": round(median_of("plain_per_row", "per_s")),
                "client_cpu_us_per_event": round(median_of("ours", "client_cpu_us"), 1),
                "plain_client_cpu_us_per_event": round(median_of("plain", "client_cpu_us"), 1),
                "db_cpu_us_per_event": round(median_of("ours", "db_cpu_us"), 1),
                "plain_db_cpu_us_per_event": round(median_of("plain", "db_cpu_us"), 1),
                "canonical_json_us_per_event": round(_median(canonical_us), 1),
                "statistics": f"ANALYZE after the unmeasured round (autovacuum {autovacuum})",
                "load_average": _load_average(),
                "log_size_at_end": report.tree_size,
                "signed_heads_at_end": report.heads_checked,
                "target_per_s": TARGET_APPEND_PER_S,
                "target_ratio": TARGET_APPEND_RATIO,
                "met_rate": value >= TARGET_APPEND_PER_S,
                "met_ratio": ratio is not None and ratio >= TARGET_APPEND_RATIO,
            },
        )
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# A log of LOG_SIZE events, written straight into its tables
# ---------------------------------------------------------------------------------------------

_MARK_EVENT_ID = "@EVENT_ID@"
_MARK_NUMBER = "@NUMBER@"
_MARK_ACTOR = "@ACTOR@"
_MARK_TIME = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)


def _document_template(tenant_id: str) -> str:
    """The canonical bytes ``build_document`` + ``canonical_json`` give an event, with
    ``%(name)s`` where it varies: formatting it is some thirty times faster than building and
    canonicalising each document (the rows it gives are compared with theirs)."""
    from keel.core.audit import build_document, event_time
    from keel_client.audit import canonical_json

    spec = _action()
    document = build_document(
        tenant_id=tenant_id, action=spec.name, spec=spec, event_id=_MARK_EVENT_ID,
        time=_MARK_TIME, **_event_fields(_MARK_NUMBER, _MARK_ACTOR),
    )  # fmt: skip
    text = canonical_json(document).decode().replace("%", "%%")
    for mark, field in (
        (f'"{_MARK_NUMBER}"', "%(number)d"),
        (_MARK_NUMBER, "%(number)d"),
        (_MARK_ACTOR, "%(actor)d"),
        (_MARK_EVENT_ID, "%(event_id)s"),
        (event_time(_MARK_TIME), "%(time)s"),
    ):
        if mark not in text:
            raise RuntimeError(f"the document template lost {mark!r}")
        text = text.replace(mark, field)
    return text


class _BulkLog:
    """One tenant's log, generated chunk by chunk as rows for COPY: the rows ``AuditLog.append``
    stores when called with batches of ``BATCH`` documents (events, payloads, the nodes each
    leaf completes, one signed head per batch)."""

    def __init__(self, tenant_id: str, key_id: str, key: Any) -> None:
        from keel.audit.service.tree import event_row, new_leaf
        from keel.core.db import utcnow

        self.tenant_id = tenant_id
        self.key_id = key_id
        self.key = key
        self.size = 0
        #: The hash of the last completed perfect subtree of each level: the tree's frontier.
        self.frontier: dict[int, bytes] = {}
        #: Every leaf hash, 32 bytes each, to check proofs against later.
        self.leaf_hashes = bytearray()
        self.template = _document_template(tenant_id)
        self.started = utcnow().replace(microsecond=0)
        sample = event_row(tenant_id, 0, new_leaf(_documents(tenant_id, 0, 1)[0]), b"", utcnow())
        self.event_columns = list(sample)
        self.checked = 0

    def add_leaf(self, digest: bytes, nodes: list[tuple[Any, ...]] | None = None) -> None:
        """Append a leaf hash to the tree; the nodes it completes go to ``nodes``."""
        level, position, current = 0, self.size, digest
        while position & 1:
            current = hashlib.sha256(b"\x01" + self.frontier[level] + current).digest()
            level, position = level + 1, position >> 1
            if nodes is not None:
                nodes.append((self.tenant_id, level, position, current))
        self.frontier[level] = current
        self.leaf_hashes += digest
        self.size += 1

    def root(self) -> bytes:
        from keel_client.audit import range_hash

        def frontier_node(level: int, index: int) -> bytes:
            assert index == (self.size >> level) - 1
            return self.frontier[level]

        return range_hash(0, self.size, frontier_node)

    def event(self, number: int, event_id: str, moment: datetime) -> bytes:
        from keel.core.audit import event_time

        values = {
            "number": number,
            "actor": number % ACTORS,
            "event_id": event_id,
            "time": event_time(moment),
        }
        return (self.template % values).encode()

    def chunk(self, count: int) -> dict[str, list[tuple[Any, ...]]]:
        """The next ``count`` events' rows, table by table."""
        from keel.core.db import utcnow
        from keel.core.ids import new_id
        from keel_client.audit import tree_head_message

        spec = _action()
        events: list[tuple[Any, ...]] = []
        payloads: list[tuple[Any, ...]] = []
        nodes: list[tuple[Any, ...]] = []
        heads: list[tuple[Any, ...]] = []
        tenant_id, sha256 = self.tenant_id, hashlib.sha256
        sequenced_at = utcnow()
        for _ in range(count):
            index = self.size
            event_id = new_id()
            moment = self.started + timedelta(microseconds=index)
            document = self.event(index, event_id, moment)
            digest = sha256(b"\x00" + document).digest()
            events.append((
                tenant_id, index, event_id, moment, spec.name, "success", str(spec.sensitivity),
                "user", f"user-{index % ACTORS}", "invoice", f"inv-{index}", digest,
                sha256(document).digest(), sequenced_at,
            ))  # fmt: skip
            payloads.append((tenant_id, index, document))
            self.add_leaf(digest, nodes)
            if index % 9_973 == 0:  # a sample, across the whole log
                self._check(events[-1], document)
            if self.size % BATCH == 0:
                root, timestamp = self.root(), int(time.time() * 1000)
                message = tree_head_message(tenant_id, self.size, root, timestamp, self.key_id)
                heads.append(
                    (tenant_id, self.size, root, timestamp, self.key_id, self.key.sign(message))
                )
                sequenced_at = utcnow()
        return {
            "audit_events": events,
            "audit_payloads": payloads,
            "audit_nodes": nodes,
            "audit_tree_heads": heads,
        }

    def _check(self, row: tuple[Any, ...], document: bytes) -> None:
        """The row and document must be those the service builds from the same event."""
        from keel.audit.service.tree import event_row, new_leaf
        from keel.core.audit import build_document
        from keel_client.audit import leaf_hash

        index, event_id, moment, sequenced_at = row[1], row[2], row[3], row[-1]
        spec = _action()
        expected = build_document(
            tenant_id=self.tenant_id, action=spec.name, spec=spec, event_id=event_id,
            time=moment, **_event_fields(index, index % ACTORS),
        )  # fmt: skip
        leaf = new_leaf(expected)
        if leaf.document != document:
            raise RuntimeError(f"bulk event {index}: its document differs from build_document's")
        service_row = event_row(self.tenant_id, index, leaf, leaf_hash(leaf.document), sequenced_at)
        if tuple(service_row.values()) != row:
            raise RuntimeError(f"bulk event {index}: its row differs from the service's")
        self.checked += 1


_COLUMNS = {
    "audit_payloads": ["tenant_id", "leaf_index", "document"],
    "audit_nodes": ["tenant_id", "level", "index", "hash"],
    "audit_tree_heads": ["tenant_id", "tree_size", "root_hash", "timestamp", "key_id", "signature"],
}


async def write_large_log(url: str, database: Any, audit: Any, tenant_id: str) -> _BulkLog:
    """``LOG_SIZE`` events for ``tenant_id``: all but the last batch copied in, the last batch
    appended by ``AuditLog.append``; checked as the module docstring says."""
    import asyncpg

    from keel_client.audit import canonical_json, leaf_hash

    async with database.session() as session:
        key_id, key = await audit.signing_key(session)
    log = _BulkLog(tenant_id, key_id, key)
    columns = {"audit_events": log.event_columns, **_COLUMNS}
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        while log.size < LOG_SIZE - BATCH:
            rows = log.chunk(min(BULK_CHUNK, LOG_SIZE - BATCH - log.size))
            async with connection.transaction():
                for table, records in rows.items():
                    await connection.copy_records_to_table(
                        table, records=records, columns=columns[table]
                    )
            if log.size % (BULK_CHUNK * 4) == 0:
                _progress(f"large log: {log.size:,} events written")
        # As a log long written to would be: statistics current, the visibility map set.
        for table in columns:
            await connection.execute(f"VACUUM (ANALYZE) {table}")
    finally:
        await connection.close()
    _progress(f"large log: {log.size:,} events copied, {log.checked} sampled rows checked")

    documents = _documents(tenant_id, log.size, BATCH)
    receipts = await audit.append(tenant_id, documents)
    for receipt, document in zip(receipts, documents, strict=True):
        digest = leaf_hash(canonical_json(document))
        if receipt.leaf_index != log.size or receipt.leaf_hash != digest:
            raise RuntimeError(f"append on the bulk log answered {receipt}")
        log.add_leaf(digest)
    async with database.session() as session:
        head = await audit.latest_head(session, tenant_id)
    if head is None or head.tree_size != LOG_SIZE or head.root_hash != log.root():
        raise RuntimeError("the head AuditLog.append signed differs from the recomputed root")
    return log


# ---------------------------------------------------------------------------------------------
# audit.inclusion_proof_ms
# ---------------------------------------------------------------------------------------------


async def inclusion_proofs(database: Any, audit: Any, tenant_id: str, log: _BulkLog) -> Figure:
    from keel_client.audit import public_keys_from_jwks, verify_inclusion, verify_tree_head

    async with database.session() as session:
        head = await audit.latest_head(session, tenant_id)
        keys = public_keys_from_jwks(await audit.jwks(session))
    assert head is not None
    verify_tree_head(head, keys)
    rng = random.Random(SEED)
    indexes = [rng.randrange(head.tree_size) for _ in range(PROOF_WARMUP + PROOFS)]
    call_ms: list[float] = []
    request_ms: list[float] = []
    lengths: list[int] = []
    for position, index in enumerate(indexes):
        started = time.perf_counter()
        async with database.session() as session:
            called = time.perf_counter()
            proof = await audit.inclusion_proof(session, tenant_id, index, head.tree_size)
            returned = time.perf_counter()
        ended = time.perf_counter()
        # Against the leaf hash recomputed here, not the one the log stores.
        digest = bytes(log.leaf_hashes[index * 32 : index * 32 + 32])
        verify_inclusion(digest, index, head.tree_size, proof, head.root_hash)
        if position >= PROOF_WARMUP:
            call_ms.append((returned - called) * 1000)
            request_ms.append((ended - started) * 1000)
            lengths.append(len(proof))
    p50, p99 = _median(call_ms), _percentile(call_ms, 0.99)
    return emit(
        Figure(
            "audit.inclusion_proof_ms", round(p50, 3), "ms", None, None,
            {
                "database": "postgresql",
                "tree_size": head.tree_size,
                "proofs": len(call_ms),
                "p99_ms": round(p99, 3),
                "mean_ms": round(statistics.fmean(call_ms), 3),
                "max_ms": round(max(call_ms), 3),
                "session_p50_ms": round(_median(request_ms), 3),
                "session_p99_ms": round(_percentile(request_ms, 0.99), 3),
                "proof_hashes": round(statistics.fmean(lengths), 1),
                "verified": "every proof, keel_client.audit.verify_inclusion, signed head",
                "load_average": _load_average(),
                "target_ms": TARGET_PROOF_MS,
                "met": p50 <= TARGET_PROOF_MS,
                "met_p99": p99 <= TARGET_PROOF_MS,
            },
        )
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# audit.verify_1m_s (the verification runs in a child process: its own peak RSS)
# ---------------------------------------------------------------------------------------------


def verification(url: str, tenant_id: str) -> Figure:
    command = [
        sys.executable, "-m", "benchmarks.bench_audit", "verify", "--url", url,
        "--tenant", tenant_id,
    ]  # fmt: skip
    completed = subprocess.run(
        command, capture_output=True, timeout=900, check=False, cwd=REPO_ROOT, env=clean_env()
    )
    if completed.returncode != 0:
        raise RuntimeError(f"verification failed: {completed.stderr.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    if not result["ok"] or result["tree_size"] != LOG_SIZE:
        raise RuntimeError(f"the large log does not verify: {result}")
    seconds = result["seconds"]
    return emit(
        Figure(
            "audit.verify_1m_s", round(seconds, 2), "s", None, None,
            {
                "database": "postgresql",
                "tree_size": result["tree_size"],
                "signed_heads": result["heads_checked"],
                "events_per_s": round(result["tree_size"] / seconds),
                "peak_rss_mb": result["peak_rss_mb"],
                "rss_before_mb": result["rss_before_mb"],
                "load_average": _load_average(),
                "process": "a child process: Database + verify_tenant, as keel audit verify",
            },
        )
    )  # fmt: skip


async def _verify(url: str, tenant_id: str) -> dict[str, Any]:
    import psutil

    from keel.audit.service.verify import verify_tenant
    from keel.core.db import Database
    from keel.settings import Settings

    database = Database.from_settings(Settings(database_url=url))
    try:
        rss_before = psutil.Process().memory_info().rss
        started = time.perf_counter()
        async with database.session() as session:
            report = await verify_tenant(session, tenant_id)
        seconds = time.perf_counter() - started
    finally:
        await database.dispose()
    return {
        "ok": report.ok,
        "problems": report.problems[:5],
        "tree_size": report.tree_size,
        "heads_checked": report.heads_checked,
        "seconds": seconds,
        "rss_before_mb": round(rss_before / 2**20, 1),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _verify_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_audit.py verify")
    parser.add_argument("--url", required=True)
    parser.add_argument("--tenant", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_verify(args.url, args.tenant))), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------


async def _run(url: str) -> list[Figure]:
    from keel.audit.service import AuditLog
    from keel.core.crypto import Keyring, MasterKey
    from keel.core.db import Database
    from keel.core.tenancy import create_tenant
    from keel.migrations import upgrade
    from keel.settings import Settings

    database = Database.from_settings(Settings(database_url=url))
    try:
        await upgrade(database)
        async with database.session() as session:
            appended = (await create_tenant(session, "bench-append")).id
            large = (await create_tenant(session, "bench-million")).id
        audit = AuditLog(Keyring(MasterKey.generate()), database.session)
        _progress("schema migrated, tenants created")
        figures = [await batch_append(database, audit, appended)]
        log = await write_large_log(url, database, audit, large)
        _progress(f"large log: {log.size:,} events, the last {BATCH:,} appended by AuditLog")
        figures.append(await inclusion_proofs(database, audit, large, log))
    finally:
        await database.dispose()
    _progress("verifying the large log in a child process")
    figures.append(verification(url, large))
    return figures


def main() -> list[Figure]:
    with postgres_database("keel_bench_audit") as url:
        figures = asyncio.run(_run(url))
    _progress(f"done in {time.perf_counter() - _STARTED:.0f} s")
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["verify"]:
        sys.exit(_verify_main(sys.argv[2:]))
    main()
