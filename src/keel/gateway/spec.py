"""The gateway service as Keel mounts and runs it.

A gateway replica often runs alone (``keel serve --services gateway``, next to its proxy).
Its admin API still authenticates callers, which needs the auth service's verifier: when the
``auth`` service is not enabled in this process, the gateway's start-up builds it (the same
:func:`keel.auth.spec.start_auth`, so API keys and tokens are checked exactly as everywhere);
auth's routes stay unmounted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from keel.auth.dependencies import AUTH_RESOURCE
from keel.auth.spec import start_auth
from keel.core.context import AppContext, ResourceKey
from keel.core.services import ServiceSpec
from keel.gateway import (
    audit_actions,  # noqa: F401  (registers the catalogue entries)
)
from keel.gateway.enforcement import (
    GATEWAY_ENFORCEMENT,
    GatewayEnforcement,
    InProcessAuthenticator,
    create_limiter,
)
from keel.gateway.models import GatewayPolicy
from keel.gateway.service.last_known_good import load_last_known_good_entry
from keel.settings import Settings

#: The largest policy document a PUT (or a dry run) accepts: a thousand routes with their
#: policies fit well within it.
MAX_POLICY_BODY_BYTES = 4 * 1024 * 1024

#: The proxy and its listener, when ``KEEL_GATEWAY__PROXY_LISTEN`` asks for one.
GATEWAY_PROXY: ResourceKey[Any] = ResourceKey("gateway.proxy")


async def gateway_ready(context: AppContext) -> None:
    """The service's tables answer; in a serving process with a proxy, the proxy listens
    (its policy is loaded before it listens). A process serving its last known good copy is
    not ready, and says so (it serves meanwhile: see :func:`has_last_known_good_copy`)."""
    enforcement = context.resources.get(GATEWAY_ENFORCEMENT)
    if enforcement is not None and enforcement.from_local_copy:
        raise RuntimeError(
            f"serving the last known good copy (revision {enforcement.revision}) "
            "until the database answers"
        )
    async with context.database.session() as session:
        await session.execute(select(GatewayPolicy.id).limit(1).execution_options(all_tenants=True))
    proxy_missing = context.resources.get(GATEWAY_PROXY) is None
    if context.settings.gateway.proxy_listen is not None and context.started and proxy_missing:
        raise RuntimeError("the gateway proxy is not listening yet")


def has_last_known_good_copy(context: AppContext) -> bool:
    """Whether this process may serve with its database unreachable at start: it holds a
    valid last known good copy of the served tenant's policy (``serve_gateway`` starts from
    it; the database is tried again in the background)."""
    settings = context.settings
    path = settings.gateway.cache_path(settings.data_dir)
    return load_last_known_good_entry(path, settings.gateway.tenant) is not None


async def start_gateway(context: AppContext) -> None:
    """Make sure callers can be authenticated (see the module docstring) and make the holder
    of the served tenant's policy; it is loaded by :func:`serve_gateway` (a serving process
    only: a CLI command never reads it)."""
    if AUTH_RESOURCE not in context.resources and all(
        spec.name != "auth" for spec in context.services
    ):
        # Without the database (a replica starting from its copy) the signing keys are left
        # to the auth service's own process: the gateway only reads them.
        await start_auth(context, ensure_signing_keys=context.database_ready.is_set())
    context.resources[GATEWAY_ENFORCEMENT] = GatewayEnforcement(
        context,
        authenticator=InProcessAuthenticator(context.resources[AUTH_RESOURCE], context),
        limiter=create_limiter(context),
    )


async def serve_gateway(context: AppContext) -> None:
    """In every process serving the gateway: load and follow the policy (for the proxy and
    the authorization endpoints) and run the proxy's listener when one is configured."""
    enforcement = context.resources[GATEWAY_ENFORCEMENT]
    await enforcement.start()
    running = None
    try:
        listen = context.settings.gateway.proxy_listen
        if listen is not None:
            from keel.gateway.identity import identity_minter
            from keel.gateway.proxy_app import GatewayProxy, ProxyMetrics, ProxyServer

            proxy = GatewayProxy(
                enforcement,
                identity=identity_minter(context),
                metrics=ProxyMetrics(context.metrics.registry),
            )
            await proxy.start()
            server = ProxyServer(
                proxy,
                listen,
                reuse_port=context.settings.gateway.proxy_reuse_port,
                max_head_bytes=context.settings.max_header_bytes,
            )
            await server.start()
            running = (proxy, server)
            context.resources[GATEWAY_PROXY] = running
        await asyncio.Event().wait()  # until the process stops (the task is cancelled)
    finally:
        if running is not None:
            await running[1].stop()
            await running[0].stop()
        await enforcement.stop()


def _body_limits(settings: Settings) -> dict[str, int]:
    # A whole policy of a thousand routes is larger than KEEL_MAX_BODY_BYTES' default.
    return {
        "/v1/policy": MAX_POLICY_BODY_BYTES,
        "/v1/policy/validate": MAX_POLICY_BODY_BYTES,
    }


service = ServiceSpec(
    name="gateway",
    router="keel.gateway.router:build_router",
    ready_check=gateway_ready,
    startup=start_gateway,
    companions=(serve_gateway,),
    body_limits=_body_limits,
    serves_without_database=has_last_known_good_copy,
    # Change events are pruned by the platform's own background work (keel.core.lifecycle).
    model_modules=("keel.gateway.models",),
)
