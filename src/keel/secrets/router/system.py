"""Vault's system endpoints: ``sys/health``, ``auth/token/lookup-self``, ``sys/mounts``."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from keel import __version__
from keel.core.errors import BadRequest
from keel.secrets.auth import VaultCaller
from keel.secrets.engines.policies import ROOT_PERMISSION, held_policy_names
from keel.secrets.schemas import MountInfo, TokenLookup, VaultHealth
from keel.secrets.vault_http import (
    VaultRoute,
    add_vault_route,
    no_content,
    read_body,
    vault_data,
)

router = APIRouter(route_class=VaultRoute)


async def health() -> Response:
    """Vault's health answer: initialised, unsealed, active."""
    document = VaultHealth(server_time_utc=int(time.time()), version=f"1.15.0+keel.{__version__}")
    return JSONResponse(document.model_dump())


async def lookup_self(call: VaultCaller) -> Response:
    """The caller's credential as Vault describes a token."""
    principal = call.principal
    expires = principal.expires_at
    ttl = max(0, expires - int(time.time())) if expires else 0
    document = TokenLookup(
        creation_time=principal.claims.get("iat", 0),
        creation_ttl=ttl,
        display_name=f"{principal.principal_type}-{principal.subject}",
        entity_id=principal.subject,
        meta={"tenant": principal.tenant_id, "type": principal.principal_type},
        policies=["root"]
        if principal.has_permission(ROOT_PERMISSION)
        else held_policy_names(principal),
        ttl=ttl,
    )
    return vault_data(document.model_dump())


async def mounts(call: VaultCaller) -> Response:
    """The tenant's mounts (``secret/`` exists from the first use)."""
    await call.authorize("sys/mounts", "read", "secrets.kv.read")
    listed = {
        f"{mount.path}/": MountInfo(
            type=mount.type,
            description=mount.description,
            options={"version": "2"} if mount.type == "kv" else None,
            config={"max_versions": mount.max_versions} if mount.type == "kv" else {},
        ).model_dump()
        for mount in await call.kv_engine.mounts(call.session, call.tenant_id)
    }
    return vault_data(listed, **listed)


async def enable_mount(path: str, call: VaultCaller) -> Response:
    """Mount a KV version 2 (``kv``, ``kv-v2``) or a database engine at ``path``."""
    body = await read_body(call.request)
    await call.authorize(f"sys/mounts/{path}", "create", "secrets.mount.write")
    kind = body.get("type")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("options is an object")
    version = str(options.get("version", "2"))
    if kind != "database" and (kind not in ("kv", "kv-v2") or version != "2"):
        raise BadRequest("the secrets engines available are kv (version 2) and database")
    description = body.get("description") or ""
    if not isinstance(description, str) or len(description) > 1000:
        raise BadRequest("description is a string of up to 1000 characters")
    mount = await call.kv_engine.enable(
        call.session,
        call.tenant_id,
        path,
        description,
        engine_type="database" if kind == "database" else "kv",
    )
    call.record("secrets.mount.write", mount.path, operation="enable", type=mount.type)
    return no_content()


router.add_api_route("/sys/health", health, methods=["GET"])
add_vault_route(router, "/auth/token/lookup-self", lookup_self, ["GET", "POST"])
add_vault_route(router, "/sys/mounts", mounts, ["GET"])
add_vault_route(router, "/sys/mounts/{path}", enable_mount, ["POST", "PUT"])
