"""Who may do what with config: ``config:<app>:read``, ``config:<app>:write``,
``config:<app>:admin``, checked by one dependency per route.

A level includes the ones below it: ``admin`` (schema, environments) may write, ``write``
may read. RBAC wildcards work as everywhere (``config:*:read``, ``config:*``, ``*``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from keel.auth.dependencies import Access, CurrentPrincipal, holds_access
from keel.config import schemas
from keel.core.errors import Forbidden
from keel_client.auth import Principal


def config_permission(application: str, access: Access) -> str:
    return f"config:{application}:{access}"


def may(principal: Principal, application: str, access: Access) -> bool:
    """Whether ``principal`` holds ``access`` (or a level above it) on ``application``."""
    return holds_access(principal, "config", application, access)


def _deny(application: str, access: Access) -> Forbidden:
    return Forbidden(f"This needs the permission {config_permission(application, access)!r}.")


def require_app_access(access: Access) -> Any:
    """A dependency answering 403 unless the caller holds ``access`` on the application
    named by the route's ``{app}`` path parameter."""

    async def check(request: Request, principal: CurrentPrincipal) -> Principal:
        application = str(request.path_params.get("app", ""))
        if not may(principal, application, access):
            raise _deny(application, access)
        return principal

    check.__name__ = f"require_config_{access}"
    return Depends(check)


async def _may_create(body: schemas.ApplicationCreate, principal: CurrentPrincipal) -> Principal:
    """Creating an application needs ``admin`` on the name it will have."""
    if not may(principal, body.name, Access.admin):
        raise _deny(body.name, Access.admin)
    return principal


ConfigReader = Annotated[Principal, require_app_access(Access.read)]
ConfigWriter = Annotated[Principal, require_app_access(Access.write)]
ConfigAdmin = Annotated[Principal, require_app_access(Access.admin)]
ApplicationCreator = Annotated[Principal, Depends(_may_create)]
