"""Recipients: profiles (``identify``), preferences, topics, the in-app inbox, erasure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from keel.auth.dependencies import CallerActor
from keel.core.audit import record_event
from keel.core.changes import Change, change_stream_response
from keel.core.deps import DbSession
from keel.core.http import etag_for
from keel.notify import schemas
from keel.notify.auth import RecipientAdmin, RecipientReader, RecipientWriter
from keel.notify.models import NotifyRecipient
from keel.notify.service import inbox as inbox_service
from keel.notify.service import recipients
from keel.notify.service.runtime import INBOX_STREAM

router = APIRouter(tags=["notify"])

RecipientPath = Annotated[str, Path(min_length=1, max_length=200)]
TopicPath = Annotated[str, Path(min_length=1, max_length=128)]


def recipient_document(recipient: NotifyRecipient) -> schemas.Recipient:
    return schemas.Recipient(
        id=recipient.external_id,
        email=recipient.email,
        phone=recipient.phone,
        push_targets=recipient.push_targets,
        locale=recipient.locale,
        timezone=recipient.timezone,
        quiet_hours=recipient.quiet_hours,
        traits=recipient.traits,
        version=recipient.version,
        created_at=recipient.created_at,
        updated_at=recipient.updated_at,
    )


@router.put("/recipients/{recipient_id}", response_model=schemas.Recipient)
async def identify(
    recipient_id: RecipientPath,
    body: schemas.Identify,
    principal: RecipientWriter,
    actor: CallerActor,
    session: DbSession,
    response: Response,
) -> schemas.Recipient:
    """Create or update a recipient's profile; fields left out keep their values."""
    fields: dict[str, Any] = body.model_dump(exclude_unset=True)
    recipient, created = await recipients.identify(
        session, principal.tenant_id, recipient_id, fields
    )
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.recipient.identify",
        actor=actor,
        target_type="notify_recipient",
        target_id=recipient_id,
        data={"fields": sorted(fields), "created": created},
    )
    response.status_code = 201 if created else 200
    response.headers["ETag"] = etag_for(recipient.version)
    return recipient_document(recipient)


@router.get("/recipients/{recipient_id}", response_model=schemas.Recipient)
async def get_recipient(
    recipient_id: RecipientPath, principal: RecipientReader, session: DbSession
) -> schemas.Recipient:
    return recipient_document(
        await recipients.get_recipient(session, principal.tenant_id, recipient_id)
    )


@router.delete("/recipients/{recipient_id}", status_code=204)
async def erase_recipient(
    recipient_id: RecipientPath, principal: RecipientAdmin, actor: CallerActor, session: DbSession
) -> Response:
    """Erase a recipient's data: profile, preferences, topics and inbox; their messages keep
    only their status history. Their addresses stay on the suppression list if there."""
    stripped = await recipients.erase_recipient(session, principal.tenant_id, recipient_id)
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.recipient.erase",
        actor=actor,
        target_type="notify_recipient",
        target_id=recipient_id,
        data={"messages_stripped": stripped},
    )
    return Response(status_code=204)


@router.get("/recipients/{recipient_id}/preferences", response_model=schemas.Preferences)
async def get_preferences(
    recipient_id: RecipientPath, principal: RecipientReader, session: DbSession
) -> schemas.Preferences:
    recipient = await recipients.get_recipient(session, principal.tenant_id, recipient_id)
    choices = await recipients.preferences_of(session, recipient)
    return schemas.Preferences(
        preferences=[schemas.PreferenceChoice(**choice.__dict__) for choice in choices]
    )


@router.put("/recipients/{recipient_id}/preferences", response_model=schemas.Preferences)
async def set_preferences(
    recipient_id: RecipientPath,
    body: schemas.Preferences,
    principal: RecipientWriter,
    actor: CallerActor,
    session: DbSession,
) -> schemas.Preferences:
    """Record the recipient's choices (``category`` or ``*``, ``channel`` or ``*``); each
    replaces the earlier choice for its pair. Critical categories ignore them."""
    recipient = await recipients.get_recipient(session, principal.tenant_id, recipient_id)
    choices = await recipients.set_preferences(
        session,
        recipient,
        [recipients.Choice(c.category, c.channel, c.enabled) for c in body.preferences],
    )
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.preferences.set",
        actor=actor,
        target_type="notify_recipient",
        target_id=recipient_id,
        data={"changes": [c.model_dump() for c in body.preferences]},
    )
    return schemas.Preferences(
        preferences=[schemas.PreferenceChoice(**choice.__dict__) for choice in choices]
    )


