"""Tenants and the scoping every tenant-owned table gets for free.

A table that belongs to a tenant mixes in :class:`TenantScoped`. A session bound to a tenant
with :func:`bind_tenant` then adds ``tenant_id = :tenant`` to every ORM select, update and
delete touching such a table (relationship loads included) and stamps new rows with the
tenant. A session bound to no tenant refuses to query tenant-owned tables at all, unless the
statement says ``execution_options(all_tenants=True)`` — the one, greppable way for platform
code (``keel audit verify``, migrations of data) to look across tenants.

Bulk ``insert()``/``update()`` statements from a bound session may not write another
tenant's ``tenant_id``. Scoping covers ORM statements (``select(Model)``, ``update(Model)``);
Core statements on ``Model.__table__`` bypass it, so services use ORM entities only.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import (
    Mapped,
    ORMExecuteState,
    Session,
    declared_attr,
    mapped_column,
    with_loader_criteria,
)

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.ids import new_id

DEFAULT_TENANT = "default"
ALL_TENANTS_OPTION = "all_tenants"
_TENANT_KEY = "keel_tenant_id"
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class TenantScopeError(RuntimeError):
    """A query touched tenant-owned rows without a tenant: a bug, never a user error."""


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class TenantScoped:
    """Mixin for every table whose rows belong to one tenant."""

    @declared_attr
    def tenant_id(cls) -> Mapped[str]:
        return mapped_column(String(36), ForeignKey("tenants.id", ondelete="RESTRICT"), index=True)


def bind_tenant(session: AsyncSession | Session, tenant_id: str) -> None:
    """Scope every later statement of ``session`` to ``tenant_id``."""
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    sync_session.info[_TENANT_KEY] = tenant_id


def bound_tenant(session: AsyncSession | Session) -> str | None:
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    value = sync_session.info.get(_TENANT_KEY)
    return value if isinstance(value, str) else None


def _assigned_tenant_ids(state: ORMExecuteState) -> set[Any]:
    """Every ``tenant_id`` value a bulk INSERT or UPDATE statement would write."""
    assigned: set[Any] = set()
    statement: Any = state.statement
    value_sets = [getattr(statement, "_values", None) or {}]
    value_sets += list(getattr(statement, "_multi_values", ()) or ())
    for values in value_sets:
        rows = values if isinstance(values, list) else [values]
        for row in rows:
            for key, value in row.items() if isinstance(row, dict) else ():
                if getattr(key, "key", key) == "tenant_id":
                    assigned.add(getattr(value, "value", value))
    parameters = state.parameters
    for row in parameters if isinstance(parameters, list) else [parameters or {}]:
        if isinstance(row, dict) and "tenant_id" in row:
            assigned.add(row["tenant_id"])
    return assigned


@event.listens_for(Session, "do_orm_execute")
def _scope_statement(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update:
        # Bulk writes bypass before_flush: a bound session may not write another tenant's id.
        tenant_id = state.session.info.get(_TENANT_KEY)
        if (
            tenant_id is not None
            and not state.execution_options.get(ALL_TENANTS_OPTION)
            and any(issubclass(mapper.class_, TenantScoped) for mapper in state.all_mappers)
            and _assigned_tenant_ids(state) - {tenant_id}
        ):
            raise TenantScopeError("a bulk write names another tenant than the session's")
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_column_load or state.is_relationship_load:
        return  # the criteria added to the parent statement propagate to these loads
    if state.execution_options.get(ALL_TENANTS_OPTION):
        return
    tenant_id = state.session.info.get(_TENANT_KEY)
    if tenant_id is None:
        if any(issubclass(mapper.class_, TenantScoped) for mapper in state.all_mappers):
            raise TenantScopeError(
                "query on tenant-owned rows from a session bound to no tenant; call "
                "bind_tenant() or pass execution_options(all_tenants=True)"
            )
        return
    state.statement = state.statement.options(
        with_loader_criteria(
            TenantScoped,
            lambda cls: cls.tenant_id == tenant_id,
            include_aliases=True,
        )
    )


@event.listens_for(Session, "before_flush")
def _stamp_new_rows(session: Session, flush_context: Any, instances: Any) -> None:
    tenant_id = session.info.get(_TENANT_KEY)
    for instance in [*session.new, *session.dirty]:
        if not isinstance(instance, TenantScoped):
            continue
        if instance.tenant_id is None:
            if tenant_id is None:
                raise TenantScopeError(f"new {type(instance).__name__} has no tenant")
            instance.tenant_id = tenant_id
        elif tenant_id is not None and instance.tenant_id != tenant_id:
            raise TenantScopeError(
                f"{type(instance).__name__} belongs to another tenant than the session's"
            )


def validate_tenant_slug(slug: str) -> str:
    if not _SLUG.fullmatch(slug):
        raise ValidationFailed("A tenant slug is 1-63 lowercase letters, digits and inner hyphens.")
    return slug


async def get_tenant_by_slug(session: AsyncSession, slug: str) -> Tenant:
    tenant = await session.scalar(select(Tenant).where(Tenant.slug == slug))
    if tenant is None:
        raise NotFound(f"No tenant {slug!r}.")
    return tenant


async def create_tenant(session: AsyncSession, slug: str, name: str | None = None) -> Tenant:
    validate_tenant_slug(slug)
    if await session.scalar(select(Tenant.id).where(Tenant.slug == slug)) is not None:
        raise Conflict(f"Tenant {slug!r} exists already.")
    tenant = Tenant(slug=slug, name=name or slug)
    session.add(tenant)
    await session.flush()
    return tenant


async def ensure_tenant(
    session: AsyncSession, slug: str, name: str | None = None
) -> tuple[Tenant, bool]:
    """Return the tenant ``slug``, creating it if needed; the flag says whether it was new."""
    existing = await session.scalar(select(Tenant).where(Tenant.slug == slug))
    if existing is not None:
        return existing, False
    return await create_tenant(session, slug, name), True


async def list_tenants(session: AsyncSession) -> list[Tenant]:
    return list(await session.scalars(select(Tenant).order_by(Tenant.slug)))
