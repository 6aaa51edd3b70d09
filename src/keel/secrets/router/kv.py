"""Vault's KV version 2: ``<mount>/data``, ``metadata``, ``delete``, ``undelete`` and
``destroy`` of a path, and a mount's ``config``.

The logic is in :mod:`keel.secrets.engines.kv`; this module parses, authorises, audits and
shapes answers. What a call names (operation, path, listing) is checked before its caller,
so a malformed call is a 400 or 404 to anyone, as it always was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from keel.auth.dependencies import get_auth_service, get_principal, request_actor
from keel.core.deps import get_context
from keel.core.direct import served_directly
from keel.core.errors import BadRequest, MethodNotAllowed, NotFound
from keel.core.input_rules import MAX_STORED_INT
from keel.secrets.auth import VaultCall, VaultCaller
from keel.secrets.engines.database import DATABASE_RESOURCE
from keel.secrets.engines.kv import (
    SECRETS_RESOURCE,
    check_secret_path,
    format_duration,
    version_metadata,
)
from keel.secrets.models import SecretMount
from keel.secrets.router.database import list_connections
from keel.secrets.schemas import KvConfig
from keel.secrets.vault_http import (
    VaultRoute,
    add_vault_route,
    is_listing,
    no_content,
    read_body,
    vault_data,
    vault_errors,
)

router = APIRouter(route_class=VaultRoute)

OPERATIONS = frozenset({"data", "metadata", "delete", "undelete", "destroy"})
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "LIST"]
#: The route of the hot path (:func:`read_secret`), which the service's router tries first.
READ_PATH = "/{mount}/data/{path:path}"


@dataclass(frozen=True)
class SecretCall:
    """What a KV call names: ``{mount}/{operation}/{path}``, and whether it lists keys."""

    mount: str
    operation: str
    path: str
    is_listing: bool

    @property
    def full_path(self) -> str:
        """The path Vault's policies are written for."""
        return f"{self.mount}/{self.operation}/{self.path}"


def parse_secret_call(request: Request, mount: str, operation: str, path: str) -> SecretCall:
    if operation not in OPERATIONS:
        raise NotFound()
    method = request.method
    listing = method == "LIST" or (
        method == "GET" and request.query_params.get("list") in ("true", "1")
    )
    if listing and operation != "metadata":
        raise MethodNotAllowed("unsupported operation")
    path = path.strip("/")
    if not listing or path:
        path = check_secret_path(path)
    return SecretCall(mount, operation, path, listing)


async def _secret_call(request: Request, mount: str, operation: str, path: str) -> SecretCall:
    return parse_secret_call(request, mount, operation, path)


async def _data_read(request: Request, mount: str, path: str) -> SecretCall:
    return parse_secret_call(request, mount, "data", path)


async def read_secret(
    target: Annotated[SecretCall, Depends(_data_read)], call: VaultCaller
) -> Response:
    """The hot path (``GET <mount>/data/<path>``), documented by the route below; served by
    :func:`_read_directly`."""
    return await _read(call, target)


async def _read_directly(request: Request) -> Response:
    """:func:`read_secret` with its dependencies made by hand, in their order: the path
    checked before the caller, the caller's credential in the unit of work that reads."""
    params = request.path_params
    target = parse_secret_call(request, params["mount"], "data", params["path"])
    context = get_context(request)
    async with context.database.session() as session:  # ended here, before the answer
        principal = await get_principal(request, session, await get_auth_service(request))
        resources = context.resources
        call = VaultCall(
            request,
            session,
            principal,
            request_actor(request, principal),
            resources[SECRETS_RESOURCE],
            resources[DATABASE_RESOURCE],
        )
        return await _read(call, target)


served_directly(read_secret, _read_directly)


async def secret_operation(
    target: Annotated[SecretCall, Depends(_secret_call)], call: VaultCaller
) -> Response:
    """KV version 2 on ``<mount>/<operation>/<path>``: ``data`` (read, write, patch,
    delete), ``metadata`` (read, list, write, delete), ``delete``, ``undelete``,
    ``destroy`` of versions."""
    if target.operation == "data" and call.request.method == "GET" and not target.is_listing:
        return await _read(call, target)
    engine_mount = await call.kv_engine.mount(call.session, call.tenant_id, target.mount)
    if engine_mount.type != "kv":
        raise NotFound()
    return await _operate(call, engine_mount, target)


async def config(request: Request, mount: str, call: VaultCaller) -> Response:
    """A KV mount's configuration: ``max_versions``, ``cas_required``,
    ``delete_version_after``. Listed (``LIST``, ``?list=true``), a database mount's
    connections."""
    if is_listing(request):  # a database mount's connections (KV's config has no list)
        return await list_connections(mount, call)
    engine_mount = await call.kv_engine.mount(call.session, call.tenant_id, mount)
    if engine_mount.type != "kv":
        raise NotFound()
    path = f"{mount}/config"
    if request.method == "GET":
        await call.authorize(path, "read", "secrets.kv.read")
        document = KvConfig(
            max_versions=engine_mount.max_versions,
            cas_required=engine_mount.cas_required,
            delete_version_after=format_duration(engine_mount.delete_version_after_s),
        )
        return vault_data(document.model_dump())
    body = await read_body(request)
    await call.authorize(path, "update", "secrets.mount.write")
    await call.kv_engine.configure(call.session, engine_mount, body)
    call.record("secrets.mount.write", path, operation="configure")
    return no_content()


