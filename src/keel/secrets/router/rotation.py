"""Keel's extensions of the Vault API: rotation policies and the secrets change stream.

``POST|PUT|GET|DELETE {mount}/rotation/{path}`` set, read and remove a secret's rotation
policy; ``POST {mount}/rotate/{path}`` rotates it now; ``GET sys/changes`` streams the
changes of the secrets the caller may read (Server-Sent Events, see :mod:`keel.core.changes`).
Capabilities are checked on the request's path, as Vault does for every endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.dependencies import Auth, bearer_credential
from keel.core.changes import (
    Authenticator,
    CallerChangeFilter,
    Change,
    change_stream_response,
    resume_point,
)
from keel.secrets.auth import VaultCaller
from keel.secrets.engines.kv import SECRETS_STREAM, check_secret_path, version_metadata
from keel.secrets.engines.policies import (
    ROOT_PERMISSION,
    Rule,
    allowed,
    held_policy_names,
    rules_of,
)
from keel.secrets.engines.rotation import (
    RotationFailed,
    delete_rotation,
    get_rotation,
    parse_rotation_policy,
    rotate_secret,
    rotation_document,
    set_rotation,
)
from keel.secrets.vault_http import (
    VaultRoute,
    add_vault_route,
    no_content,
    read_body,
    vault_data,
    vault_errors,
)
from keel_client.auth import Principal

#: A stream re-checks its caller's credential and policies this often: a revoked key or a
#: narrowed policy stops the events within this time, an expired token ends the stream.
RECHECK_SECONDS = 15.0

router = APIRouter(route_class=VaultRoute)


async def _secret_path(path: str) -> str:
    """Checked before the caller is: a malformed path is a 400 to anyone."""
    return check_secret_path(path)


async def _resume_point(request: Request) -> int | None:
    return resume_point(request)


SecretPath = Annotated[str, Depends(_secret_path)]
ResumePoint = Annotated[int | None, Depends(_resume_point)]


async def rotation_policy(mount: str, path: SecretPath, call: VaultCaller) -> Response:
    """A secret's rotation policy (Keel extension): ``{"field", "interval", "length",
    "alphabet"}`` or ``{"field", "interval", "hook"}``."""
    full = f"{mount}/rotation/{path}"
    method = call.request.method
    engine, session = call.kv_engine, call.session
    if method == "GET":
        await call.authorize(full, "read", "secrets.kv.read")
        engine_mount = await engine.mount(session, call.tenant_id, mount)
        rotation = await get_rotation(session, engine, engine_mount, path)
        await call.record_read("secrets.kv.read", full, operation="rotation")
        return vault_data(rotation_document(rotation))
    if method == "DELETE":
        await call.authorize(full, "delete", "secrets.rotation.write")
        engine_mount = await engine.mount(session, call.tenant_id, mount)
        removed = await delete_rotation(session, engine, engine_mount, path)
        call.record("secrets.rotation.write", full, operation="delete", removed=removed)
        return no_content()
    await call.authorize(full, "update", "secrets.rotation.write")
    policy = parse_rotation_policy(await read_body(call.request))
    engine_mount = await engine.mount(session, call.tenant_id, mount)
    rotation = await set_rotation(session, engine, engine_mount, path, policy)
    call.record(
        "secrets.rotation.write",
        full,
        operation="write",
        field=policy.field,
        interval_s=policy.interval_s,
        hook=policy.hook,
    )
    return vault_data(rotation_document(rotation))


async def rotate_now(mount: str, path: SecretPath, call: VaultCaller) -> Response:
    """Rotate a secret now by its policy (Keel extension); answers the new version."""
    full = f"{mount}/rotate/{path}"
    await call.authorize(full, "update", "secrets.kv.rotate")
    engine_mount = await call.kv_engine.mount(call.session, call.tenant_id, mount)
    rotation = await get_rotation(call.session, call.kv_engine, engine_mount, path)
    try:
        row, secret = await rotate_secret(
            call.session, call.kv_engine, engine_mount, path, rotation, actor=call.actor
        )
    except RotationFailed as error:
        # Answered, not raised: the unit of work commits the failure's record.
        return vault_errors(error.status, f"rotation failed: {error.reason}")
    return vault_data(version_metadata(row, secret))


async def watch_changes(
    request: Request, after: ResumePoint, call: VaultCaller, auth: Auth
) -> Response:
    """The changes of the secrets the caller may read or list, as Server-Sent Events
    (Keel extension). Resume with ``Last-Event-ID`` or ``?since=<id>``; events carry the
    path, version and operation, never a value."""
    principal = call.principal
    rules = await rules_of(call.session, call.tenant_id, held_policy_names(principal))
    await call.record_read("secrets.changes.watch", "sys/changes", since=after)
    readable = ReadableChanges(request, principal, rules, auth, bearer_credential(request))
    return change_stream_response(request, principal.tenant_id, [SECRETS_STREAM], allow=readable)


class ReadableChanges(CallerChangeFilter):
    """The change filter of one stream: keeps the changes of paths its caller may ``read``
    (``{mount}/data/{path}``, ``{mount}/metadata/{path}``) or ``list``
    (``{mount}/metadata/{path}``), and re-checks the caller, its policies included, every
    ``RECHECK_SECONDS``."""

    recheck_seconds = RECHECK_SECONDS

    def __init__(
        self,
        request: Request,
        principal: Principal,
        rules: list[Rule],
        auth: Authenticator,
        credential: str | None,
    ) -> None:
        super().__init__(request, principal, auth, credential)
        self._principal = principal
        self._rules = rules

    def visible(self, changes: Sequence[Change]) -> Sequence[Change]:
        if self._principal.has_permission(ROOT_PERMISSION):
            return changes
        return [change for change in changes if self.may_see(change.subject)]

    def may_see(self, subject: str) -> bool:
        mount, _, path = subject.partition("/")
        rules = self._rules
        return (
            allowed(rules, f"{mount}/data/{path}", "read")
            or allowed(rules, f"{mount}/metadata/{path}", "read")
            or allowed(rules, f"{mount}/metadata/{path}", "list")
        )

    async def may_watch(self, session: AsyncSession, principal: Principal) -> bool:
        """Yes, with the policies ``principal`` holds now: what it sees narrows with them."""
        self._rules = await rules_of(session, principal.tenant_id, held_policy_names(principal))
        self._principal = principal
        return True


# Before the KV catch-all ``/{mount}/{operation}/{path}``: the service's router includes this
# one first.
add_vault_route(router, "/sys/changes", watch_changes, ["GET"])
add_vault_route(
    router, "/{mount}/rotation/{path:path}", rotation_policy, ["GET", "POST", "PUT", "DELETE"]
)
add_vault_route(router, "/{mount}/rotate/{path:path}", rotate_now, ["POST", "PUT"])
