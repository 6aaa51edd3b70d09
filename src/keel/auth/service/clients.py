"""Service accounts, OAuth clients, and the client credentials grant (RFC 6749 section 4.4)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import OAuthClient, PrincipalType, Role, RoleAssignment, ServiceAccount
from keel.auth.service.caches import CLIENT_GRANTS, CLIENTS_BY_SECRET
from keel.auth.service.credentials import new_client_id, new_client_secret
from keel.auth.service.policy import NAME, granted_scope
from keel.auth.service.results import AuthFailure, IssuedSecret, TokenPair
from keel.auth.service.tokens import Tokens, permissions_claim
from keel.core.audit import SYSTEM, Actor, record_event, record_event_now
from keel.core.cache import invalidate_after_commit
from keel.core.crypto import Keyring
from keel.core.errors import Conflict, ValidationFailed
from keel.core.tenancy import bind_tenant

#: A confidential client, its service account and that account's roles: one row per role.
#: The client id tells the tenant; every join stays inside it.
_CLIENT_GRANT = (
    select(
        OAuthClient.tenant_id,
        OAuthClient.secret_hash,
        OAuthClient.grant_types,
        OAuthClient.is_revoked,
        OAuthClient.service_account_id,
        ServiceAccount.is_disabled,
        Role.name.label("role"),
        Role.permissions,
    )
    .outerjoin(
        ServiceAccount,
        and_(
            ServiceAccount.id == OAuthClient.service_account_id,
            ServiceAccount.tenant_id == OAuthClient.tenant_id,
        ),
    )
    .outerjoin(
        RoleAssignment,
        and_(
            RoleAssignment.principal_type == PrincipalType.service_account.value,
            RoleAssignment.principal_id == OAuthClient.service_account_id,
            RoleAssignment.tenant_id == OAuthClient.tenant_id,
        ),
    )
    .outerjoin(
        Role, and_(Role.id == RoleAssignment.role_id, Role.tenant_id == OAuthClient.tenant_id)
    )
    .where(OAuthClient.client_id == bindparam("client_id"))
    .execution_options(all_tenants=True)
)

#: The client of a service account by its secret's keyed hash, not revoked (Core: an AppRole
#: login's lookup, built once). The account id tells the tenant.
_CLIENT_BY_SECRET = (
    select(OAuthClient.client_id)
    .where(
        OAuthClient.service_account_id == bindparam("service_account_id"),
        OAuthClient.secret_hash == bindparam("secret_hash"),
        OAuthClient.is_revoked.is_(False),
    )
    .execution_options(all_tenants=True)
)


class Clients:
    """Register service accounts and applications, and authenticate them as OAuth clients."""

    def __init__(self, keyring: Keyring, tokens: Tokens) -> None:
        self.keyring = keyring
        self.tokens = tokens

    async def create_service_account(
        self,
        session: AsyncSession,
        tenant_id: str,
        *,
        name: str,
        description: str | None = None,
        actor: Actor = SYSTEM,
    ) -> tuple[ServiceAccount, IssuedSecret]:
        """A service account with client credentials (``client_id`` + secret, shown once)."""
        bind_tenant(session, tenant_id)
        if not NAME.fullmatch(name):
            raise ValidationFailed("A name is 1-100 lowercase letters, digits and . _ -.")
        if await session.scalar(select(ServiceAccount.id).where(ServiceAccount.name == name)):
            raise Conflict(f"Service account {name!r} exists already.")
        account = ServiceAccount(name=name, description=description)
        session.add(account)
        await session.flush()
        client, secret = await self._create_client(
            session,
            name=name,
            service_account_id=account.id,
            grant_types=["client_credentials"],
        )
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.service_account.create",
            actor=actor,
            target_type="service_account",
            target_id=account.id,
            data={"name": name, "client_id": client.client_id},
        )
        return account, IssuedSecret(client.client_id, secret, {"service_account_id": account.id})

    async def create_application_client(
        self,
        session: AsyncSession,
        tenant_id: str,
        *,
        name: str,
        redirect_uris: Sequence[str],
        is_public: bool,
        actor: Actor = SYSTEM,
    ) -> IssuedSecret:
        """An OAuth2 client for the authorization-code flow (public clients use PKCE only)."""
        bind_tenant(session, tenant_id)
        for uri in redirect_uris:
            if not re.fullmatch(r"https?://[^\s#]+", uri):
                raise ValidationFailed(f"Redirect URI {uri!r} is not an absolute http(s) URL.")
        client, secret = await self._create_client(
            session,
            name=name,
            service_account_id=None,
            grant_types=["authorization_code", "refresh_token"],
            redirect_uris=list(redirect_uris),
            is_public=is_public,
        )
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.client.create",
            actor=actor,
            target_type="client",
            target_id=client.client_id,
        )
        return IssuedSecret(client.client_id, secret, {"public": is_public})

    async def _create_client(
        self,
        session: AsyncSession,
        *,
        name: str,
        service_account_id: str | None,
        grant_types: list[str],
        redirect_uris: list[str] | None = None,
        is_public: bool = False,
    ) -> tuple[OAuthClient, str]:
        secret = "" if is_public else new_client_secret()
        client = OAuthClient(
            client_id=new_client_id(),
            secret_hash=None if is_public else self.keyring.token_hash(secret),
            name=name,
            service_account_id=service_account_id,
            grant_types=grant_types,
            redirect_uris=redirect_uris or [],
        )
        session.add(client)
        await session.flush()
        return client, secret

    async def add_client_secret(
        self, session: AsyncSession, tenant_id: str, service_account_id: str, name: str
    ) -> IssuedSecret:
        """One more credential (``client_id`` + secret, shown once) for a service account."""
        bind_tenant(session, tenant_id)
        client, secret = await self._create_client(
            session,
            name=name,
            service_account_id=service_account_id,
            grant_types=["client_credentials"],
        )
        return IssuedSecret(client.client_id, secret, {"service_account_id": service_account_id})

    async def find_service_account(
        self, session: AsyncSession, tenant_id: str, name: str
    ) -> ServiceAccount | None:
        """The tenant's service account called ``name``, if any."""
        bind_tenant(session, tenant_id)
        return await session.scalar(select(ServiceAccount).where(ServiceAccount.name == name))

    async def revoke_client_secret(
        self, session: AsyncSession, tenant_id: str, client_id: str
    ) -> None:
        """Revoke one client (``client_id`` + secret) of the tenant; unknown is fine.

        Not audited: callers revoke a credential nobody was ever shown (the first secret of an
        AppRole's account), part of a change audited as a whole.
        """
        bind_tenant(session, tenant_id)
        await session.execute(
            update(OAuthClient).where(OAuthClient.client_id == client_id).values(is_revoked=True)
        )
        invalidate_after_commit(session, CLIENT_GRANTS, client_id)
        invalidate_after_commit(session, CLIENTS_BY_SECRET, None)

    async def client_id_for_secret(
        self, session: AsyncSession, service_account_id: str, secret: str
    ) -> str | None:
        """The client of ``service_account_id`` whose secret is ``secret`` (found by its keyed
        hash: an indexed equality, no secret compared by hand), if any and not revoked.

        A found client is kept a moment (:data:`CLIENTS_BY_SECRET`): an AppRole login asks
        this before every grant, and the grant checks the secret and the revocation again.
        """
        key = (service_account_id, self.keyring.token_hash(secret))
        client_id = CLIENTS_BY_SECRET.get(key)
        if client_id is not None:
            return client_id
        stamp = CLIENTS_BY_SECRET.stamp()
        connection = await session.connection()
        client_id = await connection.scalar(
            _CLIENT_BY_SECRET, {"service_account_id": key[0], "secret_hash": key[1]}
        )
        if client_id is not None:
            CLIENTS_BY_SECRET.put(key, client_id, stamp)
        return client_id

    async def authenticate_client(
        self, session: AsyncSession, client_id: str, client_secret: str | None
    ) -> OAuthClient | None:
        """The client, when ``client_secret`` is its secret (constant-time); else None."""
        client = await session.scalar(
            select(OAuthClient)
            .where(OAuthClient.client_id == client_id)
            .execution_options(all_tenants=True)  # the client id tells which tenant
        )
        if client is None or client.is_revoked:
            self.keyring.token_hash(client_secret or "")  # same work as a real check
            return None
        if client.secret_hash is None:
            return client if not client_secret else None
        if not client_secret or not self.keyring.token_matches(client_secret, client.secret_hash):
            return None
        return client

    async def client_credentials_grant(
        self,
        session: AsyncSession,
        client_id: str,
        client_secret: str | None,
        scope: str,
        audience: str | None,
    ) -> TokenPair | AuthFailure:
        """RFC 6749 section 4.4: authenticate the client and sign its service account's token.

        The hot path of machine-to-machine calls: the client, its service account and that
        account's roles come back from one query, and the only write is the audit event.
        """
        # Core, not the ORM: half the cost on the hottest query of machine-to-machine traffic.
        rows = CLIENT_GRANTS.get(client_id)
        if rows is None:
            stamp = CLIENT_GRANTS.stamp()
            connection = await session.connection()
            rows = tuple((await connection.execute(_CLIENT_GRANT, {"client_id": client_id})).all())
            CLIENT_GRANTS.put(client_id, rows, stamp)
        if not rows or rows[0].is_revoked:
            self.keyring.token_hash(client_secret or "")  # same work as a real check
            return AuthFailure("invalid_client")
        client = rows[0]
        if client.secret_hash is None or not client_secret:
            return AuthFailure("invalid_client")
        if not self.keyring.token_matches(client_secret, client.secret_hash):
            return AuthFailure("invalid_client")
        account_id = client.service_account_id
        if "client_credentials" not in client.grant_types or account_id is None:
            return AuthFailure("unauthorized_client")
        bind_tenant(session, client.tenant_id)
        if client.is_disabled is not False:
            return AuthFailure("disabled")
        roles = sorted(row.role for row in rows if row.role is not None)
        permissions = {p for row in rows if row.permissions for p in row.permissions}
        granted = granted_scope(sorted(permissions), scope)
        if granted is None:
            return AuthFailure("invalid_scope")
        claimed = permissions_claim(sorted(permissions), granted)
        access, ttl = self.tokens.sign_access_token(
            tenant_id=client.tenant_id,
            principal_type=PrincipalType.service_account,
            principal_id=account_id,
            roles=roles,
            permissions=claimed,
            scope=granted,
            audience=audience,
            key=await self.tokens.signing.keys.active_key(session),
            client_id=client_id,
        )
        await record_event_now(
            session,
            tenant_id=client.tenant_id,
            action="auth.token.issue",
            actor_type="service_account",
            actor_id=account_id,
            target_type="client",
            target_id=client_id,
            data={"grant_type": "client_credentials", "scope": granted},
        )
        return TokenPair(access, ttl, None, granted, permissions=tuple(claimed))
