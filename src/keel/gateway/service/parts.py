"""Routes and upstream pools one at a time: each change a new revision of the whole policy,
written through :func:`~keel.gateway.service.policy.write_built_policy`, so it is validated,
versioned, audited and published exactly as a whole-document write is.

A put replaces the part of that name (a new route is appended, so the order of the others
never changes); a delete of a missing part is a 404; deleting a pool that routes still use is
a 409 naming them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.gateway.service.policy import WriteOutcome, read_policy, write_built_policy
from keel.gateway.service.validation import UpstreamAddressRules
from keel_client.edge._model import EdgePolicy, Route
from keel_client.edge._upstreams import UpstreamPool

#: The two kinds of part: the policy's list of each.
ROUTES = "routes"
UPSTREAMS = "upstreams"


async def get_route(session: AsyncSession, tenant_id: str, name: str) -> tuple[int, Route]:
    """The route ``name`` and the policy revision it was read at."""
    snapshot = await read_policy(session, tenant_id)
    for route in snapshot.policy.routes:
        if route.name == name:
            return snapshot.revision, route
    raise NotFound(f"No route {name!r} in the gateway policy.")


async def get_upstream(
    session: AsyncSession, tenant_id: str, name: str
) -> tuple[int, UpstreamPool]:
    """The pool ``name`` and the policy revision it was read at."""
    snapshot = await read_policy(session, tenant_id)
    for pool in snapshot.policy.upstreams:
        if pool.name == name:
            return snapshot.revision, pool
    raise NotFound(f"No upstream pool {name!r} in the gateway policy.")


async def put_route(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    route: Mapping[str, Any],
    *,
    actor: Actor,
    if_match: str | int | None = None,
    comment: str = "",
    rules: UpstreamAddressRules | None = None,
) -> WriteOutcome:
    """Create or replace the route ``name`` (the body's ``name``, if given, must agree)."""
    return await _put(session, tenant_id, ROUTES, name, route, actor, if_match, comment, rules)


async def delete_route(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    actor: Actor,
    if_match: str | int | None = None,
    comment: str = "",
    rules: UpstreamAddressRules | None = None,
) -> WriteOutcome:
    """Remove the route ``name`` (404 when absent)."""
    return await _delete(session, tenant_id, ROUTES, name, actor, if_match, comment, rules)


async def put_upstream(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    pool: Mapping[str, Any],
    *,
    actor: Actor,
    if_match: str | int | None = None,
    comment: str = "",
    rules: UpstreamAddressRules | None = None,
) -> WriteOutcome:
    """Create or replace the pool ``name`` (the body's ``name``, if given, must agree)."""
    return await _put(session, tenant_id, UPSTREAMS, name, pool, actor, if_match, comment, rules)


async def delete_upstream(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    actor: Actor,
    if_match: str | int | None = None,
    comment: str = "",
    rules: UpstreamAddressRules | None = None,
) -> WriteOutcome:
    """Remove the pool ``name``; 409 naming the routes that still send requests to it."""
    return await _delete(
        session, tenant_id, UPSTREAMS, name, actor, if_match, comment, rules, _refuse_pool_in_use
    )


def _refuse_pool_in_use(current: EdgePolicy, name: str) -> None:
    users = sorted(
        route.name
        for route in current.routes
        if route.upstream == name or any(rule.upstream == name for rule in route.versions)
    )
    if users:
        raise Conflict(
            f"The upstream pool {name!r} is used by the routes {', '.join(users)}.",
            routes=users,
        )


async def _delete(
    session: AsyncSession,
    tenant_id: str,
    kind: str,
    name: str,
    actor: Actor,
    if_match: str | int | None,
    comment: str,
    rules: UpstreamAddressRules | None,
    refuse: Callable[[EdgePolicy, str], None] | None = None,
) -> WriteOutcome:
    what = "route" if kind == ROUTES else "upstream pool"

    def build(current: EdgePolicy) -> dict[str, Any]:
        if refuse is not None:
            refuse(current, name)
        document = current.model_dump(mode="json")
        kept = [part for part in document[kind] if part["name"] != name]
        if len(kept) == len(document[kind]):
            raise NotFound(f"No {what} {name!r} in the gateway policy.")
        return {**document, kind: kept}

    operation = "delete_route" if kind == ROUTES else "delete_upstream"
    return await write_built_policy(
        session,
        tenant_id,
        build,
        actor=actor,
        if_match=if_match,
        comment=comment,
        rules=rules,
        audit={"operation": operation, "name": name},
    )


async def _put(
    session: AsyncSession,
    tenant_id: str,
    kind: str,
    name: str,
    part: Mapping[str, Any],
    actor: Actor,
    if_match: str | int | None,
    comment: str,
    rules: UpstreamAddressRules | None,
) -> WriteOutcome:
    body = dict(part)
    if body.setdefault("name", name) != name:
        raise ValidationFailed(
            f"The body names {body['name']!r}, the path {name!r}.",
            errors=[
                {
                    "location": ["body", "name"],
                    "message": "must equal the path's name",
                    "code": "value_error",
                }
            ],
        )

    def build(current: EdgePolicy) -> dict[str, Any]:
        document = current.model_dump(mode="json")
        parts = list(document[kind])
        for index, existing in enumerate(parts):
            if existing["name"] == name:
                parts[index] = body
                break
        else:
            parts.append(body)
        return {**document, kind: parts}

    return await write_built_policy(
        session,
        tenant_id,
        build,
        actor=actor,
        if_match=if_match,
        comment=comment,
        rules=rules,
        audit={"operation": f"put_{kind.rstrip('s')}", "name": name},
    )
