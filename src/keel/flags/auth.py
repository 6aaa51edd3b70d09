"""Who may do what with flags, checked by one dependency per route.

- ``flags:<env>:read``: an environment's states, segments, snapshot, watch stream,
  server-side evaluation, experiment results and stale listing; sending SDK event batches.
- ``flags:<env>:write``: change an environment's flag states (kill switch included) and
  segments.
- ``flags:flags:read``: read flag definitions and the list of environments;
  ``flags:flags:admin``: define, change and archive flags, create and delete environments.
  (``flags`` is therefore not a valid environment name.)

A level includes the ones below it (``admin`` ⊃ ``write`` ⊃ ``read``). RBAC wildcards work
as everywhere (``flags:*:read``, ``flags:*``, ``*``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from keel.auth.dependencies import Access, CurrentPrincipal, holds_access
from keel.core.errors import Forbidden
from keel.flags import schemas
from keel_client.auth import Principal

#: The permission segment of flag definitions (reserved: no environment has this name).
DEFINITIONS = "flags"


def flags_permission(scope: str, access: Access) -> str:
    return f"flags:{scope}:{access}"


def may(principal: Principal, scope: str, access: Access) -> bool:
    """Whether ``principal`` holds ``access`` (or a level above it) on ``scope``: an
    environment's name, or :data:`DEFINITIONS`."""
    return holds_access(principal, "flags", scope, access)


def _check(principal: Principal, scope: str, access: Access) -> Principal:
    if not may(principal, scope, access):
        raise Forbidden(f"This needs the permission {flags_permission(scope, access)!r}.")
    return principal


def require_environment_access(access: Access) -> Any:
    """403 unless the caller holds ``access`` on the route's ``{env}``."""

    async def check(request: Request, principal: CurrentPrincipal) -> Principal:
        return _check(principal, str(request.path_params.get("env", "")), access)

    check.__name__ = f"require_flags_env_{access}"
    return Depends(check)


def require_definitions_access(access: Access) -> Any:
    """403 unless the caller holds ``access`` on flag definitions."""

    async def check(principal: CurrentPrincipal) -> Principal:
        return _check(principal, DEFINITIONS, access)

    check.__name__ = f"require_flags_definitions_{access}"
    return Depends(check)


async def _may_evaluate(body: schemas.EvaluateRequest, principal: CurrentPrincipal) -> Principal:
    return _check(principal, body.environment, Access.read)


async def _may_send_events(body: schemas.EventBatch, principal: CurrentPrincipal) -> Principal:
    return _check(principal, body.environment, Access.read)


EnvironmentReader = Annotated[Principal, require_environment_access(Access.read)]
EnvironmentWriter = Annotated[Principal, require_environment_access(Access.write)]
DefinitionsReader = Annotated[Principal, require_definitions_access(Access.read)]
DefinitionsAdmin = Annotated[Principal, require_definitions_access(Access.admin)]
Evaluator = Annotated[Principal, Depends(_may_evaluate)]
EventSender = Annotated[Principal, Depends(_may_send_events)]
