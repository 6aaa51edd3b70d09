"""The service account, custom roles, and the roles the account holds."""

from __future__ import annotations

from sqlalchemy import select

from keel.auth.dependencies import AUTH_RESOURCE
from keel.auth.models import PrincipalType, ServiceAccount
from keel.auth.service import AuthService
from keel.auth.service.roles import roles_and_permissions
from keel.core.errors import NotFound
from keel.manifest.plan import Change, Target


async def plan(target: Target) -> list[Change]:
    auth = target.resources.get(AUTH_RESOURCE)
    manifest = target.loaded.manifest
    if not isinstance(auth, AuthService):
        target.refuse(("service",), "the auth service is not enabled (KEEL_SERVICES)")
        return []
    session, tenant_id, actor = target.session, target.tenant_id, target.actor
    changes: list[Change] = []
    service = manifest.service
    account = await session.scalar(
        select(ServiceAccount).where(ServiceAccount.name == service.name)
    )

    if account is None:

        async def create_account() -> None:
            await auth.create_service_account(
                session, tenant_id, name=service.name, description=service.description, actor=actor
            )

        changes.append(Change("+", "service-account", service.name, create_account))

    for name, role in manifest.roles.items():
        wanted = sorted(set(role.permissions))
        try:
            current = await auth.get_role(session, tenant_id, name)
        except NotFound:

            async def create_role(name: str = name, wanted: list[str] = wanted) -> None:
                description = manifest.roles[name].description
                await auth.create_role(
                    session,
                    tenant_id,
                    name=name,
                    permissions=wanted,
                    description=description,
                    actor=actor,
                )

            changes.append(Change("+", "role", name, create_role, [", ".join(wanted)]))
            continue
        if sorted(current.permissions) != wanted:
            added = [p for p in wanted if p not in current.permissions]
            removed = [p for p in current.permissions if p not in wanted]
            details = [f"+{p}" for p in added] + [f"-{p}" for p in removed]

            async def update_role(name: str = name, wanted: list[str] = wanted) -> None:
                await auth.update_role(
                    session, tenant_id, name, permissions=wanted, if_match=None, actor=actor
                )

            changes.append(
                Change("~", "role", name, update_role, [f"permissions {' '.join(details)}"])
            )

    held: list[str] = []
    if account is not None:
        held, _ = await roles_and_permissions(session, PrincipalType.service_account, account.id)
    for index, role_name in enumerate(service.roles):
        if role_name in held:
            continue
        if role_name not in manifest.roles:
            try:
                await auth.get_role(session, tenant_id, role_name)
            except NotFound:
                target.refuse(
                    ("service", "roles", index),
                    f"no role {role_name!r}: define it under [roles.{role_name}] or create it",
                )
                continue

        async def grant(role_name: str = role_name) -> None:
            account_id = await session.scalar(
                select(ServiceAccount.id).where(ServiceAccount.name == service.name)
            )
            assert account_id is not None  # created by an earlier change
            await auth.assign_role(
                session,
                tenant_id,
                role_name,
                PrincipalType.service_account,
                account_id,
                actor=actor,
            )

        changes.append(Change("+", "grant", f"{role_name} -> {service.name}", grant))
    return changes
