"""Roles, their assignments to principals, and what a principal may do through them."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import PrincipalType, Role, RoleAssignment, ServiceAccount, User, UserStatus
from keel.auth.service.caches import forget_grants
from keel.auth.service.policy import NAME, ensure_may_grant, validated_permissions
from keel.core.audit import SYSTEM, Actor, record_event
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.http import check_if_match
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel_client.auth import Principal

#: The built-in role of every tenant: it keeps ``*`` and at least one holder (docs/security.md).
ADMIN_ROLE = "admin"
ADMIN_PERMISSIONS = ["*"]


class Roles:
    """Create, change and assign roles; a change drops the cached grants it affects."""

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
        if not NAME.fullmatch(name):
            raise ValidationFailed("A role name is 1-100 lowercase letters, digits and . _ -.")
        permissions = validated_permissions(permissions)
        ensure_may_grant(grantor, permissions)
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
        permissions = validated_permissions(permissions)
        # Removing a permission changes what every holder may do as much as adding one: the
        # changer must hold the role's permissions before and after (emptying ``admin`` and
        # then assigning it to oneself was the escalation).
        ensure_may_grant(grantor, [*before, *permissions])
        if role.name == ADMIN_ROLE and permissions != ADMIN_PERMISSIONS:
            raise Conflict(f"The built-in role {ADMIN_ROLE!r} keeps every permission ('*').")
        role.permissions = permissions
        role.version += 1
        forget_grants(session)
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
        ensure_may_grant(grantor, role.permissions)
        await session.execute(delete(RoleAssignment).where(RoleAssignment.role_id == role.id))
        await session.delete(role)
        forget_grants(session)
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
        await require_principal(session, principal_type, principal_id)
        ensure_may_grant(grantor, role.permissions)
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
        forget_grants(session)
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
        ensure_may_grant(grantor, role.permissions)
        if role.name == ADMIN_ROLE:
            await _keep_an_admin(session, role, principal_type, principal_id)
        await session.execute(
            delete(RoleAssignment).where(
                RoleAssignment.role_id == role.id,
                RoleAssignment.principal_type == principal_type,
                RoleAssignment.principal_id == principal_id,
            )
        )
        forget_grants(session)
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.role.unassign",
            actor=actor,
            target_type=str(principal_type),
            target_id=principal_id,
            data={"role": role_name},
        )


async def roles_and_permissions(
    session: AsyncSession, principal_type: str, principal_id: str
) -> tuple[list[str], list[str]]:
    """The names of the principal's roles and the permissions they give it, both sorted."""
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


async def require_principal(
    session: AsyncSession, principal_type: PrincipalType, principal_id: str
) -> None:
    """404 unless the user or service account exists in the session's tenant."""
    model = User if principal_type == PrincipalType.user else ServiceAccount
    if await session.scalar(select(model.id).where(model.id == principal_id)) is None:
        raise NotFound(f"No {principal_type} {principal_id!r} in this tenant.")


async def principal_is_active(
    session: AsyncSession, principal_type: str, principal_id: str
) -> bool:
    """Whether the user is active, or the service account not disabled."""
    if principal_type == PrincipalType.user:
        status = await session.scalar(select(User.status).where(User.id == principal_id))
        return status == UserStatus.active
    disabled = await session.scalar(
        select(ServiceAccount.is_disabled).where(ServiceAccount.id == principal_id)
    )
    return disabled is False


async def _keep_an_admin(
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
