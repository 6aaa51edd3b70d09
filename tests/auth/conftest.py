"""Fixtures of the auth tests: a tenant with its administrator, users and roles made through
the service layer, and a running app for settings of a test's own.

The PostgreSQL database is shared by the session's tests, so every test works in a tenant of
its own (``admin`` creates one) and never assumes it sees the only signing key.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from keel.app import create_app
from keel.audit.service import AuditLog, EventFilter, StoredEvent
from keel.auth.bootstrap import ensure_admin
from keel.auth.models import PrincipalType, User
from keel.auth.service import AuthService
from keel.core.tenancy import ensure_tenant
from keel.settings import AuthSettings, Settings

#: Passes the password policy (long, not common, no username in it).
PASSWORD = "plum-Tractor-kettle-47"
OTHER_PASSWORD = "violet-Harbour-anchor-82"


def auth_service(app: FastAPI) -> AuthService:
    service = app.state.keel.resources["auth"]
    assert isinstance(service, AuthService)
    return service


@asynccontextmanager
async def unit_of_work(app: FastAPI) -> AsyncIterator[AsyncSession]:
    """A session of the app's database that commits when the block succeeds."""
    async with app.state.keel.database.session() as session:
        yield session


async def audit_events(
    app: FastAPI, tenant_id: str, *, action_prefix: str = "", limit: int = 100
) -> list[StoredEvent]:
    """The tenant's audit events, newest first, once the outbox is sequenced into the log."""
    audit = app.state.keel.resources["audit"]
    assert isinstance(audit, AuditLog)
    await audit.sequence_outbox(tenant_id)
    async with unit_of_work(app) as session:
        return await audit.events(
            session,
            tenant_id,
            filters=EventFilter(action_prefix=action_prefix),
            limit=limit,
            newest_first=True,
        )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_auth(settings: Settings, **changes: Any) -> Settings:
    """``settings`` with some auth settings changed."""
    auth = AuthSettings.model_validate({**settings.auth.model_dump(), **changes})
    return settings.model_copy(update={"auth": auth})


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app of ``settings`` with its lifespan run, and a client talking to it."""
    application = create_app(settings)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as http:
            yield application, http


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


@pytest.fixture
async def admin(app: FastAPI) -> TenantAdmin:
    """A tenant of this test alone and its administrator's API key."""
    return await make_tenant_admin(app)


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


async def login(
    client: httpx.AsyncClient, tenant: str, username: str, password: str = PASSWORD
) -> httpx.Response:
    return await client.post(
        "/auth/v1/login", json={"tenant": tenant, "username": username, "password": password}
    )


async def login_tokens(
    client: httpx.AsyncClient, tenant: str, username: str, password: str = PASSWORD
) -> dict[str, Any]:
    response = await login(client, tenant, username, password)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
