"""Keel's notifications from a service: email, SMS, push, chat and in-app messages from
templates Keel keeps, ``keel_client.notify``.

Send (every send carries an ``Idempotency-Key``, so a retried send is one message)::

    from keel_client import Keel

    async with Keel.from_env() as keel:
        ref = await keel.notify.send_email(
            to="user@example.com", template="welcome", context={"name": "John"},
            tags=["onboarding"], schedule_at=None,
        )
        await keel.notify.identify("user-42", email="ada@example.com", timezone="Asia/Tokyo")
        await keel.notify.send_email(recipient="user-42", template="welcome",
                                     context={"name": "Ada"})
        print((await keel.notify.message(ref.id)).status)

Private modules by concept, behind this curated list: ``_models`` (what the endpoints
answer, what the sends return, what a caller builds), ``_client`` (``NotifyClient``) and
``_sync_client`` (``SyncNotifyClient``, the blocking face). See ``docs/client/notify.md``.
"""

from __future__ import annotations

from keel_client.notify._client import (
    DEFAULT_PUSH_TEMPLATE,
    PUSH_TEMPLATE_CONTENT,
    UNSET,
    NotifyClient,
    Unset,
)
from keel_client.notify._models import (
    BatchRecipient,
    BatchRef,
    Channel,
    Inbox,
    InboxItem,
    Message,
    MessageDetail,
    MessageEvent,
    MessageRef,
    MessageStatus,
    Preference,
    Recipient,
    TemplateVersion,
)
from keel_client.notify._sync_client import SyncNotifyClient

__all__ = [
    "DEFAULT_PUSH_TEMPLATE",
    "PUSH_TEMPLATE_CONTENT",
    "UNSET",
    "BatchRecipient",
    "BatchRef",
    "Channel",
    "Inbox",
    "InboxItem",
    "Message",
    "MessageDetail",
    "MessageEvent",
    "MessageRef",
    "MessageStatus",
    "NotifyClient",
    "Preference",
    "Recipient",
    "SyncNotifyClient",
    "TemplateVersion",
    "Unset",
]
