"""Exporting a tenant's log as JSON Lines or CSV, each event with the proof that checks it.

An export is pinned to the latest signed tree head when it starts: it holds the events of
that tree (filtered as ``GET /audit/v1/events`` filters), each with its leaf hash and its
inclusion proof in that tree, so a third party holding the log's public keys can check the
whole file offline (``keel_client.audit.verify_export_lines``). Events appended meanwhile
wait for the next export.

The events are read page by page, each page in a short session of its own, and the proofs
of a page are built from one fetch of the tree nodes they need: the cost is a few queries
per page of :data:`EXPORT_PAGE_SIZE` events, never one per event, and memory holds one page.

JSON Lines, one JSON object a line:

- first ``{"tree_head": {...}}``, the signed head (as ``GET /audit/v1/tree/head``);
- then per event ``{"event": <document, null once retention erased it>, "leaf_index",
  "leaf_hash", "inclusion_proof": [base64...]}`` in log order;
- last ``{"end": {"events": <count>}}``: an export without it was cut short.

CSV (RFC 4180, a header row, then one row per event): the columns of ``CSV_COLUMNS``;
``document`` is the stored canonical JSON (empty once erased) and ``inclusion_proof`` its
base64 hashes separated by spaces. The signed head is in the response header
``Keel-Tree-Head`` (compact JSON), as for JSON Lines.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.audit_actions import EXPORT_ACTION
from keel.audit.models import AuditEvent
from keel.audit.service.log import AuditLog
from keel.audit.service.reads import EventFilter, events_query
from keel.core.audit import Actor, record_event
from keel.core.errors import NotFound
from keel.core.tenancy import bind_tenant
from keel_client.audit import (
    CSV_COLUMNS,
    TreeHead,
    flat_columns,
    inclusion_path,
    nodes_for_ranges,
    range_hash,
)

#: Events read, proved and written per round trip (a measured trade-off: larger pages save
#: little once the node fetch is batched, and hold more in memory).
EXPORT_PAGE_SIZE = 500
#: Tree nodes asked for in one query at most; a page of a sparse filter needs many.
_NODES_PER_QUERY = 4_000

TREE_HEAD_HEADER = "Keel-Tree-Head"


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    csv = "csv"

    @property
    def media_type(self) -> str:
        return "application/jsonl" if self is ExportFormat.jsonl else "text/csv; header=present"


@dataclass(frozen=True)
class ExportedEvent:
    """An event of an export: its leaf, its stored document (``None`` once erased), its
    inclusion proof in the export's tree head."""

    leaf_index: int
    leaf_hash: bytes
    event_id: str
    action: str
    document: bytes | None
    proof: list[bytes]


async def start_export(
    session: AsyncSession,
    audit: AuditLog,
    tenant_id: str,
    *,
    actor: Actor,
    export_format: ExportFormat,
    filters: EventFilter,
) -> TreeHead:
    """The head an export is pinned to; the export itself is recorded as a sensitive read
    (on ``session``, so it is stored when the request's unit of work commits)."""
    head = await audit.fresh_head(session, tenant_id)
    if head is None:
        raise NotFound("The log of this tenant is empty.")
    record_event(
        session,
        tenant_id=tenant_id,
        action=EXPORT_ACTION,
        actor=actor,
        target_type="audit_log",
        target_id=tenant_id,
        data={
            "format": str(export_format),
            "tree_size": head.tree_size,
            "filters": _filters_json(filters),
        },
    )
    return head


