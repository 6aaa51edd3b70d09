"""Auth tables: identities, credentials, sessions, roles, keys, MFA and one-time tokens."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.ids import new_id
from keel.core.tenancy import TenantScoped


class PrincipalType(StrEnum):
    user = "user"
    service_account = "service_account"


class UserStatus(StrEnum):
    active = "active"
    disabled = "disabled"


class SigningKeyStatus(StrEnum):
    #: Published in JWKS, not yet signing: verifiers learn it before they see it.
    next = "next"
    active = "active"
    #: No longer signs; published until every token it signed has expired.
    retired = "retired"


class User(TenantScoped, Base):
    __tablename__ = "auth_users"
    __table_args__ = (
        UniqueConstraint("tenant_id", "username", name="uq_auth_users_tenant_username"),
        UniqueConstraint("tenant_id", "email", name="uq_auth_users_tenant_email"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(150))
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    display_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default=UserStatus.active)
    is_email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    failed_login_count: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)


class PasswordHistory(TenantScoped, Base):
    """Earlier password hashes of a user, to refuse reuse of the last N."""

    __tablename__ = "auth_password_history"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("auth_users.id", ondelete="CASCADE"), index=True
    )
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ServiceAccount(TenantScoped, Base):
    __tablename__ = "auth_service_accounts"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_auth_sa_tenant_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(150))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    is_disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OAuthClient(TenantScoped, Base):
    """An OAuth2 client: a service account's client credentials, or an application."""

    __tablename__ = "auth_oauth_clients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    #: Keyed hash of the secret; None for public clients (PKCE only).
    secret_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    name: Mapped[str] = mapped_column(String(150))
    service_account_id: Mapped[str | None] = mapped_column(
        String(36),
        ForeignKey("auth_service_accounts.id", ondelete="CASCADE"),
        nullable=True,
        index=True,
    )
    redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    grant_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Scopes a client may ask for; empty means those of its principal.
    allowed_scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    is_revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(TenantScoped, Base):
    __tablename__ = "auth_api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    #: The public part of the key (``keel_<lookup>_...``), indexed for lookup.
    lookup: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(150))
    principal_type: Mapped[str] = mapped_column(String(20))
    principal_id: Mapped[str] = mapped_column(String(36), index=True)
    #: Permissions the key is limited to (a subset of its principal's); empty = all of them.
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Role(TenantScoped, Base):
    __tablename__ = "auth_roles"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_auth_roles_tenant_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    permissions: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)


class RoleAssignment(TenantScoped, Base):
    __tablename__ = "auth_role_assignments"
    __table_args__ = (
        UniqueConstraint(
            "role_id", "principal_type", "principal_id", name="uq_auth_role_assignment"
        ),
        Index("ix_auth_role_assignments_principal", "principal_type", "principal_id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    role_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("auth_roles.id", ondelete="CASCADE"), index=True
    )
    principal_type: Mapped[str] = mapped_column(String(20))
    principal_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LoginSession(TenantScoped, Base):
    """A login and its family of refresh tokens; revoking it ends every token of the family."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("auth_users.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(400), nullable=True)
    ip_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(50), nullable=True)


class RefreshToken(TenantScoped, Base):
    __tablename__ = "auth_refresh_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    session_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: Set when the token was exchanged; presenting it again revokes the family.
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    scope: Mapped[str] = mapped_column(String(1000), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RevokedAccessToken(Base):
    """Access tokens revoked before expiry (RFC 7009), kept until they would have expired."""

    __tablename__ = "auth_revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class SigningKey(Base):
    """A token-signing key of the whole platform (tokens carry their tenant in ``tid``)."""

    __tablename__ = "auth_signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10), index=True)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: PKCS#8 DER private key, sealed by the master key (``keel.core.crypto``).
    private_key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: After this, no token it signed is valid any more; it leaves JWKS.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class UserTotp(TenantScoped, Base):
    """A user's TOTP authenticator (RFC 6238); it guards logins once confirmed."""

    __tablename__ = "auth_totp"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("auth_users.id", ondelete="CASCADE"), unique=True
    )
    #: The shared secret (base32), sealed by the master key and bound to the user.
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    #: None while enrolment awaits its first code.
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The time step of the last accepted code; a code of this step or older is refused.
    last_used_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RecoveryCode(TenantScoped, Base):
    """A one-time code that stands in for a TOTP code when the authenticator is lost."""

    __tablename__ = "auth_recovery_codes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("auth_users.id", ondelete="CASCADE"), index=True
    )
    #: Keyed hash (``Keyring.token_hash``) of the normalised code.
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OneTimeTokenPurpose(StrEnum):
    email_verification = "email_verification"
    password_reset = "password_reset"  # noqa: S105 - a purpose, not a secret


class OneTimeToken(TenantScoped, Base):
    """A single-use, expiring token sent to a user: e-mail verification, password reset."""

    __tablename__ = "auth_one_time_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("auth_users.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(String(30))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The address the token was sent to: verifying it must not vouch for a later one.
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class KnownDevice(TenantScoped, Base):
    """A device a user has logged in from, known only by a keyed hash of its user agent and
    IP network (see :mod:`keel.auth.service.devices`): a login from another one is told."""

    __tablename__ = "auth_known_devices"
    __table_args__ = (
        UniqueConstraint("user_id", "device_hash", name="uq_auth_known_devices_user_device"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("auth_users.id", ondelete="CASCADE"), index=True
    )
    device_hash: Mapped[str] = mapped_column(String(64))
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuthorizationCode(TenantScoped, Base):
    """An OAuth 2.0 authorization code (RFC 6749 §4.1) bound to its PKCE challenge."""

    __tablename__ = "auth_authorization_codes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    client_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("auth_users.id", ondelete="CASCADE"), index=True
    )
    redirect_uri: Mapped[str] = mapped_column(String(2000))
    #: ``BASE64URL(SHA256(code_verifier))`` (RFC 7636, S256 only).
    code_challenge: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(String(1000), default="")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The login session the code was exchanged for; revoked if the code is presented again.
    session_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
