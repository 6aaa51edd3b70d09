"""Who may do what with the audit log, checked by one dependency per route.

- ``audit:event:write``: append events and financial transactions.
- ``audit:event:read``: read events, signed tree heads, proofs and the action catalogue.
- ``audit:event:export``: export the log, with ``audit:event:read``: a bulk copy of the
  trail is granted on its own.
- ``audit:action:write``: register (or update) the tenant's actions.

The log's public keys (``GET /audit/v1/keys``) need no permission. RBAC wildcards work as
everywhere (``audit:*``, ``*``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from keel.auth.dependencies import CurrentPrincipal, require_permission
from keel.core.errors import Forbidden
from keel_client.auth import Principal

WRITE = "audit:event:write"
READ = "audit:event:read"
#: Exporting needs this as well as READ: a bulk copy of the trail is granted on its own.
EXPORT = "audit:event:export"
ACTION_WRITE = "audit:action:write"


async def _may_export(principal: CurrentPrincipal) -> Principal:
    for permission in (READ, EXPORT):
        if not principal.has_permission(permission):
            raise Forbidden(f"This needs the permission {permission!r}.")
    return principal


EventWriter = Annotated[Principal, require_permission(WRITE)]
EventReader = Annotated[Principal, require_permission(READ)]
EventExporter = Annotated[Principal, Depends(_may_export)]
ActionWriter = Annotated[Principal, require_permission(ACTION_WRITE)]
