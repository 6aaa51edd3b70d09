"""Who may do what with the gateway: ``gateway:policy:read`` (the policy, its routes, pools,
revisions and watch stream) and ``gateway:policy:write`` (every change, validation included);
``gateway:ratelimit:hit`` lets a service count its rate limits in Keel
(``POST /gateway/v1/ratelimit/hit``, ``keel_client.edge.KeelLimiterStore``).

A level includes the ones below it (``admin`` ⊃ ``write`` ⊃ ``read``); RBAC wildcards work as
everywhere (``gateway:*:read``, ``gateway:*``, ``*``: the ``admin`` role ``keel init`` makes).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends

from keel.auth.dependencies import Access, CurrentPrincipal, holds_access, require_permission
from keel.core.errors import Forbidden
from keel_client.auth import Principal

#: The permission scope of the policy: ``gateway:policy:<level>``.
POLICY = "policy"
#: The permission to count rate limits in Keel's limiter (under the caller's tenant).
RATE_LIMIT_HIT = "gateway:ratelimit:hit"


def may(principal: Principal, access: Access) -> bool:
    """Whether ``principal`` holds ``gateway:policy:<access>`` or a level above it."""
    return holds_access(principal, "gateway", POLICY, access)


def require_policy_access(access: Access) -> Any:
    """403 unless the caller holds ``gateway:policy:<access>`` (or a level above)."""

    async def check(principal: CurrentPrincipal) -> Principal:
        if not may(principal, access):
            raise Forbidden(f"This needs the permission 'gateway:{POLICY}:{access}'.")
        return principal

    check.__name__ = f"require_gateway_policy_{access}"
    return Depends(check)


PolicyReader = Annotated[Principal, require_policy_access(Access.read)]
PolicyWriter = Annotated[Principal, require_policy_access(Access.write)]
RateLimitCaller = Annotated[Principal, require_permission(RATE_LIMIT_HIT)]
