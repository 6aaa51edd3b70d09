"""Who may do what with notifications: ``notify:<scope>:<level>``, one dependency per route.

Scopes: ``messages`` (``write``: send one or a batch; ``read``: a message and its history),
``templates`` (``write``: publish and roll back; ``read``: templates, versions, preview),
``recipients`` (``write``: identify, preferences, topics; ``admin``: erase; ``read``:
profiles, preferences, inbox), ``settings`` (providers, senders, categories and the
suppression list: ``write`` to change, ``read`` to see). A level includes those below it
(``admin`` ⊃ ``write`` ⊃ ``read``); RBAC wildcards work as everywhere (``notify:*:read``).

The unsubscribe and tracking links in messages need no credential: they carry their own
(an opaque token, a keyed signature).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends

from keel.auth.dependencies import Access, CurrentPrincipal, holds_access
from keel.core.errors import Forbidden
from keel_client.auth import Principal


def require_notify_access(scope: str, access: Access) -> Any:
    """403 unless the caller holds ``notify:<scope>:<access>`` or a level above it."""

    async def check(principal: CurrentPrincipal) -> Principal:
        if not holds_access(principal, "notify", scope, access):
            raise Forbidden(f"This needs the permission 'notify:{scope}:{access}'.")
        return principal

    check.__name__ = f"require_notify_{scope}_{access}"
    return Depends(check)


MessageSender = Annotated[Principal, require_notify_access("messages", Access.write)]
MessageReader = Annotated[Principal, require_notify_access("messages", Access.read)]
TemplateWriter = Annotated[Principal, require_notify_access("templates", Access.write)]
TemplateReader = Annotated[Principal, require_notify_access("templates", Access.read)]
RecipientAdmin = Annotated[Principal, require_notify_access("recipients", Access.admin)]
RecipientWriter = Annotated[Principal, require_notify_access("recipients", Access.write)]
RecipientReader = Annotated[Principal, require_notify_access("recipients", Access.read)]
SettingsWriter = Annotated[Principal, require_notify_access("settings", Access.write)]
SettingsReader = Annotated[Principal, require_notify_access("settings", Access.read)]
