"""The audit API: append events and financial transactions, read and export them, signed
tree heads and proofs, the action catalogue."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from keel.audit import schemas
from keel.audit.auth import ActionWriter, EventExporter, EventReader, EventWriter
from keel.audit.service import AUDIT_RESOURCE, AuditLog, EventFilter, Receipt, request_hashes
from keel.audit.service import export as exports
from keel.auth.dependencies import CallerActor
from keel.core.audit import ActionSpec, builtin_actions, transaction_document
from keel.core.deps import DbSession, get_context
from keel.core.errors import NotFound, ValidationFailed
from keel.core.http import Page, decode_cursor, encode_cursor
from keel.core.timestamps import aware_to_utc
from keel_client.audit import FIELD_LIMITS, Outcome, Sensitivity, TreeHead

router = APIRouter(prefix="/v1", tags=["audit"])


async def get_audit_log(request: Request) -> AuditLog:
    """``async`` so FastAPI calls it inline, not in its thread pool."""
    audit = get_context(request).resources.get(AUDIT_RESOURCE)
    if audit is None:
        raise RuntimeError("the audit service is not running in this process")
    return audit


Audit = Annotated[AuditLog, Depends(get_audit_log)]


def event_filter(
    since: datetime | None = None,
    until: datetime | None = None,
    actor_id: Annotated[str | None, Query(max_length=FIELD_LIMITS["actor.id"])] = None,
    actor_type: Annotated[str | None, Query(max_length=FIELD_LIMITS["actor.type"])] = None,
    action: Annotated[str | None, Query(max_length=128, description="prefix")] = None,
    target_type: Annotated[str | None, Query(max_length=FIELD_LIMITS["target.type"])] = None,
    target_id: Annotated[str | None, Query(max_length=FIELD_LIMITS["target.id"])] = None,
    outcome: Outcome | None = None,
    sensitivity: Sensitivity | None = None,
) -> EventFilter:
    """The query filters of the event list and the export."""
    bounds = []
    for name, moment in (("since", since), ("until", until)):
        try:
            bounds.append(None if moment is None else aware_to_utc(moment))
        except ValueError as exc:
            raise ValidationFailed(f"{name}: {exc}.") from None
    since, until = bounds
    return EventFilter(
        since, until, actor_id, actor_type, action, target_type, target_id, outcome, sensitivity
    )


Filters = Annotated[EventFilter, Depends(event_filter)]


# -- appending -----------------------------------------------------------------------------------


@router.post("/events", status_code=status.HTTP_201_CREATED, response_model=schemas.ReceiptOut)
async def append_event(
    body: schemas.EventIn, principal: EventWriter, audit: Audit, session: DbSession
) -> schemas.ReceiptOut:
    """Append one event; the answer is its receipt (leaf index) and the signed head."""
    (receipt,), head = await audit.append_events(session, principal.tenant_id, [body])
    return _receipt_out(receipt, head)


@router.post("/events/batch", response_model=schemas.BatchReceipts)
async def append_batch(
    body: schemas.EventBatch, principal: EventWriter, audit: Audit, session: DbSession
) -> schemas.BatchReceipts:
    """Append up to 1,000 events at once, all or none; idempotent on each event's id."""
    receipts, head = await audit.append_events(session, principal.tenant_id, body.events)
    return schemas.BatchReceipts(
        receipts=[_receipt(receipt) for receipt in receipts], tree_head=_head(head)
    )


@router.post(
    "/transactions", status_code=status.HTTP_201_CREATED, response_model=schemas.ReceiptOut
)
async def record_transaction(
    body: schemas.TransactionIn, principal: EventWriter, audit: Audit, session: DbSession
) -> schemas.ReceiptOut:
    """Record a financial transaction in the log now; the answer is its receipt (event id
    ``txn:<transaction_id>``, leaf index) and the signed head.

    The amount is a JSON string (``"1234.50"``), stored exactly as sent; a JSON number is
    refused. Sending the same transaction again answers its first receipt; the same
    ``transaction_id`` with other fields is a conflict (409). It is recorded as Keel's own
    action ``finance.transaction.record``, which ``POST /events`` refuses, so every event of
    that action has this shape.
    """
    document = transaction_document(
        tenant_id=principal.tenant_id,
        transaction=body.transaction(),
        actor=body.recording_actor(),
    )
    (receipt,), head = await audit.append_documents(
        session, principal.tenant_id, [document], request_hashes([body])
    )
    return _receipt_out(receipt, head)


