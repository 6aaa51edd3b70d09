"""First-run set-up of a tenant: the ``admin`` role and first administrator."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import PrincipalType, Role, User
from keel.auth.service import ADMIN_PERMISSIONS, ADMIN_ROLE, AuthService
from keel.core.errors import NotFound
from keel.core.tenancy import bind_tenant


@dataclass(frozen=True)
class AdminOutcome:
    user_id: str
    #: The new admin's API key, only when the admin was created now (shown once).
    api_key: str | None


async def ensure_admin(
    auth: AuthService, session: AsyncSession, tenant_id: str, username: str
) -> AdminOutcome:
    """Create the ``admin`` role (every permission) and its first user, once."""
    bind_tenant(session, tenant_id)
    if await session.scalar(select(Role.id).where(Role.name == ADMIN_ROLE)) is None:
        await _create_admin_role(auth, session, tenant_id)
    user = await session.scalar(select(User).where(User.username == username))
    if user is not None:
        return AdminOutcome(user.id, None)
    # No password yet: `keel auth set-password` sets one; the API key works right away.
    user = await auth.create_user(session, tenant_id, username=username, password=None)
    await auth.assign_role(session, tenant_id, ADMIN_ROLE, PrincipalType.user, user.id)
    _, api_key = await auth.create_api_key(
        session,
        tenant_id,
        name="initial admin key",
        principal_type=PrincipalType.user,
        principal_id=user.id,
    )
    return AdminOutcome(user.id, api_key)


async def restore_admin(
    auth: AuthService, session: AsyncSession, tenant_id: str, username: str
) -> str:
    """Break glass from the host: the ``admin`` role gets ``*`` back (created if missing) and
    ``username`` holds it. Returns the user's id. Each change is audited as the platform's."""
    bind_tenant(session, tenant_id)
    user = await session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"No user {username!r} in this tenant.")
    role = await session.scalar(select(Role).where(Role.name == ADMIN_ROLE))
    if role is None:
        await _create_admin_role(auth, session, tenant_id)
    elif role.permissions != ADMIN_PERMISSIONS:
        await auth.update_role(
            session, tenant_id, ADMIN_ROLE, permissions=ADMIN_PERMISSIONS, if_match=None
        )
    await auth.assign_role(session, tenant_id, ADMIN_ROLE, PrincipalType.user, user.id)
    return user.id


async def _create_admin_role(auth: AuthService, session: AsyncSession, tenant_id: str) -> None:
    await auth.create_role(
        session,
        tenant_id,
        name=ADMIN_ROLE,
        permissions=ADMIN_PERMISSIONS,
        description="Every permission in this tenant.",
    )
