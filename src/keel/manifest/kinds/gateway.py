"""The service's upstream pool and its routes in the tenant's edge policy. Only the routes
whose pool is the service are managed: the others stay, in their order; a new route is
appended. Everything is one new policy revision, validated as a whole."""

from __future__ import annotations

from typing import Any

from keel.core.errors import KeelError
from keel.gateway import service
from keel.manifest.plan import Change, Target
from keel_client.edge._model import EdgePolicy


async def plan(target: Target) -> list[Change]:
    loaded = target.loaded
    if loaded.upstream is None and not loaded.routes:
        return []
    session, tenant_id, actor = target.session, target.tenant_id, target.actor
    pool_name = loaded.manifest.service.name
    snapshot = await service.read_policy(session, tenant_id)
    policy = snapshot.policy
    changes: list[Change] = []
    pools = {pool.name: pool.model_dump(mode="json") for pool in policy.upstreams}
    if loaded.upstream is not None and pools.get(pool_name) != loaded.upstream:
        symbol = "~" if pool_name in pools else "+"
        changes.append(Change(symbol, "upstream", pool_name, _no_write))
    elif loaded.routes and pool_name not in pools:
        target.refuse(
            ("routes",),
            f"the gateway has no pool {pool_name!r} for these routes: add an [upstream] table",
        )
        return []
    routes = {route.name: route for route in policy.routes}
    for index, wanted in enumerate(loaded.routes):
        current = routes.get(wanted["name"])
        if current is None:
            changes.append(Change("+", "route", wanted["name"], _no_write))
        elif current.upstream != pool_name:
            target.refuse(
                ("routes", index, "name"),
                f"route {wanted['name']!r} exists with pool {current.upstream!r},"
                " not this service's",
            )
        elif current.model_dump(mode="json") != wanted:
            old = current.model_dump(mode="json")
            fields = sorted(name for name in wanted if old.get(name) != wanted[name])
            changes.append(Change("~", "route", wanted["name"], _no_write, fields))
    if not changes:
        return []

    def build(current: EdgePolicy) -> dict[str, Any]:
        document = current.model_dump(mode="json")
        if loaded.upstream is not None:
            upstreams = [pool for pool in document["upstreams"] if pool["name"] != pool_name]
            document["upstreams"] = (
                [*upstreams, loaded.upstream]
                if pool_name not in pools
                else [
                    loaded.upstream if pool["name"] == pool_name else pool
                    for pool in document["upstreams"]
                ]
            )
        wanted_by_name = {route["name"]: route for route in loaded.routes}
        kept = [wanted_by_name.pop(route["name"], route) for route in document["routes"]]
        document["routes"] = [*kept, *wanted_by_name.values()]
        return document

    rules = service.UpstreamAddressRules.from_settings(target.settings.gateway)
    merged, names = build(policy), [route["name"] for route in loaded.routes]
    try:
        await service.validate_policy(merged, rules=rules)
    except KeelError as error:
        # The whole policy's checks, before anything is written (a dry run shows them too),
        # each at the manifest's line where the problem is one of the manifest's own parts.
        for entry in error.extensions.get("errors") or [{"location": [], "message": str(error)}]:
            where = _where(merged, names, pool_name, entry["location"])
            target.refuse(where, entry["message"])
        return []

    async def write() -> None:
        await service.write_built_policy(
            session,
            tenant_id,
            build,
            actor=actor,
            if_match=None,
            comment=f"keel apply ({pool_name})",
            rules=rules,
            audit={"operation": "apply"},
        )

    # One revision for all: the write runs with the last change, the others only show.
    changes[-1].write = write
    return changes


async def _no_write() -> None:
    return None


def _where(
    merged: dict[str, Any], names: list[str], pool_name: str, location: list[str]
) -> tuple[str | int, ...]:
    """The manifest's path of a problem the policy's checks place in the merged policy: one
    of the manifest's routes (``names``, in the manifest's order) or the service's pool; else
    the manifest's routes as a whole (the problem is in how they meet the rest)."""
    if len(location) >= 2 and location[1].isdigit():
        index, rest = int(location[1]), location[2:]
        if location[0] == "routes" and index < len(merged["routes"]):
            name = merged["routes"][index]["name"]
            if name in names:
                return ("routes", names.index(name), *rest)
        upstreams = merged["upstreams"]
        if location[0] == "upstreams" and index < len(upstreams):
            return ("upstream", *rest) if upstreams[index]["name"] == pool_name else ("routes",)
    return ("routes",)
