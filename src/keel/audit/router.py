"""The audit API: append, read, query, signed tree heads and proofs, the action catalogue."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

import keel.audit.retention  # noqa: F401  (registers audit.retention.erase in the catalogue)
from keel.audit import export, schemas
from keel.audit.service import AuditLog, EventFilter, Receipt, is_reserved
from keel.auth.dependencies import CurrentPrincipal, request_actor, require_permission
from keel.core.audit import ActionSpec, Outcome, Sensitivity, build_document, builtin_actions
from keel.core.deps import DbSession, get_context
from keel.core.errors import NotFound, ValidationFailed
from keel.core.http import Page, decode_cursor, encode_cursor
from keel.core.timestamps import aware_to_utc
from keel_client.audit import TreeHead, canonical_json

WRITE = "audit:event:write"
READ = "audit:event:read"
#: Exporting needs this as well as READ: a bulk copy of the trail is granted on its own.
EXPORT = "audit:event:export"


def _audit(request: Request) -> AuditLog:
    audit = get_context(request).resources.get("audit")
    if not isinstance(audit, AuditLog):
        raise RuntimeError("the audit service is not running in this process")
    return audit


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _head(head: TreeHead) -> schemas.TreeHeadOut:
    return schemas.TreeHeadOut(**head.to_json())


def _receipt(receipt: Receipt) -> schemas.Receipt:
    return schemas.Receipt(
        id=receipt.event_id, leaf_index=receipt.leaf_index, leaf_hash=_b64(receipt.leaf_hash)
    )


async def _documents(
    audit: AuditLog, session: Any, tenant_id: str, events: list[schemas.EventIn]
) -> list[dict[str, Any]]:
    documents = []
    for position, event in enumerate(events):
        if is_reserved(event.action):
            raise ValidationFailed(
                f"events[{position}]: {event.action!r} is Keel's own action; only Keel records it."
            )
        try:
            spec = await audit.action(session, tenant_id, event.action)
        except ValidationFailed as error:
            raise ValidationFailed(f"events[{position}]: {error.detail}") from None
        documents.append(
            build_document(
                tenant_id=tenant_id,
                action=event.action,
                spec=spec,
                event_id=event.id,
                time=event.time,
                outcome=event.outcome,
                actor=event.actor.model_dump() if event.actor else None,
                target=event.target.model_dump() if event.target else None,
                reason=event.reason,
                request_id=event.request_id,
                trace_id=event.trace_id,
                sensitivity=event.sensitivity,
                data=event.data,
            )
        )
    return documents


def event_filter(
    since: datetime | None = None,
    until: datetime | None = None,
    actor_id: Annotated[str | None, Query(max_length=200)] = None,
    actor_type: Annotated[str | None, Query(max_length=40)] = None,
    action: Annotated[str | None, Query(max_length=128, description="prefix")] = None,
    target_type: Annotated[str | None, Query(max_length=60)] = None,
    target_id: Annotated[str | None, Query(max_length=200)] = None,
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


def _request_hashes(events: Sequence[BaseModel]) -> list[bytes]:
    """What a retry must repeat: the events as sent, before redaction or defaults."""
    return [
        hashlib.sha256(canonical_json(event.model_dump(mode="json", exclude_none=True))).digest()
        for event in events
    ]


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["audit"])

    @router.post(
        "/events",
        status_code=status.HTTP_201_CREATED,
        response_model=schemas.ReceiptOut,
        dependencies=[require_permission(WRITE)],
    )
    async def append_event(
        body: schemas.EventIn, request: Request, principal: CurrentPrincipal, session: DbSession
    ) -> schemas.ReceiptOut:
        """Append one event; the answer is its receipt (leaf index) and the signed head."""
        audit = _audit(request)
        documents = await _documents(audit, session, principal.tenant_id, [body])
        await session.commit()  # a request holds one connection at a time; the log takes its own
        (receipt,) = await audit.append(principal.tenant_id, documents, _request_hashes([body]))
        head = await audit.latest_head(session, principal.tenant_id)
        assert head is not None
        return schemas.ReceiptOut(**_receipt(receipt).model_dump(), tree_head=_head(head))

    @router.post(
        "/events/batch",
        response_model=schemas.BatchReceipts,
        dependencies=[require_permission(WRITE)],
    )
    async def append_batch(
        body: schemas.EventBatch,
        request: Request,
        principal: CurrentPrincipal,
        session: DbSession,
    ) -> schemas.BatchReceipts:
        """Append up to 1,000 events at once, all or none; idempotent on each event's id."""
        audit = _audit(request)
        documents = await _documents(audit, session, principal.tenant_id, body.events)
        await session.commit()  # a request holds one connection at a time; the log takes its own
        receipts = await audit.append(principal.tenant_id, documents, _request_hashes(body.events))
        head = await audit.latest_head(session, principal.tenant_id)
        assert head is not None
        return schemas.BatchReceipts(
            receipts=[_receipt(receipt) for receipt in receipts], tree_head=_head(head)
        )

    @router.get(
        "/events", response_model=Page[dict[str, Any]], dependencies=[require_permission(READ)]
    )
    async def list_events(
        request: Request,
        principal: CurrentPrincipal,
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
        events = await _audit(request).events(
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
                f"`{export.TREE_HEAD_HEADER}` header.",
                "content": {"application/jsonl": {}, "text/csv": {}},
            }
        },
        dependencies=[require_permission(READ), require_permission(EXPORT)],
    )
    async def export_events(
        request: Request,
        principal: CurrentPrincipal,
        session: DbSession,
        filters: Filters,
        export_format: Annotated[
            export.ExportFormat, Query(alias="format")
        ] = export.ExportFormat.jsonl,
    ) -> StreamingResponse:
        """The events of the latest signed tree head, filtered as ``GET /events``, each with
        its inclusion proof in that head: JSON Lines (the head on the first line) or CSV (the
        head in the ``Keel-Tree-Head`` header). Needs ``audit:event:read`` and
        ``audit:event:export``; the export is itself recorded (``audit.log.export``)."""
        audit = _audit(request)
        head = await export.start_export(
            session,
            audit,
            principal.tenant_id,
            actor=request_actor(request, principal),
            export_format=export_format,
            filters=filters,
        )
        pages = export.exported_pages(audit, principal.tenant_id, head, filters)
        body = (
            export.jsonl_export(head, pages)
            if export_format is export.ExportFormat.jsonl
            else export.csv_export(pages)
        )
        return StreamingResponse(
            body,
            media_type=export_format.media_type,
            headers=export.export_headers(head, export_format),
        )

    @router.get("/events/{event_id}", dependencies=[require_permission(READ)])
    async def get_event(
        event_id: str, request: Request, principal: CurrentPrincipal, session: DbSession
    ) -> dict[str, Any]:
        return (await _audit(request).event(session, principal.tenant_id, event_id)).to_json()

    @router.get(
        "/tree/head", response_model=schemas.TreeHeadOut, dependencies=[require_permission(READ)]
    )
    async def tree_head(
        request: Request, principal: CurrentPrincipal, session: DbSession
    ) -> schemas.TreeHeadOut:
        """The latest signed tree head of the caller's tenant (signed now if events have been
        appended since)."""
        head = await _audit(request).fresh_head(session, principal.tenant_id)
        if head is None:
            raise NotFound("The log of this tenant is empty.")
        return _head(head)

    @router.get(
        "/proofs/inclusion",
        response_model=schemas.Proof,
        response_model_exclude_none=True,
        dependencies=[require_permission(READ)],
    )
    async def inclusion_proof(
        request: Request,
        principal: CurrentPrincipal,
        session: DbSession,
        event_id: Annotated[str | None, Query(max_length=64)] = None,
        leaf_index: Annotated[int | None, Query(ge=0)] = None,
        tree_size: Annotated[int | None, Query(ge=1)] = None,
    ) -> schemas.Proof:
        """Proof that an event (by id or leaf index) is in the tree of ``tree_size`` (default:
        the latest signed head, which the answer includes)."""
        audit = _audit(request)
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

    @router.get(
        "/proofs/consistency",
        response_model=schemas.Proof,
        response_model_exclude_none=True,
        dependencies=[require_permission(READ)],
    )
    async def consistency_proof(
        request: Request,
        principal: CurrentPrincipal,
        session: DbSession,
        first: Annotated[int, Query(ge=1)],
        second: Annotated[int, Query(ge=1)],
    ) -> schemas.Proof:
        """Proof that the tree of size ``first`` is a prefix of the tree of size ``second``."""
        proof = await _audit(request).consistency_proof(session, principal.tenant_id, first, second)
        return schemas.Proof(first=first, second=second, proof=[_b64(item) for item in proof])

    @router.get("/keys")
    async def keys(request: Request, session: DbSession, response: Response) -> dict[str, Any]:
        """The log's public Ed25519 keys (a JWK set): what verifies signed tree heads."""
        response.headers["Cache-Control"] = "public, max-age=300"
        return await _audit(request).jwks(session)

    @router.get(
        "/actions",
        response_model=list[schemas.ActionOut],
        dependencies=[require_permission(READ)],
    )
    async def list_actions(
        request: Request, principal: CurrentPrincipal, session: DbSession
    ) -> list[schemas.ActionOut]:
        """The catalogue: Keel's own actions and the tenant's."""
        own = await _audit(request).tenant_actions(session, principal.tenant_id)
        return [_action_out(spec, builtin=True) for spec in builtin_actions()] + [
            _action_out(spec) for spec in own
        ]

    @router.put(
        "/actions/{name}",
        response_model=schemas.ActionOut,
        dependencies=[require_permission("audit:action:write")],
    )
    async def put_action(
        name: str,
        body: schemas.ActionIn,
        request: Request,
        response: Response,
        principal: CurrentPrincipal,
        session: DbSession,
    ) -> schemas.ActionOut:
        """Register (or update) an action the tenant's services may record."""
        spec, created = await _audit(request).register_action(
            session,
            principal.tenant_id,
            ActionSpec(
                name,
                body.description,
                body.category,
                body.sensitivity,
                frozenset(body.sensitive_fields),
            ),
        )
        response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return _action_out(spec)

    return router


def _action_out(spec: ActionSpec, *, builtin: bool = False) -> schemas.ActionOut:
    return schemas.ActionOut(
        name=spec.name,
        description=spec.description,
        category=spec.category,
        sensitivity=spec.sensitivity,
        sensitive_fields=sorted(spec.sensitive_fields),
        builtin=builtin,
    )
