"""The auth service's logic: identities, credentials, roles, sessions and tokens.

Plain arguments in, plain objects out: the router, the CLI and the tests call these same
methods. Nothing here commits; the caller's unit of work does. Failures that must still be
recorded (a wrong password counts towards a lockout, a reused refresh token revokes its
family) are *returned* as :class:`AuthFailure` rather than raised, so the unit of work that
records them commits.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import and_, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

import keel.auth.audit_actions  # noqa: F401 - registers the catalogue entries
from keel.auth.credentials import (
    looks_like_api_key,
    new_api_key,
    new_client_id,
    new_client_secret,
    new_refresh_token,
    parse_api_key,
)
from keel.auth.keys import LoadedKey, SigningKeys
from keel.auth.mfa import MfaCheck, TotpMfa
from keel.auth.models import (
    ApiKey,
    LoginSession,
    OAuthClient,
    PasswordHistory,
    PrincipalType,
    RefreshToken,
    RevokedAccessToken,
    Role,
    RoleAssignment,
    ServiceAccount,
    User,
    UserStatus,
)
from keel.auth.one_time_tokens import AccountTokenDelivery, log_account_token_request
from keel.auth.passwords import Passwords
from keel.core.audit import SYSTEM, Actor, Outcome, record_event, record_event_now
from keel.core.cache import SharedCache, invalidate_after_commit
from keel.core.crypto import Keyring
from keel.core.db import utcnow
from keel.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from keel.core.http import check_if_match
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import Tenant, bind_tenant
from keel.settings import AuthSettings
from keel_client.auth import (
    InvalidToken,
    Principal,
    TokenVerifier,
    is_valid_permission,
    narrow_permissions,
)

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{1,149}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")

#: The built-in role of every tenant: it keeps ``*`` and at least one holder (docs/security.md).
ADMIN_ROLE = "admin"
ADMIN_PERMISSIONS = ["*"]
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
#: Last-used times of API keys are written at most this often, not on every request.
_LAST_USED_GRANULARITY = timedelta(minutes=1)

#: Whether an access token (by ``jti``) was revoked. A revocation reaches this process at
#: once, other replicas through the broadcast, and at worst after the TTL.
REVOCATIONS = SharedCache[str, bool]("auth.revoked_access_tokens", ttl=2.0, max_entries=100_000)

#: The answers of :data:`_CLIENT_GRANT` by client id: a token request costs no query. A change
#: of roles or assignments drops them all; a client revoked elsewhere is refused within the TTL.
CLIENT_GRANTS = SharedCache[str, tuple[Any, ...]]("auth.client_grants", ttl=2.0)

#: The principal of an API key by its lookup part, with what a hit must still check: the
#: secret's keyed hash, the expiry, and when ``last_used_at`` was last written (a hit older
#: than :data:`_LAST_USED_GRANULARITY` takes the slow path, which writes it again).
API_KEYS = SharedCache[str, tuple[str, Principal, datetime | None, datetime]](
    "auth.api_keys", ttl=2.0
)


def _forget_grants(session: AsyncSession) -> None:
    """Roles or assignments changed: every cached client grant and API key principal."""
    invalidate_after_commit(session, CLIENT_GRANTS, None)
    invalidate_after_commit(session, API_KEYS, None)


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


def granted_scope(permissions: Sequence[str], requested: str) -> str | None:
    """The scope granted for ``requested`` (RFC 6749 section 3.3): each requested permission
    that ``permissions`` cover at least in part, and every other scope (``openid``, ...) as
    asked; None when permissions were asked for and not one of them is held."""
    scopes = requested.split()
    granted = [s for s in scopes if ":" not in s or narrow_permissions(permissions, [s])]
    if any(":" in s for s in scopes) and not any(":" in s for s in granted):
        return None
    return " ".join(granted)


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str | None
    scope: str
    session_id: str | None = None
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret


@dataclass(frozen=True)
class AuthFailure:
    """A refused authentication; ``reason`` is for the audit trail, never for the caller."""

    reason: str


@dataclass(frozen=True)
class IssuedSecret:
    """A credential shown once at creation."""

    id: str
    secret: str
    extra: dict[str, Any]


class AuthService:
    def __init__(
        self,
        settings: AuthSettings,
        keyring: Keyring,
        *,
        issuer: str,
    ) -> None:
        self.settings = settings
        self.keyring = keyring
        self.issuer = issuer
        self.passwords = Passwords(settings)
        self.access_ttl = timedelta(seconds=settings.access_token_ttl_seconds)
        self.refresh_ttl = timedelta(seconds=settings.refresh_token_ttl_seconds)
        self.keys = SigningKeys(
            keyring, algorithm=settings.signing_algorithm, token_lifetime=self.access_ttl
        )
        self._jwks_document: dict[str, Any] = {"keys": []}
        self.verifier = TokenVerifier(
            self._current_jwks,
            issuer=issuer,
            audience=None,  # every Keel API accepts tokens for any audience Keel issued
            min_refresh_interval=1.0,
        )
        self._session_factory: Any = None
        self.mfa = TotpMfa(keyring, self.passwords)
        #: Sends e-mail verification and password reset tokens; replace to deliver them.
        self.deliver_account_token: AccountTokenDelivery = log_account_token_request

    # -- signing keys and the local verifier ----------------------------------------------------

    def use_database(self, session_factory: Any) -> None:
        """Give the verifier a way to reload keys from the database on an unknown ``kid``."""
        self._session_factory = session_factory

    async def _current_jwks(self) -> dict[str, Any]:
        if self._session_factory is not None:
            async with self._session_factory() as session:
                self._jwks_document = await self.keys.published(session)
        return self._jwks_document

    async def rotate_signing_key(
        self, session: AsyncSession, actor: Actor = SYSTEM, *, tenant_id: str | None = None
    ) -> str:
        """Rotate the platform's signing keys; ``tenant_id`` is the caller's tenant, if any.

        The keys sign every tenant's tokens, so only the platform (``default``) tenant may
        rotate them: another tenant's administrator could otherwise churn keys for everyone
        (each rotation publishes one more key to every verifier).
        """
        platform_tenant_id = await _platform_tenant_id(session)
        if tenant_id is not None and tenant_id != platform_tenant_id:
            raise Forbidden("Signing keys belong to the platform: rotate them as its tenant.")
        retired, active = await self.keys.rotate(session)
        tenant_id = platform_tenant_id
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.signing_key.rotate",
            actor=actor,
            target_type="signing_key",
            target_id=active,
            data={"retired": retired, "active": active},
        )
        return active

    # -- users --------------------------------------------------------------------------------

    async def create_user(
        self,
        session: AsyncSession,
        tenant_id: str,
        *,
        username: str,
        password: str | None,
        email: str | None = None,
        display_name: str | None = None,
        actor: Actor = SYSTEM,
    ) -> User:
        bind_tenant(session, tenant_id)
        if not _USERNAME.fullmatch(username):
            raise ValidationFailed("A username is 2-150 letters, digits and . _ @ + -.")
        if email is not None and not _EMAIL.fullmatch(email):
            raise ValidationFailed("The e-mail address is not valid.")
        clash = select(User.id).where(User.username == username)
        if email is not None:
            clash = select(User.id).where((User.username == username) | (User.email == email))
        if await session.scalar(clash) is not None:
            raise Conflict("A user with this username or e-mail exists already.")
        user = User(username=username, email=email, display_name=display_name)
        if password is not None:
            self.passwords.check_policy(password, username=username, email=email)
            user.password_hash = await self.passwords.hash_off_loop(password)
        session.add(user)
        await session.flush()
        if user.password_hash:
            session.add(PasswordHistory(user_id=user.id, password_hash=user.password_hash))
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.user.create",
            actor=actor,
            target_type="user",
            target_id=user.id,
            data={"username": username},
        )
        return user

    async def get_user(self, session: AsyncSession, tenant_id: str, user_id: str) -> User:
        bind_tenant(session, tenant_id)
        user = await session.scalar(select(User).where(User.id == user_id))
        if user is None:
            raise NotFound("No such user.")
        return user

    async def list_users(self, session: AsyncSession, tenant_id: str) -> list[User]:
        bind_tenant(session, tenant_id)
        return list(await session.scalars(select(User).order_by(User.username)))

    async def update_user(
        self,
        session: AsyncSession,
        tenant_id: str,
        user_id: str,
        *,
        if_match: str | None,
        changes: dict[str, Any],
        actor: Actor = SYSTEM,
        grantor: Principal | None = None,
    ) -> User:
        """``grantor`` changing another user's e-mail or status must hold all that user may
        do: the e-mail receives password resets, so changing it is taking the account over."""
        user = await self.get_user(session, tenant_id, user_id)
        check_if_match(if_match, user.version, required=False)
        takeover = {"email", "status"} & changes.keys()
        if takeover and grantor is not None and not _is_self(grantor, PrincipalType.user, user.id):
            _, held = await self.roles_and_permissions(session, PrincipalType.user, user.id)
            _ensure_may_grant(grantor, held)
        allowed = {"email", "display_name", "status"}
        for field_name, value in changes.items():
            if field_name not in allowed:
                raise ValidationFailed(f"{field_name} cannot be changed here.")
            if field_name == "status" and value not in {s.value for s in UserStatus}:
                raise ValidationFailed("status is active or disabled.")
            if field_name == "email" and value is not None and not _EMAIL.fullmatch(value):
                raise ValidationFailed("The e-mail address is not valid.")
            if field_name == "email" and value != user.email:
                # A new address is unproven: an old verification must not vouch for it.
                user.is_email_verified = False
            setattr(user, field_name, value)
        user.version += 1
        if changes.get("status") == UserStatus.disabled:
            await self._revoke_sessions(session, user.id, reason="user_disabled")
        invalidate_after_commit(session, API_KEYS, None)  # a disabled user's keys stop at once
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.user.update",
            actor=actor,
            target_type="user",
            target_id=user.id,
            data={"fields": sorted(changes)},
        )
        return user

    async def set_password(
        self,
        session: AsyncSession,
        tenant_id: str,
        user_id: str,
        new_password: str,
        *,
        current_password: str | None = None,
        actor: Actor = SYSTEM,
        grantor: Principal | None = None,
    ) -> None:
        """``grantor`` sets another user's password: it must hold all that user may do."""
        user = await self.get_user(session, tenant_id, user_id)
        if grantor is not None and not _is_self(grantor, PrincipalType.user, user.id):
            _, held = await self.roles_and_permissions(session, PrincipalType.user, user.id)
            _ensure_may_grant(grantor, held)
        if current_password is not None and not await self.passwords.verify_off_loop(
            user.password_hash, current_password
        ):
            raise ValidationFailed("The current password is wrong.")
        self.passwords.check_policy(new_password, username=user.username, email=user.email)
        history = list(
            await session.scalars(
                select(PasswordHistory.password_hash)
                .where(PasswordHistory.user_id == user.id)
                .order_by(PasswordHistory.created_at.desc())
                .limit(max(self.settings.password_history, 1))
            )
        )
        if self.settings.password_history and any(
            [await self.passwords.verify_off_loop(old, new_password) for old in history]
        ):
            raise ValidationFailed(
                f"The password must differ from the last {self.settings.password_history}."
            )
        user.password_hash = await self.passwords.hash_off_loop(new_password)
        user.failed_login_count = 0
        user.locked_until = None
        user.version += 1
        session.add(PasswordHistory(user_id=user.id, password_hash=user.password_hash))
        await self._revoke_sessions(session, user.id, reason="password_changed")
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.user.password_change",
            actor=actor,
            target_type="user",
            target_id=user.id,
        )

    # -- service accounts and OAuth clients -----------------------------------------------------

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
        if not _NAME.fullmatch(name):
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

    async def client_id_for_secret(
        self, session: AsyncSession, service_account_id: str, secret: str
    ) -> str | None:
        """The client of ``service_account_id`` whose secret is ``secret`` (found by its keyed
        hash: an indexed equality, no secret compared by hand), if any and not revoked."""
        client_id = await session.scalar(
            select(OAuthClient.client_id)
            .where(
                OAuthClient.service_account_id == service_account_id,
                OAuthClient.secret_hash == self.keyring.token_hash(secret),
                OAuthClient.is_revoked.is_(False),
            )
            .execution_options(all_tenants=True)  # the account id tells which tenant
        )
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

    # -- roles ----------------------------------------------------------------------------------

    async def create_role(
        self,
        session: AsyncSession,
        tenant_id: str,
        *,
        name: str,
        permissions: Iterable[str],
        description: str | None = None,
        actor: Actor = SYSTEM,
        grantor: Principal | None = None,
    ) -> Role:
        bind_tenant(session, tenant_id)
        if not _NAME.fullmatch(name):
            raise ValidationFailed("A role name is 1-100 lowercase letters, digits and . _ -.")
        permissions = _validated_permissions(permissions)
        _ensure_may_grant(grantor, permissions)
        if await session.scalar(select(Role.id).where(Role.name == name)):
            raise Conflict(f"Role {name!r} exists already.")
        role = Role(name=name, permissions=permissions, description=description)
        session.add(role)
        await session.flush()
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.role.create",
            actor=actor,
            target_type="role",
            target_id=role.id,
            data={"name": name, "permissions": permissions},
        )
        return role

    async def get_role(self, session: AsyncSession, tenant_id: str, name: str) -> Role:
        bind_tenant(session, tenant_id)
        role = await session.scalar(select(Role).where(Role.name == name))
        if role is None:
            raise NotFound(f"No role {name!r}.")
        return role

    async def list_roles(self, session: AsyncSession, tenant_id: str) -> list[Role]:
        bind_tenant(session, tenant_id)
        return list(await session.scalars(select(Role).order_by(Role.name)))

    async def update_role(
        self,
        session: AsyncSession,
        tenant_id: str,
        name: str,
        *,
        permissions: Iterable[str],
        if_match: str | None,
        actor: Actor = SYSTEM,
        grantor: Principal | None = None,
    ) -> Role:
        role = await self.get_role(session, tenant_id, name)
        check_if_match(if_match, role.version, required=False)
        before = list(role.permissions)
        permissions = _validated_permissions(permissions)
        # Removing a permission changes what every holder may do as much as adding one: the
        # changer must hold the role's permissions before and after (emptying ``admin`` and
        # then assigning it to oneself was the escalation).
        _ensure_may_grant(grantor, [*before, *permissions])
        if role.name == ADMIN_ROLE and permissions != ADMIN_PERMISSIONS:
            raise Conflict(f"The built-in role {ADMIN_ROLE!r} keeps every permission ('*').")
        role.permissions = permissions
        role.version += 1
        _forget_grants(session)
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.role.update",
            actor=actor,
            target_type="role",
            target_id=role.id,
            data={"before": before, "after": role.permissions},
        )
        return role

    async def delete_role(
        self,
        session: AsyncSession,
        tenant_id: str,
        name: str,
        actor: Actor = SYSTEM,
        grantor: Principal | None = None,
    ) -> None:
        role = await self.get_role(session, tenant_id, name)
        if role.name == ADMIN_ROLE:
            raise Conflict(f"The built-in role {ADMIN_ROLE!r} cannot be deleted.")
        _ensure_may_grant(grantor, role.permissions)
        await session.execute(delete(RoleAssignment).where(RoleAssignment.role_id == role.id))
        await session.delete(role)
        _forget_grants(session)
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.role.delete",
            actor=actor,
            target_type="role",
            target_id=role.id,
            data={"name": name},
        )

    async def assign_role(
        self,
        session: AsyncSession,
        tenant_id: str,
        role_name: str,
        principal_type: PrincipalType,
        principal_id: str,
        actor: Actor = SYSTEM,
        grantor: Principal | None = None,
    ) -> None:
        role = await self.get_role(session, tenant_id, role_name)
        await self._require_principal(session, principal_type, principal_id)
        _ensure_may_grant(grantor, role.permissions)
        exists = await session.scalar(
            select(RoleAssignment.id).where(
                RoleAssignment.role_id == role.id,
                RoleAssignment.principal_type == principal_type,
                RoleAssignment.principal_id == principal_id,
            )
        )
        if exists is None:
            session.add(
                RoleAssignment(
                    role_id=role.id, principal_type=principal_type, principal_id=principal_id
                )
            )
        _forget_grants(session)
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.role.assign",
            actor=actor,
            target_type=str(principal_type),
            target_id=principal_id,
            data={"role": role_name},
        )

    async def unassign_role(
        self,
        session: AsyncSession,
        tenant_id: str,
        role_name: str,
        principal_type: PrincipalType,
        principal_id: str,
        actor: Actor = SYSTEM,
        grantor: Principal | None = None,
    ) -> None:
        role = await self.get_role(session, tenant_id, role_name)
        _ensure_may_grant(grantor, role.permissions)
        if role.name == ADMIN_ROLE:
            await self._keep_an_admin(session, role, principal_type, principal_id)
        await session.execute(
            delete(RoleAssignment).where(
                RoleAssignment.role_id == role.id,
                RoleAssignment.principal_type == principal_type,
                RoleAssignment.principal_id == principal_id,
            )
        )
        _forget_grants(session)
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.role.unassign",
            actor=actor,
            target_type=str(principal_type),
            target_id=principal_id,
            data={"role": role_name},
        )

    async def _keep_an_admin(
        self,
        session: AsyncSession,
        role: Role,
        principal_type: PrincipalType,
        principal_id: str,
    ) -> None:
        """Refuse to take ``role`` (the built-in admin) from its last holder. The holders are
        read locked, so two unassignments at once cannot each leave the other as the last."""
        await hold_write_lock(session)
        holders = list(
            await session.execute(
                select(RoleAssignment.principal_type, RoleAssignment.principal_id)
                .where(RoleAssignment.role_id == role.id)
                .with_for_update()
            )
        )
        others = [h for h in holders if (h[0], h[1]) != (principal_type, principal_id)]
        if holders and not others:
            raise Conflict(
                f"The built-in role {ADMIN_ROLE!r} needs a holder: assign it to another "
                "principal first."
            )

    async def _require_principal(
        self, session: AsyncSession, principal_type: PrincipalType, principal_id: str
    ) -> None:
        model = User if principal_type == PrincipalType.user else ServiceAccount
        if await session.scalar(select(model.id).where(model.id == principal_id)) is None:
            raise NotFound(f"No {principal_type} {principal_id!r} in this tenant.")

    async def roles_and_permissions(
        self, session: AsyncSession, principal_type: str, principal_id: str
    ) -> tuple[list[str], list[str]]:
        rows = await session.execute(
            select(Role.name, Role.permissions)
            .join(RoleAssignment, RoleAssignment.role_id == Role.id)
            .where(
                RoleAssignment.principal_type == principal_type,
                RoleAssignment.principal_id == principal_id,
            )
            .order_by(Role.name)
        )
        roles, permissions = [], set()
        for name, role_permissions in rows:
            roles.append(name)
            permissions.update(role_permissions)
        return roles, sorted(permissions)

    # -- API keys -------------------------------------------------------------------------------

    async def create_api_key(
        self,
        session: AsyncSession,
        tenant_id: str,
        *,
        name: str,
        principal_type: PrincipalType,
        principal_id: str,
        scopes: Iterable[str] = (),
        expires_at: datetime | None = None,
        actor: Actor = SYSTEM,
        grantor: Principal | None = None,
    ) -> tuple[ApiKey, str]:
        """A key acting as the principal; ``grantor`` (when not that principal itself) must
        hold every permission the key would carry, or minting one would be an escalation."""
        bind_tenant(session, tenant_id)
        await self._require_principal(session, principal_type, principal_id)
        if expires_at is not None and expires_at <= utcnow():
            raise ValidationFailed("expires_at must be in the future.")
        scopes = _validated_permissions(scopes)
        if grantor is not None and not _is_self(grantor, principal_type, principal_id):
            _, held = await self.roles_and_permissions(session, principal_type, principal_id)
            _ensure_may_grant(grantor, narrow_permissions(held, scopes) if scopes else held)
        token, lookup = new_api_key()
        key = ApiKey(
            lookup=lookup,
            secret_hash=self.keyring.token_hash(token),
            name=name,
            principal_type=principal_type,
            principal_id=principal_id,
            scopes=scopes,
            expires_at=expires_at,
        )
        session.add(key)
        await session.flush()
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.api_key.create",
            actor=actor,
            target_type="api_key",
            target_id=key.id,
            data={
                "name": name,
                "principal_type": str(principal_type),
                "principal_id": principal_id,
                "scopes": key.scopes,
            },
        )
        return key, token

    async def list_api_keys(self, session: AsyncSession, tenant_id: str) -> list[ApiKey]:
        bind_tenant(session, tenant_id)
        return list(await session.scalars(select(ApiKey).order_by(ApiKey.created_at)))

    async def revoke_api_key(
        self, session: AsyncSession, tenant_id: str, key_id: str, actor: Actor = SYSTEM
    ) -> None:
        bind_tenant(session, tenant_id)
        key = await session.scalar(select(ApiKey).where(ApiKey.id == key_id))
        if key is None:
            raise NotFound("No such API key.")
        key.revoked_at = key.revoked_at or utcnow()
        invalidate_after_commit(session, API_KEYS, key.lookup)
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.api_key.revoke",
            actor=actor,
            target_type="api_key",
            target_id=key.id,
        )

    async def principal_for_api_key(self, session: AsyncSession, token: str) -> Principal | None:
        lookup = parse_api_key(token)
        if lookup is None:
            return None
        now = utcnow()
        cached = API_KEYS.get(lookup)
        if cached is not None:
            secret_hash, principal, expires_at, last_used_at = cached
            if (
                (expires_at is None or expires_at > now)
                and now - last_used_at <= _LAST_USED_GRANULARITY
                and self.keyring.token_matches(token, secret_hash)
            ):
                bind_tenant(session, principal.tenant_id)
                return principal
        stamp = API_KEYS.stamp()
        key = await session.scalar(
            select(ApiKey).where(ApiKey.lookup == lookup).execution_options(all_tenants=True)
        )
        if key is None or not self.keyring.token_matches(token, key.secret_hash):
            return None
        if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
            return None
        bind_tenant(session, key.tenant_id)
        if not await self._principal_is_active(session, key.principal_type, key.principal_id):
            return None
        roles, permissions = await self.roles_and_permissions(
            session, key.principal_type, key.principal_id
        )
        if key.scopes:
            permissions = narrow_permissions(permissions, key.scopes)
        if key.last_used_at is None or now - key.last_used_at > _LAST_USED_GRANULARITY:
            key.last_used_at = now
        principal = Principal(
            subject=key.principal_id,
            tenant_id=key.tenant_id,
            principal_type=key.principal_type,
            roles=frozenset(roles),
            permissions=frozenset(permissions),
            credential="api_key",
            claims={"api_key_id": key.id},
        )
        API_KEYS.put(lookup, (key.secret_hash, principal, key.expires_at, key.last_used_at), stamp)
        return principal

    async def _principal_is_active(
        self, session: AsyncSession, principal_type: str, principal_id: str
    ) -> bool:
        if principal_type == PrincipalType.user:
            status = await session.scalar(select(User.status).where(User.id == principal_id))
            return status == UserStatus.active
        disabled = await session.scalar(
            select(ServiceAccount.is_disabled).where(ServiceAccount.id == principal_id)
        )
        return disabled is False

    # -- tokens ---------------------------------------------------------------------------------

    async def issue_access_token(
        self,
        session: AsyncSession,
        *,
        tenant_id: str,
        principal_type: str,
        principal_id: str,
        scope: str = "",
        audience: str | None = None,
        session_id: str | None = None,
        client_id: str | None = None,
        extra_claims: dict[str, Any] | None = None,
    ) -> tuple[str, int]:
        roles, permissions = await self.roles_and_permissions(session, principal_type, principal_id)
        return self._sign_access_token(
            tenant_id=tenant_id,
            principal_type=principal_type,
            principal_id=principal_id,
            roles=roles,
            permissions=permissions,
            scope=scope,
            audience=audience,
            key=await self.keys.active_key(session),
            session_id=session_id,
            client_id=client_id,
            extra_claims=extra_claims,
        )

    def _sign_access_token(
        self,
        *,
        tenant_id: str,
        principal_type: str,
        principal_id: str,
        roles: list[str],
        permissions: list[str],
        scope: str,
        audience: str | None,
        key: LoadedKey,
        session_id: str | None = None,
        client_id: str | None = None,
        extra_claims: dict[str, Any] | None = None,
    ) -> tuple[str, int]:
        """The signed JWT and its lifetime; permission scopes narrow the permissions claim."""
        requested = [s for s in scope.split() if ":" in s]
        if requested:
            permissions = narrow_permissions(permissions, requested)
        now = int(time.time())
        ttl = int(self.access_ttl.total_seconds())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": principal_id,
            "aud": _audience_claim(audience, self.settings.audience),
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "tid": tenant_id,
            "typ": principal_type,
            "roles": roles,
            "permissions": permissions,
            "scope": scope,
        }
        if session_id:
            claims["sid"] = session_id
        if client_id:
            claims["client_id"] = client_id
        if extra_claims:
            claims.update(extra_claims)
        token = jwt.encode(
            claims,
            key.private_key,
            algorithm=key.algorithm,
            headers={"kid": key.kid, "typ": "at+jwt"},
        )
        return token, ttl

    async def verify_access_token(
        self, session: AsyncSession, token: str, *, for_keel: bool = True
    ) -> Principal:
        """Verify locally, then refuse tokens revoked before their expiry (RFC 7009).

        ``for_keel``: the token is presented to Keel's own APIs, so its ``aud`` must name Keel
        (``KEEL_AUTH__AUDIENCE``); a token issued for another service is that service's to
        use, and one replayed at Keel would lend the replayer the caller's permissions.
        Introspection, asked on behalf of that other service, passes ``False``.
        """
        principal = await self.verifier.verify(token)
        if for_keel and not _names_audience(principal.claims.get("aud"), self.settings.audience):
            raise InvalidToken(
                "bad_audience",
                f"the token is not meant for Keel (aud must include {self.settings.audience!r})",
            )
        jti = principal.claims.get("jti")
        if isinstance(jti, str) and await self._is_revoked(session, jti):
            self.verifier.forget(token)
            raise InvalidToken("revoked", "the token was revoked")
        session_id = principal.claims.get("sid")
        if isinstance(session_id, str):
            revoked = await session.scalar(
                select(LoginSession.revoked_at)
                .where(LoginSession.id == session_id)
                .execution_options(all_tenants=True)
            )
            if revoked is not None:
                raise InvalidToken("revoked", "the session was ended")
        return principal

    async def _is_revoked(self, session: AsyncSession, jti: str) -> bool:
        """Whether access token ``jti`` was revoked; the answer is kept for a moment
        (:data:`REVOCATIONS`), as every authenticated request asks."""
        revoked = REVOCATIONS.get(jti)
        if revoked is None:
            stamp = REVOCATIONS.stamp()
            revoked = await session.get(RevokedAccessToken, jti) is not None
            REVOCATIONS.put(jti, revoked, stamp)
        return revoked

    async def authenticate(self, session: AsyncSession, credential: str) -> Principal | None:
        """The principal of a bearer credential (JWT or API key), or None."""
        if looks_like_api_key(credential):
            return await self.principal_for_api_key(session, credential)
        try:
            return await self.verify_access_token(session, credential)
        except InvalidToken:
            return None

    # -- login, refresh, logout -----------------------------------------------------------------

    async def login(
        self,
        session: AsyncSession,
        *,
        tenant_slug: str,
        identifier: str,
        password: str,
        actor: Actor,
        client_id: str | None = None,
        totp_code: str | None = None,
    ) -> TokenPair | AuthFailure:
        checked = await self.check_credentials(
            session,
            tenant_slug=tenant_slug,
            identifier=identifier,
            password=password,
            totp_code=totp_code,
            actor=actor,
        )
        if isinstance(checked, AuthFailure):
            return checked
        user, tenant_id = checked, checked.tenant_id
        pair = await self.start_session(session, tenant_id, user, actor, client_id, scope="")
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.session.login",
            actor_type="user",
            actor_id=user.id,
            ip_address=actor.ip_address,
            target_type="session",
            target_id=pair.session_id,
        )
        return pair

    async def check_credentials(
        self,
        session: AsyncSession,
        *,
        tenant_slug: str,
        identifier: str,
        password: str,
        actor: Actor,
        totp_code: str | None = None,
    ) -> User | AuthFailure:
        """The user, when the password (and the second factor, if on) are right.

        Failures are recorded and count towards the lockout; ``mfa_required`` is only ever
        returned after the password was verified.
        """
        tenant_id = await session.scalar(select(Tenant.id).where(Tenant.slug == tenant_slug))
        user: User | None = None
        if tenant_id is not None:
            bind_tenant(session, tenant_id)
            # A username match wins over an e-mail match, so one identifier never picks
            # between two accounts arbitrarily.
            user = await session.scalar(select(User).where(User.username == identifier))
            if user is None:
                user = await session.scalar(select(User).where(User.email == identifier))
        # The hash is verified on every path, so every answer costs the same.
        password_ok = await self.passwords.verify_off_loop(
            user.password_hash if user else None, password
        )
        now = utcnow()
        failure: str | None = None
        if user is None:
            failure = "unknown_user"
        elif user.status != UserStatus.active:
            failure = "disabled"
        elif user.locked_until is not None and user.locked_until > now:
            failure = "locked"
        elif not password_ok:
            failure = "bad_password"
            self._count_failed_login(user, now)
        else:
            failure = await self.mfa.check_login_code(session, user, totp_code)
            if failure is not None and failure != MfaCheck.required:
                self._count_failed_login(user, now)  # guessing codes locks out too
        if failure is not None:
            if tenant_id is not None:
                record_event(
                    session,
                    tenant_id=tenant_id,
                    action="auth.session.login",
                    outcome=Outcome.failure,
                    actor_type="user",
                    actor_id=user.id if user else None,
                    ip_address=actor.ip_address,
                    reason=failure,
                    # Never what was typed (it may be a password typed in the wrong field):
                    # a keyed fingerprint still ties repeated attempts at one name together.
                    data={} if user else {"identifier_fingerprint": self._fingerprint(identifier)},
                )
            return AuthFailure(str(failure))
        assert user is not None
        user.failed_login_count = 0
        user.locked_until = None
        user.last_login_at = now
        if user.password_hash and self.passwords.needs_rehash(user.password_hash):
            user.password_hash = await self.passwords.hash_off_loop(password)
        return user

    def _fingerprint(self, identifier: str) -> str:
        return self.keyring.token_hash(identifier.strip().casefold())[:16]

    def _count_failed_login(self, user: User, now: datetime) -> None:
        user.failed_login_count += 1
        over = user.failed_login_count - self.settings.lockout_threshold
        if over >= 0:
            delay = min(
                self.settings.lockout_base_seconds * (2**over),
                self.settings.lockout_max_seconds,
            )
            user.locked_until = now + timedelta(seconds=delay)

    async def start_session(
        self,
        session: AsyncSession,
        tenant_id: str,
        user: User,
        actor: Actor,
        client_id: str | None,
        scope: str,
    ) -> TokenPair:
        now = utcnow()
        login_session = LoginSession(
            user_id=user.id,
            client_id=client_id,
            user_agent=(actor.user_agent or "")[:400] or None,
            ip_address=actor.ip_address,
            expires_at=now + self.refresh_ttl,
        )
        session.add(login_session)
        await session.flush()
        return await self._issue_pair(session, tenant_id, user.id, login_session, scope, client_id)

    async def _issue_pair(
        self,
        session: AsyncSession,
        tenant_id: str,
        user_id: str,
        login_session: LoginSession,
        scope: str,
        client_id: str | None,
    ) -> TokenPair:
        refresh = new_refresh_token()
        session.add(
            RefreshToken(
                session_id=login_session.id,
                token_hash=self.keyring.token_hash(refresh),
                expires_at=login_session.expires_at,
                scope=scope,
            )
        )
        access, ttl = await self.issue_access_token(
            session,
            tenant_id=tenant_id,
            principal_type=PrincipalType.user,
            principal_id=user_id,
            scope=scope,
            session_id=login_session.id,
            client_id=client_id,
        )
        return TokenPair(access, ttl, refresh, scope, login_session.id)

    async def refresh(
        self,
        session: AsyncSession,
        refresh_token: str,
        actor: Actor,
        client_id: str | None = None,
    ) -> TokenPair | AuthFailure:
        """Rotate a refresh token; presenting a rotated one again revokes its whole family."""
        row = await session.scalar(
            select(RefreshToken)
            .where(RefreshToken.token_hash == self.keyring.token_hash(refresh_token))
            .execution_options(all_tenants=True)
        )
        if row is None:
            return AuthFailure("unknown_refresh_token")
        bind_tenant(session, row.tenant_id)
        login_session = await session.scalar(
            select(LoginSession).where(LoginSession.id == row.session_id)
        )
        assert login_session is not None
        now = utcnow()
        if row.used_at is not None:
            if login_session.revoked_at is None:
                login_session.revoked_at = now
                login_session.revoked_reason = "refresh_token_reuse"
            record_event(
                session,
                tenant_id=row.tenant_id,
                action="auth.session.revoke",
                outcome=Outcome.denied,
                actor_type="user",
                actor_id=login_session.user_id,
                ip_address=actor.ip_address,
                target_type="session",
                target_id=login_session.id,
                reason="refresh_token_reuse",
            )
            return AuthFailure("refresh_token_reuse")
        if login_session.revoked_at is not None or row.expires_at <= now:
            return AuthFailure("session_ended")
        if login_session.client_id is not None and client_id != login_session.client_id:
            # A client's refresh token is bound to it (RFC 6749 §6); anyone else is refused.
            return AuthFailure("wrong_client")
        if not await self._principal_is_active(session, PrincipalType.user, login_session.user_id):
            return AuthFailure("disabled")
        # Spend the token with a conditional update: of two concurrent refreshes with the same
        # token only one finds it unused; the other is treated as the reuse it is.
        spent = await session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        if int(getattr(spent, "rowcount", 0) or 0) != 1:
            login_session.revoked_at = login_session.revoked_at or now
            login_session.revoked_reason = login_session.revoked_reason or "refresh_token_reuse"
            return AuthFailure("refresh_token_reuse")
        row.used_at = now
        login_session.last_used_at = now
        pair = await self._issue_pair(
            session,
            row.tenant_id,
            login_session.user_id,
            login_session,
            row.scope,
            login_session.client_id,
        )
        record_event(
            session,
            tenant_id=row.tenant_id,
            action="auth.token.refresh",
            actor_type="user",
            actor_id=login_session.user_id,
            ip_address=actor.ip_address,
            target_type="session",
            target_id=login_session.id,
        )
        return pair

    async def logout(self, session: AsyncSession, principal: Principal) -> None:
        session_id = principal.claims.get("sid")
        if not isinstance(session_id, str):
            raise ValidationFailed("This credential has no login session to end.")
        await self.revoke_session(
            session, principal.tenant_id, principal.subject, session_id, actor=Actor.of(principal)
        )

    async def list_sessions(
        self, session: AsyncSession, tenant_id: str, user_id: str
    ) -> list[LoginSession]:
        bind_tenant(session, tenant_id)
        return list(
            await session.scalars(
                select(LoginSession)
                .where(
                    LoginSession.user_id == user_id,
                    LoginSession.revoked_at.is_(None),
                    LoginSession.expires_at > utcnow(),
                )
                .order_by(LoginSession.created_at.desc())
            )
        )

    async def revoke_session(
        self,
        session: AsyncSession,
        tenant_id: str,
        user_id: str,
        session_id: str,
        actor: Actor = SYSTEM,
    ) -> None:
        bind_tenant(session, tenant_id)
        login_session = await session.scalar(
            select(LoginSession).where(
                LoginSession.id == session_id, LoginSession.user_id == user_id
            )
        )
        if login_session is None:
            raise NotFound("No such session.")
        login_session.revoked_at = login_session.revoked_at or utcnow()
        login_session.revoked_reason = login_session.revoked_reason or "logout"
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.session.revoke",
            actor=actor,
            target_type="session",
            target_id=session_id,
        )

    async def revoke_all_sessions(
        self, session: AsyncSession, tenant_id: str, user_id: str, actor: Actor = SYSTEM
    ) -> int:
        bind_tenant(session, tenant_id)
        count = await self._revoke_sessions(session, user_id, reason="revoke_all")
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.session.revoke_all",
            actor=actor,
            target_type="user",
            target_id=user_id,
            data={"count": count},
        )
        return count

    async def _revoke_sessions(self, session: AsyncSession, user_id: str, reason: str) -> int:
        result = await session.execute(
            update(LoginSession)
            .where(LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revoked_reason=reason)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    # -- OAuth2 grants, introspection, revocation ---------------------------------------------

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
        access, ttl = self._sign_access_token(
            tenant_id=client.tenant_id,
            principal_type=PrincipalType.service_account,
            principal_id=account_id,
            roles=roles,
            permissions=sorted(permissions),
            scope=granted,
            audience=audience,
            key=await self.keys.active_key(session),
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
        return TokenPair(access, ttl, None, granted)

    async def introspect(
        self, session: AsyncSession, token: str, *, tenant_id: str | None = None
    ) -> dict[str, Any]:
        """RFC 7662: ``{"active": false}`` for anything not currently valid.

        With ``tenant_id`` (the caller's), another tenant's token is reported inactive too: a
        client of one tenant learns nothing about another's identities.
        """
        result = await self._introspect(session, token)
        if tenant_id is not None and result.get("tid") != tenant_id:
            return {"active": False}
        return result

    async def _introspect(self, session: AsyncSession, token: str) -> dict[str, Any]:
        if looks_like_api_key(token):
            principal = await self.principal_for_api_key(session, token)
            if principal is None:
                return {"active": False}
            return {
                "active": True,
                "token_type": "api_key",
                "sub": principal.subject,
                "tid": principal.tenant_id,
                "typ": principal.principal_type,
                "roles": sorted(principal.roles),
                "permissions": sorted(principal.permissions),
            }
        if token.startswith("krt_"):
            row = await session.scalar(
                select(RefreshToken)
                .where(RefreshToken.token_hash == self.keyring.token_hash(token))
                .execution_options(all_tenants=True)
            )
            if row is None or row.used_at is not None or row.expires_at <= utcnow():
                return {"active": False}
            login_session = await session.scalar(
                select(LoginSession)
                .where(LoginSession.id == row.session_id)
                .execution_options(all_tenants=True)
            )
            if login_session is None or login_session.revoked_at is not None:
                return {"active": False}
            return {
                "active": True,
                "token_type": "refresh_token",
                "sub": login_session.user_id,
                "tid": row.tenant_id,
                "exp": int(row.expires_at.timestamp()),
                "scope": row.scope,
            }
        try:
            principal = await self.verify_access_token(session, token, for_keel=False)
        except InvalidToken:
            return {"active": False}
        return {"active": True, "token_type": "access_token", **principal.claims}

    async def revoke_token(
        self, session: AsyncSession, token: str, actor: Actor, client_id: str | None = None
    ) -> bool:
        """RFC 7009: revoke a refresh token's session or an access token; unknown is fine.

        ``client_id`` is the authenticated caller's client, if any. A token issued to a client
        is revoked only for that client: False, and nothing revoked, for anyone else.
        """
        if token.startswith("krt_"):
            row = await session.scalar(
                select(RefreshToken)
                .where(RefreshToken.token_hash == self.keyring.token_hash(token))
                .execution_options(all_tenants=True)
            )
            if row is None:
                return True
            bind_tenant(session, row.tenant_id)
            owner = await session.scalar(
                select(LoginSession.client_id).where(LoginSession.id == row.session_id)
            )
            if owner is not None and owner != client_id:
                return False
            await session.execute(
                update(LoginSession)
                .where(LoginSession.id == row.session_id, LoginSession.revoked_at.is_(None))
                .values(revoked_at=utcnow(), revoked_reason="revoked")
            )
            record_event(
                session,
                tenant_id=row.tenant_id,
                action="auth.token.revoke",
                actor=actor,
                target_type="session",
                target_id=row.session_id,
                data={"token_type": "refresh_token"},
            )
            return True
        try:
            principal = await self.verifier.verify(token)
        except InvalidToken:
            return True
        owner = principal.claims.get("client_id")
        if isinstance(owner, str) and owner != client_id:
            return False
        jti, exp = principal.claims.get("jti"), principal.expires_at
        if isinstance(jti, str) and exp is not None:
            if await session.get(RevokedAccessToken, jti) is None:
                session.add(RevokedAccessToken(jti=jti, expires_at=_from_timestamp(exp)))
            invalidate_after_commit(session, REVOCATIONS, jti)
            self.verifier.forget(token)
            record_event(
                session,
                tenant_id=principal.tenant_id,
                action="auth.token.revoke",
                actor=actor,
                target_type="access_token",
                target_id=jti,
                data={"token_type": "access_token"},
            )
        return True

    async def purge_expired(self, session: AsyncSession) -> None:
        """Drop revocation entries and refresh tokens nobody can present any more."""
        now = utcnow()
        await session.execute(delete(RevokedAccessToken).where(RevokedAccessToken.expires_at < now))
        await session.execute(
            delete(RefreshToken)
            .where(RefreshToken.expires_at < now)
            .execution_options(all_tenants=True)
        )


def _audience_claim(requested: str | None, default: str) -> str | list[str]:
    """``aud`` of a new token: the requested audiences (space-separated, as ``scope`` is; one
    may be Keel's own, for a token meant for a service and for Keel), or Keel's own."""
    audiences = list(dict.fromkeys((requested or "").split())) or [default]
    return audiences[0] if len(audiences) == 1 else audiences


def _names_audience(claim: object, audience: str) -> bool:
    """Whether an ``aud`` claim (a string or a list of them, RFC 7519) includes ``audience``."""
    if isinstance(claim, str):
        return claim == audience
    return isinstance(claim, list) and audience in claim


def _is_self(principal: Principal, principal_type: str, principal_id: str) -> bool:
    return principal.principal_type == principal_type and principal.subject == principal_id


def _ensure_may_grant(grantor: Principal | None, permissions: Iterable[str]) -> None:
    """Refuse to let ``grantor`` hand out a permission it does not hold itself.

    Without this, ``auth:role:assign`` or ``auth:api_key:create`` alone would reach every
    permission of the tenant (assign yourself ``admin``, mint a key for an administrator).
    ``None`` is the platform itself (CLI, bootstrap), which may grant anything.
    """
    if grantor is None:
        return
    missing = [p for p in permissions if not grantor.has_permission(p)]
    if missing:
        raise Forbidden(f"Granting {missing[0]!r} needs holding it.")


def _validated_permissions(permissions: Iterable[str]) -> list[str]:
    values = sorted(set(permissions))
    invalid = [p for p in values if not is_valid_permission(p)]
    if invalid:
        raise ValidationFailed(
            f"Permission {invalid[0]!r} is not service:resource:action (with * wildcards)."
        )
    return values


def _from_timestamp(value: int) -> datetime:
    from datetime import UTC

    return datetime.fromtimestamp(value, UTC)


async def _platform_tenant_id(session: AsyncSession) -> str:
    """Platform-wide events (signing keys) are recorded under the ``default`` tenant."""
    tenant_id = await session.scalar(select(Tenant.id).where(Tenant.slug == "default"))
    if tenant_id is None:
        tenant = Tenant(slug="default", name="default")
        session.add(tenant)
        await session.flush()
        return tenant.id
    return tenant_id
