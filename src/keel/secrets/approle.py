"""Vault's AppRole auth method on Keel's service accounts.

An AppRole ``name`` is the service account ``approle.<name>`` with the role of the same name,
whose permissions are the AppRole's policies (``secrets:policy:<p>``). Its ``role_id`` is the
account's id; each ``secret_id`` is one more client secret of the account (shown once, stored
as a keyed hash). Logging in is the ``client_credentials`` grant of that client: the token is
a Keel access token, audited as every issued token is.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import OAuthClient, PrincipalType, ServiceAccount
from keel.auth.service import AuthFailure, AuthService, TokenPair
from keel.core.audit import Actor
from keel.core.errors import BadRequest, NotFound
from keel.core.tenancy import bind_tenant
from keel.secrets.policies import NAME, POLICY_PERMISSION
from keel_client.auth import Principal

PREFIX = "approle."
INVALID_LOGIN = "invalid role or secret ID"


def account_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise BadRequest("an AppRole name is lowercase letters, digits, '.', '-' and '_'")
    return PREFIX + name


async def account(session: AsyncSession, tenant_id: str, name: str) -> ServiceAccount:
    bind_tenant(session, tenant_id)
    found = await session.scalar(
        select(ServiceAccount).where(ServiceAccount.name == account_name(name))
    )
    if found is None:
        raise NotFound()
    return found


async def write(
    auth: AuthService,
    session: AsyncSession,
    principal: Principal,
    name: str,
    policies: list[str],
    actor: Actor,
) -> ServiceAccount:
    """Create the AppRole, or set its policies."""
    tenant_id = principal.tenant_id
    for policy in policies:
        if not isinstance(policy, str) or not NAME.fullmatch(policy):
            raise BadRequest(f"invalid policy name {policy!r}")
    permissions = [POLICY_PERMISSION + policy for policy in sorted(set(policies))]
    role_name = account_name(name)
    try:
        await auth.get_role(session, tenant_id, role_name)
    except NotFound:
        await auth.create_role(
            session, tenant_id, name=role_name, permissions=permissions, actor=actor,
            grantor=principal,
        )  # fmt: skip
    else:
        await auth.update_role(
            session, tenant_id, role_name, permissions=permissions, if_match=None, actor=actor,
            grantor=principal,
        )  # fmt: skip
    try:
        return await account(session, tenant_id, name)
    except NotFound:
        pass
    created, issued = await auth.create_service_account(
        session, tenant_id, name=role_name, actor=actor
    )
    # The account's first secret was never shown to anyone: secret IDs are issued on demand.
    await session.execute(
        update(OAuthClient).where(OAuthClient.client_id == issued.id).values(is_revoked=True)
    )
    await auth.assign_role(
        session, tenant_id, role_name, PrincipalType.service_account, created.id, actor,
        grantor=principal,
    )  # fmt: skip
    return created


async def login(
    auth: AuthService, session: AsyncSession, role_id: str, secret_id: str
) -> TokenPair | None:
    """The token of the AppRole ``role_id`` when ``secret_id`` is one of its secrets."""
    client_id = await auth.client_id_for_secret(session, role_id, secret_id)
    if client_id is None:
        auth.keyring.token_hash(secret_id)  # the same work as a found one
        return None
    result = await auth.client_credentials_grant(session, client_id, secret_id, "", None)
    return None if isinstance(result, AuthFailure) else result
