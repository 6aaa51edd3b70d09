"""Wire models of the auth API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from keel.auth.models import PrincipalType
from keel.core.timestamps import UTCTimestamp


class LoginRequest(BaseModel):
    tenant: str = Field(default="default", max_length=63)
    username: str = Field(min_length=1, max_length=320, description="Username or e-mail.")
    password: SecretStr = Field(max_length=1024)
    totp_code: SecretStr | None = Field(
        default=None,
        max_length=64,
        description="The authenticator's current code, or a recovery code, when MFA is on.",
    )


class RefreshRequest(BaseModel):
    refresh_token: SecretStr = Field(max_length=200)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    refresh_token: str | None = None
    scope: str = ""


class UserCreate(BaseModel):
    username: str = Field(min_length=2, max_length=150)
    email: str | None = Field(default=None, max_length=320)
    display_name: str | None = Field(default=None, max_length=200)
    password: SecretStr | None = Field(default=None, max_length=1024)
    roles: list[str] = Field(default_factory=list, max_length=50)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(default=None, max_length=320)
    display_name: str | None = Field(default=None, max_length=200)
    status: Literal["active", "disabled"] | None = None


class PasswordChange(BaseModel):
    new_password: SecretStr = Field(max_length=1024)
    current_password: SecretStr | None = Field(default=None, max_length=1024)


class User(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    username: str
    email: str | None
    display_name: str | None
    status: str
    is_email_verified: bool
    created_at: datetime
    last_login_at: datetime | None
    version: int


class ServiceAccountCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=1000)
    roles: list[str] = Field(default_factory=list, max_length=50)


class ServiceAccountCreated(BaseModel):
    id: str
    name: str
    client_id: str
    client_secret: str = Field(description="Shown once; store it now.")


class ServiceAccount(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    description: str | None
    is_disabled: bool
    created_at: datetime


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=150)
    principal_type: PrincipalType | None = Field(
        default=None, description="Defaults to the caller."
    )
    principal_id: str | None = Field(default=None, max_length=36)
    scopes: list[str] = Field(default_factory=list, max_length=100)
    expires_at: UTCTimestamp | None = None


class ApiKey(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    principal_type: str
    principal_id: str
    scopes: list[str]
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class ApiKeyCreated(ApiKey):
    key: str = Field(description="Shown once; store it now.")


class RoleCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=1000)
    permissions: list[str] = Field(default_factory=list, max_length=500)


class RoleUpdate(BaseModel):
    permissions: list[str] = Field(max_length=500)


class Role(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    description: str | None
    permissions: list[str]
    version: int


class RoleAssignmentCreate(BaseModel):
    principal_type: PrincipalType
    principal_id: str = Field(max_length=36)


class Session(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip_address: str | None


class Me(BaseModel):
    subject: str
    tenant_id: str
    principal_type: str
    roles: list[str]
    permissions: list[str]
    credential: str


class RotatedKey(BaseModel):
    active_kid: str


class TotpEnrolment(BaseModel):
    secret: str = Field(description="Base32 secret for manual entry; shown once.")
    otpauth_uri: str = Field(description="``otpauth://`` URI to show as a QR code.")


class TotpConfirm(BaseModel):
    code: SecretStr = Field(min_length=6, max_length=16)


class RecoveryCodes(BaseModel):
    recovery_codes: list[str] = Field(description="Each works once instead of a code; shown once.")


class TotpDisable(BaseModel):
    password: SecretStr | None = Field(default=None, max_length=1024)
    code: SecretStr | None = Field(
        default=None, max_length=64, description="A current code or a recovery code."
    )


class MfaStatus(BaseModel):
    totp_enabled: bool
    recovery_codes_left: int


class PasswordResetRequest(BaseModel):
    tenant: str = Field(default="default", max_length=63)
    email: str = Field(min_length=3, max_length=320)


class PasswordResetConfirm(BaseModel):
    token: SecretStr = Field(max_length=200)
    new_password: SecretStr = Field(max_length=1024)


class EmailVerificationConfirm(BaseModel):
    token: SecretStr = Field(max_length=200)


class ClientCreate(BaseModel):
    name: str = Field(min_length=1, max_length=150)
    redirect_uris: list[str] = Field(min_length=1, max_length=20)
    is_public: bool = Field(
        default=False, description="A public client (SPA, mobile, CLI) has no secret: PKCE only."
    )

    @field_validator("redirect_uris")
    @classmethod
    def _bounded_uris(cls, values: list[str]) -> list[str]:
        if any(len(value) > 2000 for value in values):
            raise ValueError("a redirect URI is at most 2000 characters")
        return values


class ClientCreated(BaseModel):
    client_id: str
    name: str
    redirect_uris: list[str]
    is_public: bool
    client_secret: str | None = Field(default=None, description="Shown once; store it now.")
