"""A tenant with its administrator, and users, roles, service accounts and API keys made
through the auth service layer.

The PostgreSQL database is shared by the session's tests, so every test works in a tenant of
its own (the ``admin`` fixture of ``tests/conftest.py`` makes one) and never assumes it sees
the only signing key.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from keel.auth.dependencies import AUTH_RESOURCE
from keel.auth.models import PrincipalType, User
from keel.auth.service import AuthService
from keel.auth.service.bootstrap import ensure_admin
from keel.core.tenancy import ensure_tenant
from tests.support.apps import unit_of_work

#: Passes the password policy (long, not common, no username in it).
PASSWORD = "plum-Tractor-kettle-47"
OTHER_PASSWORD = "violet-Harbour-anchor-82"


def auth_service(app: FastAPI) -> AuthService:
    service: AuthService = app.state.keel.resources[AUTH_RESOURCE]
    return service


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class TenantAdmin:
    tenant_id: str
    tenant_slug: str
    user_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.api_key)


async def make_tenant_admin(app: FastAPI, slug: str | None = None) -> TenantAdmin:
    """A tenant (new unless ``slug`` names one) with its ``admin`` role and a new
    administrator, as ``keel init`` makes them."""
    slug = slug or f"t-{uuid.uuid4().hex[:10]}"
    async with unit_of_work(app) as session:
        tenant, _ = await ensure_tenant(session, slug)
        tenant_id = tenant.id
    async with unit_of_work(app) as session:
        outcome = await ensure_admin(
            auth_service(app), session, tenant_id, f"admin-{uuid.uuid4().hex[:8]}"
        )
    assert outcome.api_key is not None
    return TenantAdmin(tenant_id, slug, outcome.user_id, outcome.api_key)


async def create_user(
    app: FastAPI,
    tenant_id: str,
    username: str,
    *,
    password: str | None = PASSWORD,
    roles: Iterable[str] = (),
    email: str | None = None,
) -> User:
    auth = auth_service(app)
    async with unit_of_work(app) as session:
        user = await auth.create_user(
            session, tenant_id, username=username, password=password, email=email
        )
        for role in roles:
            await auth.assign_role(session, tenant_id, role, PrincipalType.user, user.id)
    return user


async def create_role(app: FastAPI, tenant_id: str, name: str, permissions: Iterable[str]) -> None:
    async with unit_of_work(app) as session:
        await auth_service(app).create_role(
            session, tenant_id, name=name, permissions=list(permissions)
        )


async def create_service_account(
    app: FastAPI, tenant_id: str, name: str, *, roles: Iterable[str] = ()
) -> tuple[str, str, str]:
    """A service account with client credentials: ``(account id, client_id, client_secret)``."""
    auth = auth_service(app)
    async with unit_of_work(app) as session:
        account, secret = await auth.create_service_account(session, tenant_id, name=name)
        for role in roles:
            await auth.assign_role(
                session, tenant_id, role, PrincipalType.service_account, account.id
            )
    return account.id, secret.id, secret.secret


async def create_api_key(
    app: FastAPI,
    tenant_id: str,
    principal_id: str,
    *,
    principal_type: PrincipalType = PrincipalType.user,
    scopes: Iterable[str] = (),
    **options: Any,
) -> tuple[str, str]:
    """``(key id, key)`` of a new API key."""
    async with unit_of_work(app) as session:
        key, token = await auth_service(app).create_api_key(
            session,
            tenant_id,
            name="test key",
            principal_type=principal_type,
            principal_id=principal_id,
            scopes=list(scopes),
            **options,
        )
    return key.id, token


async def member(app: FastAPI, admin: TenantAdmin, *permissions: str) -> dict[str, str]:
    """Headers of a new user whose one role holds ``permissions``."""
    role = f"r-{uuid.uuid4().hex[:8]}"
    await create_role(app, admin.tenant_id, role, permissions)
    user = await create_user(app, admin.tenant_id, f"u-{uuid.uuid4().hex[:8]}", roles=[role])
    _, key = await create_api_key(app, admin.tenant_id, user.id)
    return bearer(key)
