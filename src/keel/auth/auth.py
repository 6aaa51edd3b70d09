"""Who may administer identities, checked by one dependency per route.

Each alias is the caller's principal, resolved and checked: a route that declares
``principal: UserCreator`` answers 403 (naming the permission) unless the caller holds
``auth:user:create``. RBAC wildcards work as everywhere (``auth:user:*``, ``auth:*``, ``*``);
what an administrator may grant is further limited by the service (no escalation:
``keel.auth.service.policy``).
"""

from __future__ import annotations

from typing import Annotated

from keel.auth.dependencies import require_permission
from keel_client.auth import Principal

UserCreator = Annotated[Principal, require_permission("auth:user:create")]
UserReader = Annotated[Principal, require_permission("auth:user:read")]
UserUpdater = Annotated[Principal, require_permission("auth:user:update")]
ServiceAccountCreator = Annotated[Principal, require_permission("auth:service_account:create")]
ClientCreator = Annotated[Principal, require_permission("auth:client:create")]
ApiKeyCreator = Annotated[Principal, require_permission("auth:api_key:create")]
ApiKeyReader = Annotated[Principal, require_permission("auth:api_key:read")]
ApiKeyRevoker = Annotated[Principal, require_permission("auth:api_key:revoke")]
RoleCreator = Annotated[Principal, require_permission("auth:role:create")]
RoleReader = Annotated[Principal, require_permission("auth:role:read")]
RoleUpdater = Annotated[Principal, require_permission("auth:role:update")]
RoleDeleter = Annotated[Principal, require_permission("auth:role:delete")]
RoleAssigner = Annotated[Principal, require_permission("auth:role:assign")]
SigningKeyRotator = Annotated[Principal, require_permission("auth:signing_key:rotate")]
