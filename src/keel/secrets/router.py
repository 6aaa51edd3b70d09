"""HashiCorp Vault's HTTP API, KV version 2, under ``/secrets/v1/``.

Point a Vault client at ``http://<keel>/secrets`` and it works unchanged: ``hvac``, the
``vault`` CLI (``VAULT_ADDR``), Vault Agent. Bodies, status codes and the ``{"errors": [...]}``
shape are Vault's, not Keel's problem+json. Callers authenticate with ``X-Vault-Token`` or a
bearer header holding any Keel token or API key.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel import __version__
from keel.auth.dependencies import (
    bearer_credential,
    get_auth_service,
    limit_by_address,
    request_actor,
)
from keel.core.audit import Actor, Outcome, record_event, record_event_now
from keel.core.context import ResourceKey
from keel.core.deps import get_context
from keel.core.errors import BadRequest, KeelError, NotFound
from keel.core.http import ServiceRouter
from keel.core.ids import new_id
from keel.core.input_rules import MAX_STORED_INT
from keel.core.tenancy import bind_tenant
from keel.secrets import approle
from keel.secrets.kv import (
    KvEngine,
    SecretUnreadable,
    check_secret_path,
    format_duration,
    version_metadata,
)
from keel.secrets.models import SecretPolicy
from keel.secrets.policies import (
    NAME,
    ROOT_PERMISSION,
    allowed,
    forget_policy,
    held_policy_names,
    held_policy_names_of,
    parse_policy,
    rules_of,
    stored_rules,
)
from keel_client.auth import Principal

SECRETS_RESOURCE: ResourceKey[KvEngine] = ResourceKey("secrets.kv")
PERMISSION_DENIED = "1 error occurred:\n\t* permission denied\n\n"
_OPERATIONS = {"data", "metadata", "delete", "undelete", "destroy"}
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "LIST"]


class Denied(Exception):
    pass


@dataclass
class Call:
    """One authenticated request: who calls, in which tenant, in which unit of work."""

    request: Request
    session: AsyncSession
    principal: Principal
    engine: KvEngine

    @property
    def tenant_id(self) -> str:
        return self.principal.tenant_id

    @property
    def actor(self) -> Actor:
        return request_actor(self.request, self.principal)

    async def authorize(self, path: str, capability: str, action: str) -> None:
        """Deny by default: ``secrets:root`` may do all, others what their policies grant."""
        if self.principal.has_permission(ROOT_PERMISSION):
            return
        rules = await rules_of(self.session, self.tenant_id, held_policy_names(self.principal))
        if allowed(rules, path, capability):
            return
        await record_event_now(
            self.session,
            outcome=Outcome.denied,
            **self._event(action, path, {"capability": capability}),
        )
        raise Denied()

    def _event(self, action: str, path: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "action": action,
            "actor": self.actor,
            "target_type": "secret_path",
            "target_id": path,
            "data": data or None,
        }

    def record(self, action: str, path: str, **data: Any) -> None:
        """An event stored with this unit of work's commit (a change)."""
        record_event(self.session, **self._event(action, path, data))

    async def record_read(self, action: str, path: str, **data: Any) -> None:
        """An event in the log before the answer (a read: nothing to commit with)."""
        await record_event_now(self.session, **self._event(action, path, data))


def vault_errors(
    status: int, *errors: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"errors": list(errors)}, status_code=status, headers=headers)


def vault_data(data: Any, **fields: Any) -> JSONResponse:
    return JSONResponse(
        {
            "request_id": new_id(),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": data,
            "wrap_info": None,
            "warnings": None,
            "auth": None,
            **fields,
        }
    )


def no_content() -> Response:
    return Response(status_code=204)


@asynccontextmanager
async def _call(request: Request) -> AsyncIterator[Call]:
    context = get_context(request)
    engine = context.resources.get(SECRETS_RESOURCE)
    assert isinstance(engine, KvEngine)
    auth = await get_auth_service(request)
    async with context.database.session() as session:
        credential = bearer_credential(request)
        principal = await auth.authenticate(session, credential) if credential else None
        if principal is None:
            raise Denied()
        bind_tenant(session, principal.tenant_id)
        try:
            yield Call(request, session, principal, engine)
        except Denied:
            await session.commit()  # the record of the denial (nothing else was written)
            raise


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise BadRequest(f"failed to parse JSON input: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body is a JSON object")
    return body