async def _read(call: VaultCall, target: SecretCall) -> Response:
    """A version's data, in one query, audited before the answer."""
    full = target.full_path
    await call.authorize(full, "read", "secrets.kv.read")
    version = _version_param(call.request.query_params.get("version"))
    result = await call.kv_engine.read(
        call.session, call.tenant_id, target.mount, target.path, version
    )
    await call.record_read("secrets.kv.read", full, version=result.metadata["version"])
    body = {"data": result.data, "metadata": result.metadata}
    if result.data is None:  # deleted or destroyed: Vault's 404 with the metadata
        return JSONResponse({"data": body, "errors": []}, status_code=404)
    return vault_data(body)


async def _operate(call: VaultCall, mount: SecretMount, target: SecretCall) -> Response:
    engine, session = call.kv_engine, call.session
    request, method = call.request, call.request.method
    operation, path, full = target.operation, target.path, target.full_path
    if target.is_listing:
        await call.authorize(full, "list", "secrets.kv.list")
        keys = await engine.keys(session, mount, path)
        await call.record_read("secrets.kv.list", full, keys=len(keys))
        if not keys:
            raise NotFound()
        return vault_data({"keys": keys})
    if operation == "data":
        if method in ("POST", "PUT"):
            body = await read_body(request)
            exists = await engine.exists(session, mount, path)
            await call.authorize(full, "update" if exists else "create", "secrets.kv.write")
            row, secret = await engine.write(session, mount, path, body.get("data"), _cas(body))
            call.record("secrets.kv.write", full, version=row.version)
            return vault_data(version_metadata(row, secret))
        if method == "PATCH":
            body = await read_body(request)
            await call.authorize(full, "patch", "secrets.kv.write")
            row, secret = await engine.patch(session, mount, path, body.get("data"), _cas(body))
            call.record("secrets.kv.write", full, version=row.version, operation="patch")
            return vault_data(version_metadata(row, secret))
        if method == "DELETE":
            await call.authorize(full, "delete", "secrets.kv.delete")
            deleted = await engine.delete_versions(session, mount, path)
            call.record("secrets.kv.delete", full, operation="delete", versions=deleted)
            return no_content()
    if operation in ("delete", "undelete", "destroy") and method in ("POST", "PUT"):
        body = await read_body(request)
        versions = _versions(body)
        await call.authorize(full, "update", "secrets.kv.delete")
        act = {
            "delete": engine.delete_versions,
            "undelete": engine.undelete,
            "destroy": engine.destroy,
        }[operation]
        changed = await act(session, mount, path, versions)
        call.record("secrets.kv.delete", full, operation=operation, versions=changed)
        return no_content()
    if operation == "metadata":
        if method == "GET":
            await call.authorize(full, "read", "secrets.kv.read")
            found = await engine.metadata(session, mount, path)
            await call.record_read("secrets.kv.read", full, operation="metadata")
            return vault_data(await engine.metadata_document(session, mount, found))
        if method in ("POST", "PUT", "PATCH"):
            body = await read_body(request)
            exists = await engine.exists(session, mount, path)
            capability = "patch" if method == "PATCH" else "update" if exists else "create"
            await call.authorize(full, capability, "secrets.metadata.write")
            if method == "PATCH" and not exists:
                raise NotFound()
            await engine.write_metadata(session, mount, path, body, merge=method == "PATCH")
            call.record("secrets.metadata.write", full, fields=sorted(body))
            return no_content()
        if method == "DELETE":
            await call.authorize(full, "delete", "secrets.kv.delete")
            removed = await engine.delete_metadata(session, mount, path)
            call.record("secrets.kv.delete", full, operation="delete_metadata", removed=removed)
            return no_content()
    return vault_errors(405, "unsupported operation")


def _versions(body: dict[str, Any]) -> list[int]:
    versions = body.get("versions")
    if not isinstance(versions, list) or not versions:
        raise BadRequest("no version number provided")
    if not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_STORED_INT for v in versions
    ):
        raise BadRequest(f"versions are integers from 1 to {MAX_STORED_INT}")
    return versions


def _cas(body: dict[str, Any]) -> int | None:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequest("options is an object")
    cas = options.get("cas")
    if cas is None:
        return None
    if isinstance(cas, bool) or not isinstance(cas, int) or cas < 0:
        raise BadRequest("cas is a non-negative integer")
    return cas


def _version_param(value: str | None) -> int | None:
    if value is None or value in ("", "0"):
        return None
    if not value.isdigit() or int(value) > MAX_STORED_INT:
        raise BadRequest(f"version is an integer from 1 to {MAX_STORED_INT}")
    return int(value)


add_vault_route(router, "/{mount}/config", config, ["GET", "POST", "PUT"])
# The catch-all: the service's router includes this module's routes after all others.
add_vault_route(router, "/{mount}/{operation}/{path:path}", secret_operation, ALL_METHODS)
