"""Access tokens: signing, verifying, introspecting (RFC 7662) and revoking (RFC 7009) them."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import LoginSession, RefreshToken, RevokedAccessToken
from keel.auth.service.api_keys import ApiKeys
from keel.auth.service.caches import REVOCATIONS
from keel.auth.service.credentials import looks_like_api_key
from keel.auth.service.keys import LoadedKey
from keel.auth.service.policy import audience_claim, names_audience
from keel.auth.service.roles import roles_and_permissions
from keel.auth.service.signing import Signing
from keel.core.audit import Actor, record_event
from keel.core.cache import invalidate_after_commit
from keel.core.crypto import Keyring
from keel.core.db import utcnow
from keel.core.tenancy import bind_tenant
from keel.settings import AuthSettings
from keel_client.auth import InvalidToken, Principal, narrow_permissions


def permissions_claim(permissions: list[str], scope: str) -> list[str]:
    """The ``permissions`` claim of a token granted ``scope``: permission scopes (those with a
    ``:``) narrow it, other scopes leave it whole."""
    requested = [s for s in scope.split() if ":" in s]
    return narrow_permissions(permissions, requested) if requested else permissions


class Tokens:
    """Sign access tokens with the active key; tell a valid credential from a revoked one."""

    def __init__(
        self,
        settings: AuthSettings,
        keyring: Keyring,
        signing: Signing,
        api_keys: ApiKeys,
        *,
        issuer: str,
    ) -> None:
        self.settings = settings
        self.keyring = keyring
        self.signing = signing
        self.api_keys = api_keys
        self.issuer = issuer
        self.access_ttl = timedelta(seconds=settings.access_token_ttl_seconds)

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
        """A token carrying the principal's current roles and permissions, and its lifetime."""
        roles, permissions = await roles_and_permissions(session, principal_type, principal_id)
        return self.sign_access_token(
            tenant_id=tenant_id,
            principal_type=principal_type,
            principal_id=principal_id,
            roles=roles,
            permissions=permissions,
            scope=scope,
            audience=audience,
            key=await self.signing.keys.active_key(session),
            session_id=session_id,
            client_id=client_id,
            extra_claims=extra_claims,
        )

    def sign_access_token(
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
        permissions = permissions_claim(permissions, scope)
        now = int(time.time())
        ttl = int(self.access_ttl.total_seconds())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": principal_id,
            "aud": audience_claim(audience, self.settings.audience),
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
        verifier = self.signing.verifier
        principal = await verifier.verify(token)
        if for_keel and not names_audience(principal.claims.get("aud"), self.settings.audience):
            raise InvalidToken(
                "bad_audience",
                f"the token is not meant for Keel (aud must include {self.settings.audience!r})",
            )
        jti = principal.claims.get("jti")
        if isinstance(jti, str) and await self._is_revoked(session, jti):
            verifier.forget(token)
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
            return await self.api_keys.principal_for_api_key(session, credential)
        try:
            return await self.verify_access_token(session, credential)
        except InvalidToken:
            return None

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
            principal = await self.api_keys.principal_for_api_key(session, token)
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
            principal = await self.signing.verifier.verify(token)
        except InvalidToken:
            return True
        owner = principal.claims.get("client_id")
        if isinstance(owner, str) and owner != client_id:
            return False
        jti, exp = principal.claims.get("jti"), principal.expires_at
        if isinstance(jti, str) and exp is not None:
            if await session.get(RevokedAccessToken, jti) is None:
                session.add(
                    RevokedAccessToken(jti=jti, expires_at=datetime.fromtimestamp(exp, UTC))
                )
            invalidate_after_commit(session, REVOCATIONS, jti)
            self.signing.verifier.forget(token)
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
