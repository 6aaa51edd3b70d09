"""Single-use account tokens sent to a user: e-mail verification and password reset.

Only a keyed hash of each token is stored. A token is spent by a conditional update, so two
concurrent uses cannot both succeed. What is sent and how (:class:`AccountTokenMessage`, the
delivery hook) is :mod:`keel.auth.service.one_time_tokens`'.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import OneTimeToken, OneTimeTokenPurpose, User, UserStatus
from keel.auth.service.one_time_tokens import TOKEN_LIFETIMES, TOKEN_PREFIX, AccountTokenMessage
from keel.auth.service.users import Users
from keel.core.audit import Actor, record_event
from keel.core.crypto import Keyring
from keel.core.db import utcnow
from keel.core.errors import Conflict, ValidationFailed
from keel.core.tenancy import Tenant, bind_tenant


class AccountTokens:
    """Issue and redeem one-time tokens of users."""

    def __init__(self, keyring: Keyring, users: Users) -> None:
        self.keyring = keyring
        self.users = users

    async def _issue(
        self,
        session: AsyncSession,
        user: User,
        purpose: OneTimeTokenPurpose,
        actor: Actor,
    ) -> AccountTokenMessage:
        assert user.email is not None
        now = utcnow()
        # A new token replaces any earlier one of the same purpose.
        await session.execute(
            update(OneTimeToken)
            .where(
                OneTimeToken.user_id == user.id,
                OneTimeToken.purpose == purpose,
                OneTimeToken.used_at.is_(None),
            )
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires_at = now + TOKEN_LIFETIMES[purpose]
        session.add(
            OneTimeToken(
                user_id=user.id,
                purpose=purpose,
                token_hash=self.keyring.token_hash(token),
                email=user.email,
                expires_at=expires_at,
            )
        )
        record_event(
            session,
            tenant_id=user.tenant_id,
            action=f"auth.{purpose}.request",
            actor=actor,
            ip_address=actor.ip_address,
            target_type="user",
            target_id=user.id,
        )
        return AccountTokenMessage(purpose, user.tenant_id, user.id, user.email, expires_at, token)

    async def _redeem(
        self, session: AsyncSession, token: str, purpose: OneTimeTokenPurpose
    ) -> OneTimeToken:
        """Spend a valid token of ``purpose``; raise the same error for every bad one."""
        invalid = ValidationFailed("The token is invalid, expired or used.", rule="invalid-token")
        if not token.startswith(TOKEN_PREFIX):
            raise invalid
        row = await session.scalar(
            select(OneTimeToken)
            .where(OneTimeToken.token_hash == self.keyring.token_hash(token))
            .execution_options(all_tenants=True)  # the token tells which tenant
        )
        now = utcnow()
        if row is None or row.purpose != purpose or row.used_at is not None:
            raise invalid
        if row.expires_at <= now:
            raise invalid
        bind_tenant(session, row.tenant_id)
        spent = await session.execute(
            update(OneTimeToken)
            .where(OneTimeToken.id == row.id, OneTimeToken.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        if int(getattr(spent, "rowcount", 0) or 0) != 1:
            raise invalid
        return row

    # -- password reset -------------------------------------------------------------------------

    async def request_password_reset(
        self, session: AsyncSession, *, tenant_slug: str, email: str, actor: Actor
    ) -> AccountTokenMessage | None:
        """A reset token for the active user with this address, or None — told to nobody."""
        tenant_id = await session.scalar(select(Tenant.id).where(Tenant.slug == tenant_slug))
        if tenant_id is None:
            return None
        bind_tenant(session, tenant_id)
        user = await session.scalar(select(User).where(User.email == email))
        if user is None or user.status != UserStatus.active or user.email is None:
            return None
        return await self._issue(session, user, OneTimeTokenPurpose.password_reset, actor)

    async def reset_password(
        self, session: AsyncSession, *, token: str, new_password: str, actor: Actor
    ) -> None:
        """Set a new password with a reset token (policy and history apply; sessions end)."""
        row = await self._redeem(session, token, OneTimeTokenPurpose.password_reset)
        user = await self.users.get_user(session, row.tenant_id, row.user_id)
        if user.status != UserStatus.active:
            raise ValidationFailed("The token is invalid, expired or used.", rule="invalid-token")
        # The token holder acts as the user; the request's address stays on the record.
        as_user = replace(actor, type="user", id=user.id)
        await self.users.set_password(session, row.tenant_id, user.id, new_password, actor=as_user)
        record_event(
            session,
            tenant_id=row.tenant_id,
            action="auth.password_reset.confirm",
            actor_type="user",
            actor_id=user.id,
            ip_address=actor.ip_address,
            target_type="user",
            target_id=user.id,
        )

    # -- e-mail verification --------------------------------------------------------------------

    async def request_email_verification(
        self, session: AsyncSession, tenant_id: str, user_id: str, actor: Actor
    ) -> AccountTokenMessage:
        user = await self.users.get_user(session, tenant_id, user_id)
        if user.email is None:
            raise ValidationFailed("The user has no e-mail address to verify.")
        if user.is_email_verified:
            raise Conflict("The e-mail address is verified already.")
        return await self._issue(session, user, OneTimeTokenPurpose.email_verification, actor)

    async def verify_email(self, session: AsyncSession, *, token: str, actor: Actor) -> User:
        row = await self._redeem(session, token, OneTimeTokenPurpose.email_verification)
        user = await self.users.get_user(session, row.tenant_id, row.user_id)
        if user.email is None or user.email != row.email:
            # The address changed since the token was sent: it vouches for the old one only.
            raise ValidationFailed("The token is invalid, expired or used.", rule="invalid-token")
        user.is_email_verified = True
        user.version += 1
        record_event(
            session,
            tenant_id=row.tenant_id,
            action="auth.email_verification.confirm",
            actor_type="user",
            actor_id=user.id,
            ip_address=actor.ip_address,
            target_type="user",
            target_id=user.id,
        )
        return user