# -- reading and exporting -----------------------------------------------------------------------


@router.get("/events", response_model=Page[dict[str, Any]])
async def list_events(
    principal: EventReader,
    audit: Audit,
    session: DbSession,
    filters: Filters,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Page[dict[str, Any]]:
    """Events in log order, filtered; pass ``next_cursor`` back as ``cursor``."""
    after = None
    if cursor is not None:
        position = decode_cursor(cursor, 1)
        if not isinstance(position[0], int):
            raise ValidationFailed("The cursor is not one this API issued.")
        after = position[0]
    events = await audit.events(
        session, principal.tenant_id, filters=filters, after_index=after, limit=limit + 1
    )
    more = len(events) > limit
    events = events[:limit]
    next_cursor = encode_cursor([events[-1].leaf_index]) if more and events else None
    return Page(items=[event.to_json() for event in events], next_cursor=next_cursor)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The export, streamed; its signed head also in the "
            f"`{exports.TREE_HEAD_HEADER}` header.",
            "content": {"application/jsonl": {}, "text/csv": {}},
        }
    },
)
async def export_events(
    principal: EventExporter,
    actor: CallerActor,
    audit: Audit,
    session: DbSession,
    filters: Filters,
    export_format: Annotated[
        exports.ExportFormat, Query(alias="format")
    ] = exports.ExportFormat.jsonl,
) -> StreamingResponse:
    """The events of the latest signed tree head, filtered as ``GET /events``, each with
    its inclusion proof in that head: JSON Lines (the head on the first line) or CSV (the
    head in the ``Keel-Tree-Head`` header). Needs ``audit:event:read`` and
    ``audit:event:export``; the export is itself recorded (``audit.log.export``)."""
    head = await exports.start_export(
        session,
        audit,
        principal.tenant_id,
        actor=actor,
        export_format=export_format,
        filters=filters,
    )
    pages = exports.exported_pages(audit, principal.tenant_id, head, filters)
    body = (
        exports.jsonl_export(head, pages)
        if export_format is exports.ExportFormat.jsonl
        else exports.csv_export(pages)
    )
    return StreamingResponse(
        body,
        media_type=export_format.media_type,
        headers=exports.export_headers(head, export_format),
    )


@router.get("/events/{event_id}")
async def get_event(
    event_id: str, principal: EventReader, audit: Audit, session: DbSession
) -> dict[str, Any]:
    """One event by id, with its leaf; ``erased`` once retention took its document."""
    return (await audit.event(session, principal.tenant_id, event_id)).to_json()


# -- signed tree heads and proofs ----------------------------------------------------------------


@router.get("/tree/head", response_model=schemas.TreeHeadOut)
async def tree_head(
    principal: EventReader, audit: Audit, session: DbSession
) -> schemas.TreeHeadOut:
    """The latest signed tree head of the caller's tenant (signed now if events have been
    appended since)."""
    head = await audit.fresh_head(session, principal.tenant_id)
    if head is None:
        raise NotFound("The log of this tenant is empty.")
    return _head(head)