@router.post("/topics/{topic}/subscribers", response_model=schemas.TopicMembers)
async def subscribe(
    topic: TopicPath,
    body: schemas.TopicSubscribe,
    principal: RecipientWriter,
    actor: CallerActor,
    session: DbSession,
) -> schemas.TopicMembers:
    added = await recipients.subscribe(session, principal.tenant_id, topic, body.recipients)
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.topic.subscribe",
        actor=actor,
        target_type="notify_topic",
        target_id=topic,
        data={"added": added},
    )
    members = await recipients.topic_members(session, principal.tenant_id, topic)
    return schemas.TopicMembers(topic=topic, recipients=members)


@router.delete("/topics/{topic}/subscribers/{recipient_id}", status_code=204)
async def unsubscribe_from_topic(
    topic: TopicPath,
    recipient_id: RecipientPath,
    principal: RecipientWriter,
    actor: CallerActor,
    session: DbSession,
) -> Response:
    await recipients.unsubscribe_from_topic(session, principal.tenant_id, topic, recipient_id)
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.topic.unsubscribe",
        actor=actor,
        target_type="notify_topic",
        target_id=topic,
        data={"recipient": recipient_id},
    )
    return Response(status_code=204)


@router.get("/topics/{topic}/subscribers", response_model=schemas.TopicMembers)
async def topic_members(
    topic: TopicPath, principal: RecipientReader, session: DbSession
) -> schemas.TopicMembers:
    members = await recipients.topic_members(session, principal.tenant_id, topic)
    return schemas.TopicMembers(topic=topic, recipients=members)


@router.get("/recipients/{recipient_id}/inbox", response_model=schemas.Inbox)
async def inbox(
    recipient_id: RecipientPath,
    principal: RecipientReader,
    session: DbSession,
    unread_only: bool = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> schemas.Inbox:
    """A recipient's in-app messages, newest first, and how many are unread."""
    recipient = await recipients.get_recipient(session, principal.tenant_id, recipient_id)
    items, unread = await inbox_service.list_inbox(
        session, recipient, unread_only=unread_only, limit=limit
    )
    return schemas.Inbox(
        items=[schemas.InboxItem.model_validate(item) for item in items], unread=unread
    )


@router.get(
    "/recipients/{recipient_id}/inbox/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def inbox_stream(
    recipient_id: RecipientPath, principal: RecipientReader, request: Request, session: DbSession
) -> StreamingResponse:
    """New inbox items of a recipient, live, as Server-Sent Events (``event: notify-inbox``,
    ``data.data.item``: the new item's id; read it with the inbox). Resumes after
    ``Last-Event-ID``. Live across processes with ``KEEL_REDIS_URL`` (or on the embedded
    default); without it, a delivery in ``keel worker`` reaches a stream on reconnection."""
    recipient = await recipients.get_recipient(session, principal.tenant_id, recipient_id)
    wanted = recipient.id

    async def only_theirs(changes: Sequence[Change]) -> Sequence[Change]:
        return [change for change in changes if change.subject == wanted]

    return change_stream_response(request, principal.tenant_id, [INBOX_STREAM], allow=only_theirs)


@router.post("/recipients/{recipient_id}/inbox/read", response_model=schemas.Inbox)
async def mark_read(
    recipient_id: RecipientPath,
    body: schemas.MarkRead,
    principal: RecipientWriter,
    session: DbSession,
) -> schemas.Inbox:
    """Mark items (or ``all``) read; answers the inbox as :func:`inbox` does."""
    recipient = await recipients.get_recipient(session, principal.tenant_id, recipient_id)
    await inbox_service.mark_read(session, recipient, None if body.all else body.ids)
    return await inbox(recipient_id, principal, session)