def _versions(body: dict[str, Any]) -> list[int]:
    versions = body.get("versions")
    if not isinstance(versions, list) or not versions:
        raise BadRequest("no version number provided")
    if not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_STORED_INT for v in versions
    ):
        raise BadRequest(f"versions are integers from 1 to {MAX_STORED_INT}")
    return versions


#: Runs of a Vault call that keeps losing a unique key to concurrent requests.
_RACE_ATTEMPTS = 3


def _errors_as_vault(handler: Any) -> Any:
    """Answer Keel's errors in Vault's shape, whatever the handler raised."""

    @functools.wraps(handler)  # FastAPI reads the handler's own parameters
    async def handle(request: Request, **params: Any) -> Response:
        try:
            for _ in range(_RACE_ATTEMPTS):
                try:
                    response: Response = await handler(request, **params)
                    return response
                except IntegrityError:
                    # Another request created the same row between this one's read and its
                    # write; nothing of this one was stored. Vault's writes are upserts (a
                    # check-and-set is checked again), so the call runs again.
                    continue
            return vault_errors(409, "changed by another request at the same time; retry")
        except Denied:
            return vault_errors(403, PERMISSION_DENIED)
        except NotFound:
            return vault_errors(404)
        except SecretUnreadable:
            return vault_errors(
                500,
                "the stored value does not open: it was altered, or sealed under a master key "
                "this server does not hold",
            )
        except KeelError as error:  # its headers too: Retry-After of a 429 or a 503
            return vault_errors(error.status, str(error.detail or error), headers=error.headers)

    return handle


def _route(router: APIRouter, path: str, endpoint: Any, methods: list[str]) -> None:
    """One route a method, so each has its own OpenAPI operation; ``LIST`` (not an OpenAPI
    method; ``GET …?list=true`` is documented instead) is left out of the schema."""
    for method in methods:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            name=f"{endpoint.__name__}_{method.lower()}",
            include_in_schema=method != "LIST",
        )


