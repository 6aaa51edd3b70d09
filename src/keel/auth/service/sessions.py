"""Login sessions: checking a password (and second factor), the refresh token family a login
starts, its rotation, and ending one session or all of a user's."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import LoginSession, PrincipalType, RefreshToken, User, UserStatus
from keel.auth.service.account_notices import AccountNotice, AccountNoticeKind
from keel.auth.service.credentials import new_refresh_token
from keel.auth.service.devices import note_login_device
from keel.auth.service.mfa import MfaCheck, TotpMfa
from keel.auth.service.passwords import Passwords
from keel.auth.service.results import AuthFailure, TokenPair
from keel.auth.service.roles import principal_is_active
from keel.auth.service.tokens import Tokens
from keel.core.audit import SYSTEM, Actor, Outcome, record_event
from keel.core.crypto import Keyring
from keel.core.db import utcnow
from keel.core.errors import NotFound, ValidationFailed
from keel.core.tenancy import Tenant, bind_tenant
from keel.settings import AuthSettings
from keel_client.auth import Principal


class LoginSessions:
    """Log users in and out; rotate refresh tokens, revoking a family on reuse."""

    def __init__(
        self,
        settings: AuthSettings,
        keyring: Keyring,
        passwords: Passwords,
        mfa: TotpMfa,
        tokens: Tokens,
    ) -> None:
        self.settings = settings
        self.keyring = keyring
        self.passwords = passwords
        self.mfa = mfa
        self.tokens = tokens
        self.refresh_ttl = timedelta(seconds=settings.refresh_token_ttl_seconds)

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
        notice = await self.note_device(session, user, actor)
        return replace(pair, notice=notice) if notice else pair

    async def note_device(
        self, session: AsyncSession, user: User, actor: Actor
    ) -> AccountNotice | None:
        """Record the device of a successful login (a keyed hash of its user agent family
        and IP network); the new-device notice to send after the commit, if it is new."""
        return await note_login_device(session, self.keyring, user, actor, utcnow())

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
        locked_now = False
        if user is None:
            failure = "unknown_user"
        elif user.status != UserStatus.active:
            failure = "disabled"
        elif user.locked_until is not None and user.locked_until > now:
            failure = "locked"
        elif not password_ok:
            failure = "bad_password"
            locked_now = self._count_failed_login(user, now)
        else:
            failure = await self.mfa.check_login_code(session, user, totp_code)
            if failure is not None and failure != MfaCheck.required:
                locked_now = self._count_failed_login(user, now)  # guessing codes locks out too
        if failure is not None:
            if tenant_id is not None:
                record_event(
                    session,
                    tenant_id=tenant_id,
                    action="auth.session.login",
                    outcome=Outcome.FAILURE,
                    actor_type="user",
                    actor_id=user.id if user else None,
                    ip_address=actor.ip_address,
                    reason=failure,
                    # Never what was typed (it may be a password typed in the wrong field):
                    # a keyed fingerprint still ties repeated attempts at one name together.
                    data={} if user else {"identifier_fingerprint": self._fingerprint(identifier)},
                )
            notice = None
            if locked_now and user is not None and user.email:
                notice = AccountNotice(
                    AccountNoticeKind.lockout,
                    user.tenant_id,
                    user.id,
                    user.email,
                    at=now,
                    until=user.locked_until,
                )
            return AuthFailure(str(failure), notice)
        assert user is not None
        user.failed_login_count = 0
        user.locked_until = None
        user.last_login_at = now
        if user.password_hash and self.passwords.needs_rehash(user.password_hash):
            user.password_hash = await self.passwords.hash_off_loop(password)
        return user

    def _fingerprint(self, identifier: str) -> str:
        return self.keyring.token_hash(identifier.strip().casefold())[:16]

    def _count_failed_login(self, user: User, now: datetime) -> bool:
        """Count a failure; whether it locked the account for the first time in this run of
        failures (the moment the user is told: not again for each longer lockout after)."""
        user.failed_login_count += 1
        over = user.failed_login_count - self.settings.lockout_threshold
        if over >= 0:
            delay = min(
                self.settings.lockout_base_seconds * (2**over),
                self.settings.lockout_max_seconds,
            )
            user.locked_until = now + timedelta(seconds=delay)
        return over == 0

    async def start_session(
        self,
        session: AsyncSession,
        tenant_id: str,
        user: User,
        actor: Actor,
        client_id: str | None,
        scope: str,
    ) -> TokenPair:
        """A new login session of ``user`` and its first access and refresh tokens."""
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
        access, ttl = await self.tokens.issue_access_token(
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
                outcome=Outcome.DENIED,
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
        if not await principal_is_active(session, PrincipalType.user, login_session.user_id):
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

    async def logout(
        self, session: AsyncSession, principal: Principal, actor: Actor | None = None
    ) -> None:
        """End the login session of ``principal``'s access token; ``actor`` names the caller
        with its address (the principal alone when not given)."""
        session_id = principal.claims.get("sid")
        if not isinstance(session_id, str):
            raise ValidationFailed("This credential has no login session to end.")
        await self.revoke_session(
            session,
            principal.tenant_id,
            principal.subject,
            session_id,
            actor=actor or Actor.of(principal),
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
        count = await revoke_user_sessions(session, user_id, reason="revoke_all")
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


async def revoke_user_sessions(session: AsyncSession, user_id: str, reason: str) -> int:
    """End every open session of the user (its password changed, it was disabled...); how many."""
    result = await session.execute(
        update(LoginSession)
        .where(LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
    )
    return int(getattr(result, "rowcount", 0) or 0)
