"""Vault's AppRole auth method on Keel's service accounts.

An AppRole ``name`` is the service account ``approle.<name>`` with the role of the same name,
whose permissions are the AppRole's policies (``secrets:policy:<p>``). Its ``role_id`` is the
account's id; each ``secret_id`` is one more client secret of the account (shown once, stored
as a keyed hash). Logging in is the ``client_credentials`` grant of that client: the token is
a Keel access token, audited as every issued token is.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.service import AuthFailure, AuthService, PrincipalType, TokenPair
from keel.core.audit import Actor
from keel.core.errors import BadRequest, NotFound
from keel.secrets.engines.policies import NAME, POLICY_PERMISSION, held_policy_names_of
from keel_client.auth import Principal

PREFIX = "approle."
INVALID_LOGIN = "invalid role or secret ID"


def account_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise BadRequest("an AppRole name is lowercase letters, digits, '.', '-' and '_'")
    return PREFIX + name


@dataclass(frozen=True)
class AppRole:
    """An AppRole: ``name`` as Vault's clients know it, ``role_id`` its account's id."""

    name: str
    role_id: str
    #: The service account's (and its role's) name: ``approle.<name>``.
    account_name: str


async def account(auth: AuthService, session: AsyncSession, tenant_id: str, name: str) -> AppRole:
    """The AppRole ``name`` (404 when there is none)."""
    found = await auth.find_service_account(session, tenant_id, account_name(name))
    if found is None:
        raise NotFound()
    return AppRole(name, found.id, found.name)


async def write(
    auth: AuthService,
    session: AsyncSession,
    principal: Principal,
    name: str,
    policies: list[str],
    actor: Actor,
) -> AppRole:
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
        return await account(auth, session, tenant_id, name)
    except NotFound:
        pass
    created, issued = await auth.create_service_account(
        session, tenant_id, name=role_name, actor=actor
    )
    # The account's first secret was never shown to anyone: secret IDs are issued on demand.
    await auth.revoke_client_secret(session, tenant_id, issued.id)
    await auth.assign_role(
        session, tenant_id, role_name, PrincipalType.service_account, created.id, actor,
        grantor=principal,
    )  # fmt: skip
    return AppRole(name, created.id, created.name)


async def issue_secret_id(
    auth: AuthService, session: AsyncSession, tenant_id: str, name: str
) -> tuple[str, str]:
    """A new ``secret_id`` of the AppRole ``name`` and its accessor (the secret is shown in
    this answer only)."""
    found = await account(auth, session, tenant_id, name)
    issued = await auth.add_client_secret(
        session, tenant_id, found.role_id, f"{found.account_name} secret-id"
    )
    return issued.secret, issued.id


async def policies_of(
    auth: AuthService, session: AsyncSession, tenant_id: str, name: str
) -> list[str]:
    """The policies the AppRole ``name`` grants."""
    found = await account(auth, session, tenant_id, name)
    role = await auth.get_role(session, tenant_id, found.account_name)
    return held_policy_names_of(role.permissions)


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