async def exported_pages(
    audit: AuditLog,
    tenant_id: str,
    head: TreeHead,
    filters: EventFilter,
    *,
    page_size: int = EXPORT_PAGE_SIZE,
) -> AsyncIterator[list[ExportedEvent]]:
    """The filtered events of the tree ``head`` signs, page by page in log order, proved."""
    after = -1
    while True:
        async with audit.sessions() as session:
            bind_tenant(session, tenant_id)
            statement = (
                filters.apply(events_query())
                .where(AuditEvent.leaf_index > after, AuditEvent.leaf_index < head.tree_size)
                .order_by(AuditEvent.leaf_index)
                .limit(page_size)
            )
            rows = (await session.execute(statement)).all()
            if not rows:
                return
            paths = {row.leaf_index: inclusion_path(row.leaf_index, head.tree_size) for row in rows}
            wanted = nodes_for_ranges(r for path in paths.values() for r in path)
            nodes: dict[tuple[int, int], bytes] = {}
            for chunk in _chunks(sorted(wanted), _NODES_PER_QUERY):
                nodes.update(await audit.fetch_nodes(session, chunk))

        yield [
            ExportedEvent(
                row.leaf_index,
                row.leaf_hash,
                row.event_id,
                row.action,
                row.document,
                _proof(paths[row.leaf_index], nodes),
            )
            for row in rows
        ]
        if len(rows) < page_size:
            return
        after = rows[-1].leaf_index


async def jsonl_export(
    head: TreeHead, pages: AsyncIterator[list[ExportedEvent]]
) -> AsyncIterator[bytes]:
    """The export as JSON Lines: the head, one line per event, the end line."""
    yield _json_line({"tree_head": head.to_json()})
    count = 0
    async for page in pages:
        count += len(page)
        yield b"".join(_json_line(jsonl_record(event)) for event in page)
    yield _json_line({"end": {"events": count}})


def jsonl_record(event: ExportedEvent) -> dict[str, Any]:
    return {
        "event": None if event.document is None else json.loads(event.document),
        "leaf_index": event.leaf_index,
        "leaf_hash": _b64(event.leaf_hash),
        "inclusion_proof": [_b64(item) for item in event.proof],
    }


async def csv_export(pages: AsyncIterator[list[ExportedEvent]]) -> AsyncIterator[bytes]:
    """The export as CSV: the header row, one row per event (the head goes in a header)."""
    yield _csv_rows([CSV_COLUMNS])
    async for page in pages:
        yield _csv_rows(csv_row(event) for event in page)


def csv_row(event: ExportedEvent) -> list[str]:
    """An event's CSV columns: from its document, or only id and action once erased (the
    columns of ``audit_events`` outlive the document, but its content is what was erased)."""
    if event.document is None:
        flat = {"id": event.event_id, "action": event.action}
        document = ""
    else:
        flat = flat_columns(json.loads(event.document))
        document = event.document.decode()
    return [
        *(flat.get(column, "") for column in CSV_COLUMNS[:9]),
        str(event.leaf_index),
        _b64(event.leaf_hash),
        document,
        " ".join(_b64(item) for item in event.proof),
    ]


def export_headers(head: TreeHead, export_format: ExportFormat) -> dict[str, str]:
    compact = json.dumps(head.to_json(), separators=(",", ":"))
    return {
        TREE_HEAD_HEADER: compact,
        "Content-Disposition": (
            f'attachment; filename="audit-{head.tenant}-{head.tree_size}.{export_format}"'
        ),
        "Cache-Control": "no-store",
    }


def _proof(path: list[tuple[int, int]], nodes: dict[tuple[int, int], bytes]) -> list[bytes]:
    return [
        range_hash(start, end, lambda level, index: nodes[(level, index)]) for start, end in path
    ]


def _filters_json(filters: EventFilter) -> dict[str, str]:
    values = {
        "since": filters.since.isoformat() if filters.since else None,
        "until": filters.until.isoformat() if filters.until else None,
        "actor_id": filters.actor_id,
        "actor_type": filters.actor_type,
        "action": filters.action_prefix,
        "target_type": filters.target_type,
        "target_id": filters.target_id,
        "outcome": filters.outcome,
        "sensitivity": filters.sensitivity,
    }
    return {key: str(value) for key, value in values.items() if value}


def _json_line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _csv_rows(rows: Iterable[Iterable[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
