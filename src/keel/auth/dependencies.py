"""Who is calling, and may they: the one place every Keel API checks identity and permission.

Usage in any service's router::

    from keel.auth.dependencies import CurrentPrincipal, require_permission

    @router.get("/v1/things", dependencies=[require_permission("things:thing:read")])
    async def list_things(principal: CurrentPrincipal, session: DbSession): ...

The principal's tenant is bound to the request's database session, so every later query of
the request is scoped to it, and to the log context.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request, Response

from keel.auth.service import AuthService
from keel.auth.service.credentials import looks_like_api_key
from keel.core.audit import Actor
from keel.core.context import AppContext, ResourceKey
from keel.core.deps import DbSession, client_ip, get_context
from keel.core.errors import Forbidden, RateLimited, Unauthorized
from keel.core.ratelimit import RateLimiter
from keel.core.tenancy import bind_tenant
from keel_client.auth import Principal

AUTH_RESOURCE: ResourceKey[AuthService] = ResourceKey("auth")
#: The per-address limiter of every endpoint that checks a guessable secret.
LOGIN_LIMITER_RESOURCE: ResourceKey[RateLimiter] = ResourceKey("auth.login_limiter")


async def get_auth_service(request: Request) -> AuthService:
    """``async`` so FastAPI calls it inline, not in its thread pool."""
    service = get_context(request).resources.get(AUTH_RESOURCE)
    if not isinstance(service, AuthService):
        raise RuntimeError("the auth service is not running in this process")
    return service


Auth = Annotated[AuthService, Depends(get_auth_service)]


def bearer_credential(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    # Vault clients send their token here; any Keel credential is accepted in it.
    vault_token = request.headers.get("x-vault-token")
    return vault_token.strip() if vault_token else None


async def get_principal(request: Request, session: DbSession, auth: Auth) -> Principal:
    credential = bearer_credential(request)
    if credential is None:
        raise Unauthorized("This API needs a bearer token or API key.")
    principal = await auth.authenticate(session, credential)
    if principal is None:
        raise Unauthorized("The credential is invalid, expired or revoked.")
    bind_tenant(session, principal.tenant_id)
    return _accepted(request, principal)


async def caller_of(request: Request, context: AppContext) -> Principal:
    """:data:`CurrentPrincipal` for a route that makes its dependencies by hand and needs no
    unit of work for them: an API key this process read lately is answered from the cache;
    any other credential is checked in a unit of work of its own, ended before the route's
    work."""
    auth = await get_auth_service(request)
    credential = bearer_credential(request)
    if credential is not None and looks_like_api_key(credential):
        principal = auth.api_keys.cached_principal(credential)
        if principal is not None:
            return _accepted(request, principal)
    async with context.database.session() as session:
        return await get_principal(request, session, auth)


def _accepted(request: Request, principal: Principal) -> Principal:
    structlog.contextvars.bind_contextvars(
        tenant=principal.tenant_id, principal=f"{principal.principal_type}:{principal.subject}"
    )
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_permission(permission: str) -> Any:
    """A dependency that answers 403 unless the caller holds ``permission``."""

    async def check(principal: CurrentPrincipal) -> Principal:
        if not principal.has_permission(permission):
            raise Forbidden(f"This needs the permission {permission!r}.")
        return principal

    check.__name__ = f"require_{permission.replace(':', '_').replace('*', 'any')}"
    return Depends(check)


class Access(StrEnum):
    """Levels of a service's ``<service>:<scope>:<level>`` permissions (config, flags): each
    includes the ones below it."""

    read = "read"
    write = "write"
    admin = "admin"


#: The levels that grant each level.
_GRANTED_BY = {
    Access.read: (Access.read, Access.write, Access.admin),
    Access.write: (Access.write, Access.admin),
    Access.admin: (Access.admin,),
}


def holds_access(principal: Principal, service: str, scope: str, access: Access) -> bool:
    """Whether ``principal`` holds ``<service>:<scope>:<access>`` or a level above it (RBAC
    wildcards included, as everywhere)."""
    return any(
        principal.has_permission(f"{service}:{scope}:{level}") for level in _GRANTED_BY[access]
    )


def request_actor(request: Request, principal: Principal | None = None) -> Actor:
    """The caller of a request as the audit trail names it (with address and user agent, cut
    to the 400 characters an audit event and a login session keep)."""
    actor = Actor.of(principal, client_ip(request))
    user_agent = request.headers.get("user-agent")
    return Actor(actor.type, actor.id, actor.ip_address, user_agent[:400] if user_agent else None)


async def caller_actor(request: Request, principal: CurrentPrincipal) -> Actor:
    """The authenticated caller as the audit trail names it: principal, address, user agent.
    ``async`` so FastAPI calls it inline; the principal is resolved once per request."""
    return request_actor(request, principal)


async def anonymous_actor(request: Request) -> Actor:
    """A caller not (yet) authenticated (login, refresh, password reset): address and user
    agent only; the service names the principal once it knows it."""
    return request_actor(request)


#: The one way a router names who made a change: ``actor: CallerActor``.
CallerActor = Annotated[Actor, Depends(caller_actor)]
#: The same for endpoints that take no bearer credential.
AnonymousActor = Annotated[Actor, Depends(anonymous_actor)]


def no_store(response: Response) -> None:
    """Responses carrying credentials must never be cached (RFC 6749 §5.1)."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"


async def limit_by_address(request: Request, purpose: str) -> None:
    """Count one attempt of ``purpose`` from the caller's address; 429 once over the limit."""
    limiter = get_context(request).resources.get(LOGIN_LIMITER_RESOURCE)
    if limiter is None:
        return
    retry_after = await limiter.hit(f"{purpose}:{client_ip(request) or 'unknown'}")
    if retry_after is not None:
        raise RateLimited(
            "Too many attempts from this address.", retry_after=max(1, int(retry_after))
        )
