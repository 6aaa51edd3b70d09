"""Users: their accounts, profile and status, and their passwords (policy and history)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import PasswordHistory, PrincipalType, User, UserStatus
from keel.auth.service.caches import API_KEYS
from keel.auth.service.passwords import Passwords
from keel.auth.service.policy import EMAIL, USERNAME, ensure_may_grant, is_self
from keel.auth.service.roles import roles_and_permissions
from keel.auth.service.sessions import revoke_user_sessions
from keel.core.audit import SYSTEM, Actor, record_event
from keel.core.cache import invalidate_after_commit
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.http import check_if_match
from keel.core.tenancy import bind_tenant
from keel.settings import AuthSettings
from keel_client.auth import Principal


class Users:
    """Create, read and change users; set passwords (a change ends the user's sessions)."""

    def __init__(self, settings: AuthSettings, passwords: Passwords) -> None:
        self.settings = settings
        self.passwords = passwords

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
        if not USERNAME.fullmatch(username):
            raise ValidationFailed("A username is 2-150 letters, digits and . _ @ + -.")
        if email is not None and not EMAIL.fullmatch(email):
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
        if takeover and grantor is not None and not is_self(grantor, PrincipalType.user, user.id):
            _, held = await roles_and_permissions(session, PrincipalType.user, user.id)
            ensure_may_grant(grantor, held)
        allowed = {"email", "display_name", "status"}
        for field_name, value in changes.items():
            if field_name not in allowed:
                raise ValidationFailed(f"{field_name} cannot be changed here.")
            if field_name == "status" and value not in {s.value for s in UserStatus}:
                raise ValidationFailed("status is active or disabled.")
            if field_name == "email" and value is not None and not EMAIL.fullmatch(value):
                raise ValidationFailed("The e-mail address is not valid.")
            if field_name == "email" and value != user.email:
                # A new address is unproven: an old verification must not vouch for it.
                user.is_email_verified = False
            setattr(user, field_name, value)
        user.version += 1
        if changes.get("status") == UserStatus.disabled:
            await revoke_user_sessions(session, user.id, reason="user_disabled")
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
        if grantor is not None and not is_self(grantor, PrincipalType.user, user.id):
            _, held = await roles_and_permissions(session, PrincipalType.user, user.id)
            ensure_may_grant(grantor, held)
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
        await revoke_user_sessions(session, user.id, reason="password_changed")
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.user.password_change",
            actor=actor,
            target_type="user",
            target_id=user.id,
        )