@router.get("/proofs/inclusion", response_model=schemas.Proof, response_model_exclude_none=True)
async def inclusion_proof(
    principal: EventReader,
    audit: Audit,
    session: DbSession,
    event_id: Annotated[str | None, Query(max_length=64)] = None,
    leaf_index: Annotated[int | None, Query(ge=0)] = None,
    tree_size: Annotated[int | None, Query(ge=1)] = None,
) -> schemas.Proof:
    """Proof that an event (by id or leaf index) is in the tree of ``tree_size`` (default:
    the latest signed head, which the answer includes)."""
    if (event_id is None) == (leaf_index is None):
        raise ValidationFailed("Give event_id or leaf_index.")
    if event_id is not None:
        leaf_index = (await audit.event(session, principal.tenant_id, event_id)).leaf_index
    assert leaf_index is not None
    head = await audit.fresh_head(session, principal.tenant_id)
    if tree_size is None:
        if head is None:
            raise NotFound("The log of this tenant is empty.")
        tree_size = head.tree_size
    proof = await audit.inclusion_proof(session, principal.tenant_id, leaf_index, tree_size)
    return schemas.Proof(
        leaf_index=leaf_index,
        tree_size=tree_size,
        proof=[_b64(item) for item in proof],
        tree_head=_head(head) if head and head.tree_size == tree_size else None,
    )


@router.get("/proofs/consistency", response_model=schemas.Proof, response_model_exclude_none=True)
async def consistency_proof(
    principal: EventReader,
    audit: Audit,
    session: DbSession,
    first: Annotated[int, Query(ge=1)],
    second: Annotated[int, Query(ge=1)],
) -> schemas.Proof:
    """Proof that the tree of size ``first`` is a prefix of the tree of size ``second``."""
    proof = await audit.consistency_proof(session, principal.tenant_id, first, second)
    return schemas.Proof(first=first, second=second, proof=[_b64(item) for item in proof])


@router.get("/keys")
async def keys(audit: Audit, session: DbSession, response: Response) -> dict[str, Any]:
    """The log's public Ed25519 keys (a JWK set): what verifies signed tree heads."""
    response.headers["Cache-Control"] = "public, max-age=300"
    return await audit.jwks(session)


# -- the action catalogue ------------------------------------------------------------------------


@router.get("/actions", response_model=list[schemas.ActionOut])
async def list_actions(
    principal: EventReader, audit: Audit, session: DbSession
) -> list[schemas.ActionOut]:
    """The catalogue: Keel's own actions and the tenant's."""
    own = await audit.tenant_actions(session, principal.tenant_id)
    return [_action_out(spec, builtin=True) for spec in builtin_actions()] + [
        _action_out(spec) for spec in own
    ]


@router.put("/actions/{name}", response_model=schemas.ActionOut)
async def put_action(
    name: str,
    body: schemas.ActionIn,
    response: Response,
    principal: ActionWriter,
    actor: CallerActor,
    audit: Audit,
    session: DbSession,
) -> schemas.ActionOut:
    """Register (or update) an action the tenant's services may record; a new or changed
    entry is itself an audit event (``audit.action.register``)."""
    spec, created = await audit.register_action(
        session,
        principal.tenant_id,
        ActionSpec(
            name,
            body.description,
            body.category,
            body.sensitivity,
            frozenset(body.sensitive_fields),
        ),
        actor=actor,
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return _action_out(spec)


def build_router() -> APIRouter:
    """The audit API, as :mod:`keel.audit.spec` mounts it."""
    return router


# -- shaping answers -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _head(head: TreeHead) -> schemas.TreeHeadOut:
    return schemas.TreeHeadOut(**head.to_json())


def _receipt(receipt: Receipt) -> schemas.Receipt:
    return schemas.Receipt(
        id=receipt.event_id, leaf_index=receipt.leaf_index, leaf_hash=_b64(receipt.leaf_hash)
    )


def _receipt_out(receipt: Receipt, head: TreeHead) -> schemas.ReceiptOut:
    return schemas.ReceiptOut(**_receipt(receipt).model_dump(), tree_head=_head(head))


def _action_out(spec: ActionSpec, *, builtin: bool = False) -> schemas.ActionOut:
    return schemas.ActionOut(
        name=spec.name,
        description=spec.description,
        category=spec.category,
        sensitivity=spec.sensitivity,
        sensitive_fields=sorted(spec.sensitive_fields),
        builtin=builtin,
    )