def build_router() -> APIRouter:
    router = ServiceRouter(prefix="/v1", tags=["secrets (Vault KV v2)"])

    async def read_data(request: Request, mount: str, path: str) -> Response:
        response: Response = await kv(request, mount=mount, operation="data", path=path)
        return response

    # The hot path is matched first: FastAPI tries routes in order, and the catch-all below
    # comes after some seventy others. Documented through the catch-all.
    router.add_api_route(
        "/{mount}/data/{path:path}", read_data, methods=["GET"], include_in_schema=False
    )

    @router.get("/sys/health")
    async def health(request: Request) -> Response:
        """Vault's health answer: initialised, unsealed, active."""
        return JSONResponse(
            {
                "initialized": True,
                "sealed": False,
                "standby": False,
                "performance_standby": False,
                "replication_performance_mode": "disabled",
                "replication_dr_mode": "disabled",
                "server_time_utc": int(time.time()),
                "version": f"1.15.0+keel.{__version__}",
                "cluster_name": "keel",
            }
        )

    @_errors_as_vault
    async def lookup_self(request: Request) -> Response:
        async with _call(request) as call:
            principal = call.principal
            expires = principal.expires_at
            ttl = max(0, expires - int(time.time())) if expires else 0
            return vault_data(
                {
                    "accessor": "",
                    "creation_time": principal.claims.get("iat", 0),
                    "creation_ttl": ttl,
                    "display_name": f"{principal.principal_type}-{principal.subject}",
                    "entity_id": principal.subject,
                    "expire_time": None,
                    "explicit_max_ttl": 0,
                    "id": "",
                    "meta": {"tenant": principal.tenant_id, "type": principal.principal_type},
                    "num_uses": 0,
                    "orphan": True,
                    "path": "auth/keel/login",
                    "policies": ["root"]
                    if principal.has_permission(ROOT_PERMISSION)
                    else held_policy_names(principal),
                    "renewable": False,
                    "ttl": ttl,
                    "type": "service",
                }
            )

    _route(router, "/auth/token/lookup-self", lookup_self, ["GET", "POST"])

    @_errors_as_vault
    async def mounts(request: Request) -> Response:
        async with _call(request) as call:
            await call.authorize("sys/mounts", "read", "secrets.kv.read")
            listed = {
                f"{mount.path}/": {
                    "type": mount.type,
                    "description": mount.description,
                    "options": {"version": "2"} if mount.type == "kv" else None,
                    "config": {"max_versions": mount.max_versions} if mount.type == "kv" else {},
                }
                for mount in await call.engine.mounts(call.session, call.tenant_id)
            }
            return vault_data(listed, **listed)

    _route(router, "/sys/mounts", mounts, ["GET"])

    @_errors_as_vault
    async def enable_mount(request: Request, path: str) -> Response:
        async with _call(request) as call:
            body = await _body(request)
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
            mount = await call.engine.enable(call.session, call.tenant_id, path, description)
            mount.type = "database" if kind == "database" else "kv"
            call.record("secrets.mount.write", mount.path, operation="enable", type=mount.type)
            return no_content()

    _route(router, "/sys/mounts/{path}", enable_mount, ["POST", "PUT"])

    # -- policies (sys/policy and sys/policies/acl) -------------------------------------------

    @_errors_as_vault
    async def list_policies(request: Request) -> Response:
        async with _call(request) as call:
            await call.authorize("sys/policies/acl", "list", "secrets.kv.list")
            names = sorted(await call.session.scalars(select(SecretPolicy.name)))
            return vault_data({"keys": names, "policies": names}, keys=names, policies=names)

    _route(router, "/sys/policy", list_policies, ["GET"])
    _route(router, "/sys/policies/acl", list_policies, ["GET", "LIST"])

    @_errors_as_vault
    async def policy(request: Request, name: str) -> Response:
        if not NAME.fullmatch(name):
            raise BadRequest("a policy name is lowercase letters, digits, '.', '-' and '_'")
        async with _call(request) as call:
            method = request.method
            path = f"sys/policies/acl/{name}"
            if method == "GET":
                await call.authorize(path, "read", "secrets.kv.read")
                stored = await call.session.scalar(
                    select(SecretPolicy).where(SecretPolicy.name == name)
                )
                if stored is None:
                    raise NotFound()
                document = {"name": name, "rules": stored.text, "policy": stored.text}
                return vault_data(document, **document)
            if method == "DELETE":
                await call.authorize(path, "delete", "secrets.policy.write")
                await call.session.execute(delete(SecretPolicy).where(SecretPolicy.name == name))
                forget_policy(call.session, call.tenant_id, name)
                call.record("secrets.policy.write", path, operation="delete")
                return no_content()
            body = await _body(request)
            text = body.get("policy", body.get("rules"))
            if not isinstance(text, str):
                raise BadRequest("'policy' is required: the policy's HCL or JSON")
            rules = parse_policy(text)
            await call.authorize(path, "update", "secrets.policy.write")
            stored = await call.session.scalar(
                select(SecretPolicy).where(SecretPolicy.name == name)
            )
            if stored is None:
                stored = SecretPolicy(tenant_id=call.tenant_id, name=name)
                call.session.add(stored)
            stored.text = text
            stored.rules = stored_rules(rules)
            forget_policy(call.session, call.tenant_id, name)
            call.record("secrets.policy.write", path, operation="write", rules=len(rules))
            return no_content()

    for prefix in ("/sys/policy/{name}", "/sys/policies/acl/{name}"):
        _route(router, prefix, policy, ["GET", "PUT", "POST", "DELETE"])

    # -- AppRole (auth/approle) ------------------------------------------------------------

    @_errors_as_vault
    async def approle_role(request: Request, name: str) -> Response:
        async with _call(request) as call:
            path = f"auth/approle/role/{name}"
            auth = await get_auth_service(request)
            if request.method == "GET":
                await call.authorize(path, "read", "secrets.kv.read")
                found = await approle.account(call.session, call.tenant_id, name)
                role = await auth.get_role(call.session, call.tenant_id, found.name)
                policies = held_policy_names_of(role.permissions)
                return vault_data({"token_policies": policies, "policies": policies})
            body = await _body(request)
            policies = body.get("token_policies", body.get("policies", []))
            if isinstance(policies, str):
                policies = [p.strip() for p in policies.split(",") if p.strip()]
            if not isinstance(policies, list):
                raise BadRequest("token_policies is a list of policy names")
            await call.authorize(path, "update", "secrets.policy.write")
            await approle.write(auth, call.session, call.principal, name, policies, call.actor)
            call.record("secrets.policy.write", path, operation="approle", policies=policies)
            return no_content()

    _route(router, "/auth/approle/role/{name}", approle_role, ["GET", "POST", "PUT"])

    @_errors_as_vault
    async def approle_role_id(request: Request, name: str) -> Response:
        async with _call(request) as call:
            await call.authorize(f"auth/approle/role/{name}/role-id", "read", "secrets.kv.read")
            found = await approle.account(call.session, call.tenant_id, name)
            return vault_data({"role_id": found.id})

    _route(router, "/auth/approle/role/{name}/role-id", approle_role_id, ["GET"])

    @_errors_as_vault
    async def approle_secret_id(request: Request, name: str) -> Response:
        async with _call(request) as call:
            path = f"auth/approle/role/{name}/secret-id"
            await call.authorize(path, "update", "secrets.policy.write")
            found = await approle.account(call.session, call.tenant_id, name)
            auth = await get_auth_service(request)
            issued = await auth.add_client_secret(
                call.session, call.tenant_id, found.id, f"{found.name} secret-id"
            )
            call.record("secrets.policy.write", path, operation="secret_id", accessor=issued.id)
            return vault_data(
                {"secret_id": issued.secret, "secret_id_accessor": issued.id, "secret_id_ttl": 0}
            )

    _route(router, "/auth/approle/role/{name}/secret-id", approle_secret_id, ["POST", "PUT"])

    @_errors_as_vault
    async def approle_login(request: Request) -> Response:
        """``role_id`` + ``secret_id`` → a token (no token needed to call this)."""
        body = await _body(request)
        role_id, secret_id = body.get("role_id"), body.get("secret_id")
        if not isinstance(role_id, str) or not isinstance(secret_id, str):
            raise BadRequest("role_id and secret_id are required")
        if len(role_id) > 64 or len(secret_id) > 256:
            return vault_errors(400, approle.INVALID_LOGIN)
        await limit_by_address(request, "approle_login")
        context = get_context(request)
        auth = await get_auth_service(request)
        async with context.database.session() as session:
            issued = await approle.login(auth, session, role_id, secret_id)
            principal = await auth.authenticate(session, issued.access_token) if issued else None
        if issued is None or principal is None:
            return vault_errors(400, approle.INVALID_LOGIN)
        policies = held_policy_names(principal)
        return vault_data(
            None,
            auth={
                "client_token": issued.access_token,
                "accessor": "",
                "policies": policies,
                "token_policies": policies,
                "metadata": {"role_id": role_id},
                "lease_duration": issued.expires_in,
                "renewable": False,
                "entity_id": role_id,
                "token_type": "service",
                "orphan": True,
            },
        )

    _route(router, "/auth/approle/login", approle_login, ["POST", "PUT"])

    # -- a mount's configuration -----------------------------------------------------------

    @_errors_as_vault
    async def config(request: Request, mount: str) -> Response:
        from keel.secrets.database_router import is_listing, list_connections

        if is_listing(request):  # a database mount's connections (KV's config has no list)
            response: Response = await list_connections(request, mount=mount)
            return response
        async with _call(request) as call:
            engine_mount = await call.engine.mount(call.session, call.tenant_id, mount)
            if engine_mount.type != "kv":
                raise NotFound()
            path = f"{mount}/config"
            if request.method == "GET":
                await call.authorize(path, "read", "secrets.kv.read")
                return vault_data(
                    {
                        "max_versions": engine_mount.max_versions,
                        "cas_required": engine_mount.cas_required,
                        "delete_version_after": format_duration(
                            engine_mount.delete_version_after_s
                        ),
                    }
                )
            body = await _body(request)
            await call.authorize(path, "update", "secrets.mount.write")
            await call.engine.configure(call.session, engine_mount, body)
            call.record("secrets.mount.write", path, operation="configure")
            return no_content()

    _route(router, "/{mount}/config", config, ["GET", "POST", "PUT"])

    # -- the database engine and leases (before the catch-all below) --------------------------

    from keel.secrets.database_router import add_database_routes  # it imports this module

    add_database_routes(router)

    # Keel's extensions: rotation policies and the change stream (a module that imports this
    # one, so imported here).
    from keel.secrets import rotation_router

    rotation_router.add_routes(router)

    # -- data, metadata, delete, undelete, destroy ---------------------------------------------

    @_errors_as_vault
    async def kv(request: Request, mount: str, operation: str, path: str) -> Response:
        if operation not in _OPERATIONS:
            raise NotFound()
        method = request.method
        listing = method == "LIST" or (
            method == "GET" and request.query_params.get("list") in ("true", "1")
        )
        if listing and operation != "metadata":
            return vault_errors(405, "unsupported operation")
        path = path.strip("/")
        if not listing or path:
            path = check_secret_path(path)
        async with _call(request) as call:
            full = f"{mount}/{operation}/{path}"
            if operation == "data" and method == "GET" and not listing:
                return await _read(call, mount, path, full)
            engine_mount = await call.engine.mount(call.session, call.tenant_id, mount)
            if engine_mount.type != "kv":
                raise NotFound()
            return await _operate(call, engine_mount, operation, method, path, full, listing)

    _route(router, "/{mount}/{operation}/{path:path}", kv, _ALL_METHODS)

    return router


