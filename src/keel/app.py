"""``create_app(settings)``: every enabled service in one ASGI app, with the shared plumbing.

One process serves everything on the embedded default; the same app, given PostgreSQL and
Redis, runs as any number of stateless replicas, each with a subset of services if wanted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from keel import __version__
from keel.core.cache import listen_for_invalidations
from keel.core.context import RouterFactory
from keel.core.errors import install_error_handlers
from keel.core.health import build_health_router
from keel.core.http import DeferredRouter, RequestContextMiddleware, ServiceRouter
from keel.core.lazy import import_named
from keel.core.lifecycle import (
    background_work,
    build_context,
    prepare_when_database_returns,
    start_services,
    stop_services,
)
from keel.core.logging import configure_logging, get_logger
from keel.core.startup import pause_garbage_collection, resume_garbage_collection
from keel.core.telemetry import init_sentry, init_tracing
from keel.settings import Settings, load_settings

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = get_logger(__name__)

_NO_NATIVE_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def create_app(
    settings: Settings | None = None,
    *,
    run_background: bool | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    settings = settings or load_settings()
    if not structlog.is_configured():
        # structlog's defaults render a traceback with every frame's local variables (a
        # password, a token) and take seconds doing it on a loaded machine; Keel's own
        # configuration writes plain, redacted lines. An embedder's own configuration wins.
        configure_logging(settings.log_level, settings.log_format)
    context = build_context(settings)
    services, database, metrics = context.services, context.database, context.metrics
    metrics.watch_database(database)
    # Background work runs in `keel worker`; on the embedded default there is no other
    # process to run it, so `keel serve` runs it too.
    if run_background is None:
        run_background = settings.is_embedded

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await start_services(context, serving=True)
        await context.broadcast.connect()
        context.background_tasks.append(
            asyncio.create_task(
                listen_for_invalidations(context.broadcast), name="cache-invalidations"
            )
        )
        if not context.database_ready.is_set():  # started without it (keel.core.lifecycle)
            context.background_tasks.append(
                asyncio.create_task(prepare_when_database_returns(context), name="database-prepare")
            )
        loops = [
            (f"{spec.name}-{task.__name__}", task) for spec in services for task in spec.companions
        ]
        if run_background:
            loops += background_work(context)
        for name, task in loops:
            context.background_tasks.append(asyncio.create_task(task(context), name=name))
        context.started = True
        # `keel serve` paused the collector for start-up (keel.core.startup).
        resume_garbage_collection(freeze=True)
        log.info(
            "keel.started",
            services=[spec.name for spec in services],
            database=database.dialect,
            redis=settings.redis_url is not None,
        )
        try:
            yield
        finally:
            context.started = False
            for background in context.background_tasks:
                background.cancel()
            if context.background_tasks:
                # Bounded: a task that swallowed its cancellation must not hold up shutdown.
                _, stuck = await asyncio.wait(context.background_tasks, timeout=3.0)
                for straggler in stuck:
                    log.error("keel.shutdown.task_stuck", task=straggler.get_name())
            await stop_services(context)
            await context.broadcast.disconnect()
            await database.dispose()

    app = FastAPI(
        title="Keel",
        version=__version__,
        description="Central services for a fleet of Python web services.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks look up the global providers (an environment
        # lookup) on every request; Keel instruments through ``keel.core.telemetry`` when
        # ``KEEL_OTEL__ENABLED`` is set, so they stay off otherwise.
        telemetry=None if settings.otel.enabled else _NO_NATIVE_TELEMETRY,
    )
    app.state.keel = context
    install_error_handlers(app)
    app.include_router(build_health_router())

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    deferred: list[DeferredRouter] = []
    for spec in services:
        if spec.router is not None:
            router = _service_router(spec.router, f"/{spec.name}/")
            if isinstance(router, DeferredRouter):
                deferred.append(router)
            app.include_router(router, prefix=f"/{spec.name}")
        if spec.root_router is not None:
            router = _service_router(spec.root_router, spec.root_prefix)
            if isinstance(router, DeferredRouter):
                deferred.append(router)
            app.include_router(router)
    if deferred:
        _build_before_listing(app, deferred)

    init_tracing(app, settings, tracer_provider)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        body_limits={
            f"/{spec.name}{path}": limit
            for spec in services
            if spec.body_limits is not None
            for path, limit in spec.body_limits(settings).items()
        },
        routes=lambda: app.routes,
    )
    return app


def _service_router(factory: RouterFactory | str, mount_prefix: str | None) -> APIRouter:
    """A service's router: named (``"module:function"``), built on first use under
    ``mount_prefix``; given as a function, built now."""
    if isinstance(factory, str):
        reference = factory

        def build() -> APIRouter:
            named: RouterFactory = import_named(reference)
            return named()

        if mount_prefix is not None:
            return DeferredRouter(build, mount_prefix=mount_prefix)
        factory = build
    router = factory()
    if isinstance(router, ServiceRouter) and mount_prefix is not None:
        router.mount_prefix = mount_prefix
    return router


def _build_before_listing(app: FastAPI, deferred: list[DeferredRouter]) -> None:
    """The OpenAPI document (``/openapi.json``, ``/docs``) lists every route: the deferred
    ones are built first."""
    build_document = app.openapi

    def openapi() -> dict[str, Any]:
        for router in deferred:
            router.build()
        return build_document()

    app.openapi = openapi  # type: ignore[method-assign]


def create_app_from_env() -> FastAPI:
    """The uvicorn factory ``keel serve`` runs: settings from the environment, logs set up."""
    pause_garbage_collection()  # a worker process of `keel serve --workers N` starts here
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    init_sentry(settings)
    return create_app(settings)
