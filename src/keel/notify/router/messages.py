"""Sending: one message or a batch (both take an ``Idempotency-Key``, kept 24 hours), and a
message's status and history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.dependencies import CallerActor
from keel.core.audit import record_event
from keel.core.deps import Context, DbSession
from keel.core.errors import ValidationFailed
from keel.core.idempotency import IdempotencyKeyHeader, idempotent
from keel.notify import schemas
from keel.notify.auth import MessageReader, MessageSender
from keel.notify.models import NotifyMessage
from keel.notify.service import messages, recipients

router = APIRouter(tags=["notify"])


def message_document(message: NotifyMessage) -> dict[str, Any]:
    return schemas.Message.model_validate(message).model_dump(mode="json")


@router.post(
    "/messages",
    status_code=202,
    response_model=schemas.Message,
    responses={200: {"description": "A digest took the send into a message already waiting."}},
)
async def send_message(
    body: schemas.MessageCreate,
    principal: MessageSender,
    actor: CallerActor,
    context: Context,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Send one message: checked whole (the template renders with the data, the address
    parses, the schedule is ahead), then queued for delivery. ``suppressed`` or ``skipped``
    when the address is suppressed or the recipient opted out (nothing is sent)."""
    tenant_id = principal.tenant_id
    request = messages.SendRequest(
        channel=body.channel,
        template=body.template,
        recipient=body.recipient,
        to=body.to,
        data=body.data,
        tags=body.tags,
        locale=body.locale,
        send_at=body.send_at,
        send_at_local=body.send_at_local,
        digest=messages.Digest(body.digest.key, body.digest.window_seconds)
        if body.digest
        else None,
        push_data=body.push_data,
    )

    async def write(session: AsyncSession) -> tuple[int, dict[str, Any]]:
        accepted = await messages.accept(
            session,
            tenant_id,
            request,
            max_data_bytes=context.settings.notify.max_data_bytes,
            hash_context_key=context.keyring.token_hash,
        )
        message = accepted.message
        record_event(
            session,
            tenant_id=tenant_id,
            action="notify.message.send",
            actor=actor,
            target_type="notify_message",
            target_id=message.id,
            data={
                "template": message.template,
                "channel": message.channel,
                "category": message.category,
                "status": message.status,
                "digest": not accepted.created or None,
            },
        )
        return (202 if accepted.created else 200), message_document(message)

    return await idempotent(
        context.database,
        tenant_id,
        "notify.send",
        idempotency_key,
        body.model_dump(mode="json"),
        write,
    )


@router.post("/messages/batch", status_code=202, response_model=schemas.BatchAccepted)
async def send_batch(
    body: schemas.BatchCreate,
    principal: MessageSender,
    actor: CallerActor,
    context: Context,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """One template to many recipients (up to ``KEEL_NOTIFY__MAX_BATCH``, 100,000), or to every
    subscriber of a ``topic``: accepted in bulk and delivered in jobs; preferences and
    suppressions apply as each is delivered."""
    tenant_id = principal.tenant_id
    settings = context.settings.notify
    if (body.topic is None) == (not body.recipients):
        raise ValidationFailed("A batch names its recipients or a topic, one of the two.")
    entries = [
        messages.BatchEntry(recipient=entry.recipient, to=entry.to, data=entry.data)
        for entry in body.recipients
    ]

    async def write(session: AsyncSession) -> tuple[int, dict[str, Any]]:
        if body.topic is not None:
            members = await recipients.topic_members(session, tenant_id, body.topic)
            if not members:
                raise ValidationFailed(f"Topic {body.topic!r} has no subscribers.")
            entries[:] = [messages.BatchEntry(recipient=member) for member in members]
        accepted = await messages.accept_batch(
            session,
            tenant_id,
            channel=body.channel,
            template_name=body.template,
            entries=entries,
            data=body.data,
            tags=body.tags,
            send_at=body.send_at,
            max_data_bytes=settings.max_data_bytes,
            max_batch=settings.max_batch,
            chunk=settings.delivery_chunk,
            hash_context_key=context.keyring.token_hash,
        )
        record_event(
            session,
            tenant_id=tenant_id,
            action="notify.batch.send",
            actor=actor,
            target_type="notify_batch",
            target_id=accepted.batch_id,
            data={
                "template": body.template,
                "channel": body.channel,
                "messages": accepted.messages,
            },
        )
        return 202, {"batch_id": accepted.batch_id, "messages": accepted.messages}

    # The fingerprint of a 100,000-recipient body is its hash, not a copy of it; without a
    # key there is none to take (dumping the body alone cost 0.3 s).
    return await idempotent(
        context.database,
        tenant_id,
        "notify.batch",
        idempotency_key,
        body.model_dump(mode="json") if idempotency_key is not None else None,
        write,
    )


@router.get("/messages/{message_id}", response_model=schemas.MessageDetail)
async def get_message(
    message_id: str, principal: MessageReader, session: DbSession
) -> schemas.MessageDetail:
    """A message's status and its history (``queued → sent → delivered → opened``...)."""
    message, events = await messages.get_message(session, principal.tenant_id, message_id)
    return schemas.MessageDetail.model_validate(
        {
            **schemas.Message.model_validate(message).model_dump(),
            "events": [schemas.MessageEvent.model_validate(event) for event in events],
        }
    )


@router.get("/messages", response_model=schemas.MessageList)
async def list_messages(
    principal: MessageReader,
    session: DbSession,
    recipient: Annotated[str | None, Query(max_length=200)] = None,
    batch_id: Annotated[str | None, Query(max_length=36)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> schemas.MessageList:
    """Messages, newest first, of a recipient, a batch or a status."""
    found = await messages.list_messages(
        session,
        principal.tenant_id,
        recipient=recipient,
        batch_id=batch_id,
        status=status,
        limit=limit,
    )
    return schemas.MessageList(messages=[schemas.Message.model_validate(m) for m in found])