async def _read(call: Call, mount: str, path: str, full: str) -> Response:
    """The hot path: a version's data, in one query, audited before the answer."""
    await call.authorize(full, "read", "secrets.kv.read")
    version = _version_param(call.request.query_params.get("version"))
    result = await call.engine.read(call.session, call.tenant_id, mount, path, version)
    await call.record_read("secrets.kv.read", full, version=result.metadata["version"])
    body = {"data": result.data, "metadata": result.metadata}
    if result.data is None:  # deleted or destroyed: Vault's 404 with the metadata
        return JSONResponse({"data": body, "errors": []}, status_code=404)
    return vault_data(body)


async def _operate(
    call: Call,
    mount: Any,
    operation: str,
    method: str,
    path: str,
    full: str,
    listing: bool,
) -> Response:
    engine, session = call.engine, call.session
    request = call.request
    if listing:
        await call.authorize(full, "list", "secrets.kv.list")
        keys = await engine.keys(session, mount, path)
        await call.record_read("secrets.kv.list", full, keys=len(keys))
        if not keys:
            raise NotFound()
        return vault_data({"keys": keys})
    if operation == "data":
        if method in ("POST", "PUT"):
            body = await _body(request)
            exists = await _exists(call, mount, path)
            await call.authorize(full, "update" if exists else "create", "secrets.kv.write")
            row, secret = await engine.write(session, mount, path, body.get("data"), _cas(body))
            call.record("secrets.kv.write", full, version=row.version)
            return vault_data(version_metadata(row, secret))
        if method == "PATCH":
            body = await _body(request)
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
        body = await _body(request)
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
            secret = await engine.metadata(session, mount, path)
            await call.record_read("secrets.kv.read", full, operation="metadata")
            return vault_data(await engine.metadata_document(session, mount, secret))
        if method in ("POST", "PUT", "PATCH"):
            body = await _body(request)
            exists = await _exists(call, mount, path)
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


async def _exists(call: Call, mount: Any, path: str) -> bool:
    try:
        await call.engine.metadata(call.session, mount, path)
    except NotFound:
        return False
    return True


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
