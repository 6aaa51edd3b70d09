"""Vault's database secrets engine and lease API, under ``/secrets/v1/``.

``<mount>/config/<name>``, ``<mount>/roles/<name>``, ``<mount>/creds/<role>`` and
``sys/leases/{lookup,renew,revoke}`` (with Vault's older ``sys/renew``, ``sys/revoke`` forms),
so ``hvac``'s ``secrets.database`` and ``sys`` lease calls work unchanged. The logic is in
:mod:`keel.secrets.engines.database`; this module parses, authorises, audits and shapes
answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import BadRequest, NotFound
from keel.secrets.auth import VaultCall, VaultCaller
from keel.secrets.engines.database import DatabaseEngine
from keel.secrets.engines.kv import parse_duration, vault_time
from keel.secrets.models import SecretMount
from keel.secrets.schemas import LeaseLookup
from keel.secrets.vault_http import (
    VaultRoute,
    add_vault_route,
    is_listing,
    no_content,
    read_body,
    vault_data,
)

_READ = "secrets.database.read"
_CONNECTION_WRITE = "secrets.db_connection.write"
_ROLE_WRITE = "secrets.db_role.write"

router = APIRouter(route_class=VaultRoute)


@dataclass(frozen=True)
class _MountObject:
    """A named object of a database mount, listed, read, written and deleted alike: a
    connection (``<mount>/config/<name>``) or a role (``<mount>/roles/<name>``)."""

    #: The path segment under the mount.
    segment: str
    #: The audit action of a write or delete.
    write_action: str
    names: Callable[[DatabaseEngine, AsyncSession, SecretMount], Awaitable[list[str]]]
    find: Callable[[DatabaseEngine, AsyncSession, SecretMount, str], Awaitable[Any]]
    document: Callable[[Any], dict[str, Any]]
    delete: Callable[[DatabaseEngine, AsyncSession, SecretMount, str], Awaitable[bool]]
    write: Callable[
        [DatabaseEngine, AsyncSession, SecretMount, str, dict[str, Any]], Awaitable[Any]
    ]
    #: What the audit event of a write records besides its operation (never a password).
    written: Callable[[dict[str, Any], Any], dict[str, Any]]


_CONNECTION = _MountObject(
    segment="config",
    write_action=_CONNECTION_WRITE,
    names=DatabaseEngine.connection_names,
    find=DatabaseEngine.connection,
    document=DatabaseEngine.connection_document,
    delete=DatabaseEngine.delete_connection,
    write=DatabaseEngine.write_connection,
    written=lambda body, stored: {
        "fields": sorted(key for key in body if key != "password"),
        "password_changed": "password" in body,
        "allowed_roles": list(stored.allowed_roles),
    },
)
_ROLE = _MountObject(
    segment="roles",
    write_action=_ROLE_WRITE,
    names=DatabaseEngine.role_names,
    find=DatabaseEngine.role,
    document=DatabaseEngine.role_document,
    delete=DatabaseEngine.delete_role,
    write=DatabaseEngine.write_role,
    written=lambda body, stored: {
        "db_name": stored.db_name,
        "default_ttl": stored.default_ttl_s,
        "max_ttl": stored.max_ttl_s,
    },
)


async def _list_names(call: VaultCall, mount: str, kind: _MountObject) -> Response:
    engine = call.database_engine
    await call.authorize(f"{mount}/{kind.segment}", "list", _READ)
    found = await engine.mount(call.session, call.tenant_id, mount)
    names = await kind.names(engine, call.session, found)
    await call.record_read(_READ, f"{mount}/{kind.segment}", keys=len(names))
    if not names:
        raise NotFound()
    return vault_data({"keys": names})


async def _mount_object(call: VaultCall, mount: str, name: str, kind: _MountObject) -> Response:
    """``GET``, ``POST``/``PUT`` (create or update) and ``DELETE`` of
    ``<mount>/<segment>/<name>``."""
    engine, session = call.database_engine, call.session
    path = f"{mount}/{kind.segment}/{name}"
    method = call.request.method
    if method == "GET":
        await call.authorize(path, "read", _READ)
        found = await engine.mount(session, call.tenant_id, mount)
        stored = await kind.find(engine, session, found, name)
        if stored is None:
            raise NotFound()
        await call.record_read(_READ, path)
        return vault_data(kind.document(stored))
    if method == "DELETE":
        await call.authorize(path, "delete", kind.write_action)
        found = await engine.mount(session, call.tenant_id, mount)
        removed = await kind.delete(engine, session, found, name)
        call.record(kind.write_action, path, operation="delete", removed=removed)
        return no_content()
    body = await read_body(call.request)
    found = await engine.mount(session, call.tenant_id, mount)
    exists = await kind.find(engine, session, found, name) is not None
    await call.authorize(path, "update" if exists else "create", kind.write_action)
    stored = await kind.write(engine, session, found, name, body)
    call.record(
        kind.write_action,
        path,
        operation="update" if exists else "create",
        **kind.written(body, stored),
    )
    return no_content()


# -- connections -----------------------------------------------------------------------------


async def list_connections(mount: str, call: VaultCaller) -> Response:
    """``LIST <mount>/config``; also reached through the KV ``config`` route, which ``GET
    …?list=true`` (how ``keel serve`` receives ``LIST``) matches first."""
    return await _list_names(call, mount, _CONNECTION)


async def connection(mount: str, name: str, call: VaultCaller) -> Response:
    """A connection to a PostgreSQL database: read, write (``connection_url``,
    ``username``, ``password``, ``allowed_roles``...) or delete."""
    return await _mount_object(call, mount, name, _CONNECTION)


# -- roles -----------------------------------------------------------------------------------


async def list_roles(request: Request, mount: str, call: VaultCaller) -> Response:
    if not is_listing(request):
        raise NotFound()
    return await _list_names(call, mount, _ROLE)


async def role(mount: str, name: str, call: VaultCaller) -> Response:
    """A role: the statements that create its users, their TTLs, its connection."""
    return await _mount_object(call, mount, name, _ROLE)


# -- credentials -----------------------------------------------------------------------------


async def credentials(mount: str, name: str, call: VaultCaller) -> Response:
    """A new database user and its lease; the password is in this answer only."""
    engine = call.database_engine
    path = f"{mount}/creds/{name}"
    await call.authorize(path, "read", "secrets.creds.issue")
    found = await engine.mount(call.session, call.tenant_id, mount)
    issued = await engine.issue(call.session, found, name, call.principal.principal_type)
    call.record(
        "secrets.creds.issue",
        path,
        lease_id=issued.lease.lease_id,
        username=issued.username,
        ttl=issued.ttl_seconds,
    )
    return vault_data(
        {"username": issued.username, "password": issued.password},
        lease_id=issued.lease.lease_id,
        renewable=True,
        lease_duration=issued.ttl_seconds,
    )


# -- leases ----------------------------------------------------------------------------------


async def _lease_id(request: Request, lease_id: str | None) -> tuple[Any, dict[str, Any]]:
    body = await read_body(request)
    return (lease_id or body.get("lease_id")), body


async def lookup(call: VaultCaller) -> Response:
    lease_id, _ = await _lease_id(call.request, None)
    await call.authorize("sys/leases/lookup", "update", "secrets.lease.read")
    lease = await call.database_engine.lease(call.session, lease_id)
    await call.record_read("secrets.lease.read", lease.lease_id)
    live = lease.revoked_at is None
    ttl = _remaining(lease.expires_at) if live else 0
    document = LeaseLookup(
        id=lease.lease_id,
        issue_time=vault_time(lease.issued_at),
        expire_time=vault_time(lease.expires_at),
        renewable=live and ttl > 0,
        ttl=ttl,
    )
    return vault_data(document.model_dump())


async def renew(call: VaultCaller, lease_id: str | None = None) -> Response:
    found_id, body = await _lease_id(call.request, lease_id)
    increment = body.get("increment")
    seconds = parse_duration(increment) if increment is not None else None
    await call.authorize("sys/leases/renew", "update", "secrets.lease.renew")
    renewal = await call.database_engine.renew(call.session, found_id, seconds)
    call.record(
        "secrets.lease.renew",
        renewal.lease.lease_id,
        ttl=renewal.ttl_seconds,
        capped=renewal.capped,
    )
    warnings = (
        [
            f"TTL of {seconds}s exceeded the effective max_ttl; "
            f"TTL value is capped to {renewal.ttl_seconds}s"
        ]
        if renewal.capped
        else None
    )
    return vault_data(
        None,
        lease_id=renewal.lease.lease_id,
        renewable=True,
        lease_duration=renewal.ttl_seconds,
        warnings=warnings,
    )


async def revoke(call: VaultCaller, lease_id: str | None = None) -> Response:
    found_id, _ = await _lease_id(call.request, lease_id)
    if not isinstance(found_id, str) or not found_id:
        raise BadRequest("lease_id is required")
    await call.authorize("sys/leases/revoke", "update", "secrets.lease.revoke")
    lease = await call.database_engine.revoke(call.session, found_id)
    call.record("secrets.lease.revoke", found_id, reason="requested", found=lease is not None)
    return no_content()


def _remaining(expires_at: Any) -> int:
    return max(0, int((expires_at - utcnow()).total_seconds()))


# Before the KV catch-all ``/{mount}/{operation}/{path}``, which would otherwise take
# ``sys/leases/…`` and ``<mount>/creds/…``: the service's router includes this one first.
add_vault_route(router, "/{mount}/config", list_connections, ["LIST"])
add_vault_route(router, "/{mount}/config/{name}", connection, ["GET", "POST", "PUT", "DELETE"])
add_vault_route(router, "/{mount}/roles", list_roles, ["GET", "LIST"])
add_vault_route(router, "/{mount}/roles/{name}", role, ["GET", "POST", "PUT", "DELETE"])
add_vault_route(router, "/{mount}/creds/{name}", credentials, ["GET"])
add_vault_route(router, "/sys/leases/lookup", lookup, ["PUT", "POST"])
for _prefix in ("/sys/leases/renew", "/sys/renew"):
    add_vault_route(router, _prefix, renew, ["PUT", "POST"])
for _prefix in ("/sys/leases/renew", "/sys/renew"):
    add_vault_route(router, _prefix + "/{lease_id:path}", renew, ["PUT", "POST"])
for _prefix in ("/sys/leases/revoke", "/sys/revoke"):
    add_vault_route(router, _prefix, revoke, ["PUT", "POST"])
for _prefix in ("/sys/leases/revoke", "/sys/revoke"):
    add_vault_route(router, _prefix + "/{lease_id:path}", revoke, ["PUT", "POST"])
