"""Vault's AppRole auth method: ``auth/approle/role/<name>`` (its policies), its
``role-id`` and ``secret-id``, and ``auth/approle/login``.

The logic is in :mod:`keel.secrets.engines.approle`: an AppRole is a Keel service account.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from keel.auth.dependencies import Auth, get_auth_service, limit_by_address
from keel.core.deps import get_context
from keel.core.direct import served_directly
from keel.core.errors import BadRequest
from keel.secrets.auth import VaultCaller
from keel.secrets.engines import approle
from keel.secrets.engines.policies import held_policy_names_of
from keel.secrets.schemas import AppRoleLogin
from keel.secrets.vault_http import (
    VaultRoute,
    VaultSession,
    add_vault_route,
    no_content,
    read_body,
    vault_data,
    vault_errors,
)

router = APIRouter(route_class=VaultRoute)


async def approle_role(name: str, call: VaultCaller, auth: Auth) -> Response:
    """Read (``GET``) or set (``POST``, ``PUT``: ``{"token_policies": [...]}``) the
    policies of the AppRole ``name``, creating it on its first write."""
    path = f"auth/approle/role/{name}"
    if call.request.method == "GET":
        await call.authorize(path, "read", "secrets.kv.read")
        policies = await approle.policies_of(auth, call.session, call.tenant_id, name)
        return vault_data({"token_policies": policies, "policies": policies})
    body = await read_body(call.request)
    policies = body.get("token_policies", body.get("policies", []))
    if isinstance(policies, str):
        policies = [p.strip() for p in policies.split(",") if p.strip()]
    if not isinstance(policies, list):
        raise BadRequest("token_policies is a list of policy names")
    await call.authorize(path, "update", "secrets.policy.write")
    await approle.write(auth, call.session, call.principal, name, policies, call.actor)
    call.record("secrets.policy.write", path, operation="approle", policies=policies)
    return no_content()


async def approle_role_id(name: str, call: VaultCaller, auth: Auth) -> Response:
    await call.authorize(f"auth/approle/role/{name}/role-id", "read", "secrets.kv.read")
    found = await approle.account(auth, call.session, call.tenant_id, name)
    return vault_data({"role_id": found.role_id})


async def approle_secret_id(name: str, call: VaultCaller, auth: Auth) -> Response:
    """A new ``secret_id``: shown in this answer only."""
    path = f"auth/approle/role/{name}/secret-id"
    await call.authorize(path, "update", "secrets.policy.write")
    secret_id, accessor = await approle.issue_secret_id(auth, call.session, call.tenant_id, name)
    call.record("secrets.policy.write", path, operation="secret_id", accessor=accessor)
    return vault_data({"secret_id": secret_id, "secret_id_accessor": accessor, "secret_id_ttl": 0})


async def approle_login(request: Request, session: VaultSession, auth: Auth) -> Response:
    """``role_id`` + ``secret_id`` → a token (no token needed to call this)."""
    body = await read_body(request)
    role_id, secret_id = body.get("role_id"), body.get("secret_id")
    if not isinstance(role_id, str) or not isinstance(secret_id, str):
        raise BadRequest("role_id and secret_id are required")
    if len(role_id) > 64 or len(secret_id) > 256:
        return vault_errors(400, approle.INVALID_LOGIN)
    await limit_by_address(request, "approle_login")
    issued = await approle.login(auth, session, role_id, secret_id)
    if issued is None:
        return vault_errors(400, approle.INVALID_LOGIN)
    # The policies of the token just signed, from the grant: verifying it again here (its
    # signature, a revocation lookup) took a tenth of a login's time and told nothing new.
    policies = held_policy_names_of(issued.permissions)
    login = AppRoleLogin(
        client_token=issued.access_token,
        policies=policies,
        token_policies=policies,
        metadata={"role_id": role_id},
        lease_duration=issued.expires_in,
        entity_id=role_id,
    )
    return vault_data(None, auth=login.model_dump())


async def _login_directly(request: Request) -> Response:
    """:func:`approle_login` with its dependencies made by hand: FastAPI solving them (the
    unit of work's generator, the auth service) was a tenth of a login."""
    auth = await get_auth_service(request)
    async with get_context(request).database.session() as session:  # ended before the answer
        return await approle_login(request, session, auth)


served_directly(approle_login, _login_directly)

add_vault_route(router, "/auth/approle/role/{name}", approle_role, ["GET", "POST", "PUT"])
add_vault_route(router, "/auth/approle/role/{name}/role-id", approle_role_id, ["GET"])
add_vault_route(router, "/auth/approle/role/{name}/secret-id", approle_secret_id, ["POST", "PUT"])
add_vault_route(router, "/auth/approle/login", approle_login, ["POST", "PUT"])
