"""``create_app(settings)``: every enabled service in one ASGI app, with the shared plumbing.

One process serves everything on the embedded default; the same app, given PostgreSQL and
Redis, runs as any number of stateless replicas, each with a subset of services if wanted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.engine import make_url
from starlette.responses import Response

from keel import __version__
from keel.core.broadcast import Broadcast, create_broadcast
from keel.core.cache import listen_for_invalidations
from keel.core.changes import use_change_publisher
from keel.core.crypto import Keyring, load_keyring
from keel.core.db import Database
from keel.core.errors import install_error_handlers
from keel.core.health import build_health_router
from keel.core.http import RequestContextMiddleware, ServiceRouter
from keel.core.logging import configure_logging, get_logger
from keel.core.metrics import Metrics
from keel.core.sealed import load_token_hash_key
from keel.core.services import (
    ServiceSpec,
    ServiceUnavailableInBuild,
    available_services,
    load_service,
)
from keel.core.startup import pause_garbage_collection, resume_garbage_collection
from keel.core.telemetry import init_sentry, init_tracing
from keel.migrations import (
    create_fresh,
    current_revision,
    ensure_schema_current,
    head_revision,
    upgrade,
)
from keel.settings import Settings, load_settings

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = get_logger(__name__)

_NO_NATIVE_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


@dataclass
class AppContext:
    """What one running Keel process shares between requests: ``app.state.keel``."""

    settings: Settings
    database: Database
    broadcast: Broadcast
    metrics: Metrics
    services: list[ServiceSpec]
    started: bool = False
    background_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: Runtime objects services build at start-up (``keel.auth`` keeps its AuthService here).
    resources: dict[str, Any] = field(default_factory=dict)
    _keyring: Keyring | None = None

    @property
    def keyring(self) -> Keyring:
        """The master keyring, loaded on first use (missing key: :class:`MasterKeyError`)."""
        if self._keyring is None:
            self._keyring = load_keyring(self.settings)
        return self._keyring


def build_context(settings: Settings) -> AppContext:
    """The shared objects of one process (app, worker or CLI command), not yet started."""
    return AppContext(
        settings=settings,
        database=Database.from_settings(settings),
        broadcast=create_broadcast(
            settings.redis_url.get_secret_value() if settings.redis_url else None
        ),
        metrics=Metrics(),
        services=resolve_services(settings),
    )


async def start_services(context: AppContext) -> None:
    """Prepare the database, load the platform keys and run every enabled service's start-up
    hook."""
    await prepare_database(context.database, context.settings)
    # Before any service hashes a token: the stored key survives master key rotation.
    await load_token_hash_key(context.database, context.keyring)
    use_change_publisher(context.database.engine, context.broadcast)
    for spec in context.services:
        if spec.startup is not None:
            await spec.startup(context)


def resolve_services(settings: Settings) -> list[ServiceSpec]:
    """The services to run: all this build has, or exactly those named in ``services``."""
    if "services" not in settings.model_fields_set:
        return available_services(settings.services)
    specs = []
    for name in settings.services:
        try:
            specs.append(load_service(name))
        except ServiceUnavailableInBuild:
            raise ServiceUnavailableInBuild(
                f"service {name!r} is not part of this Keel build yet"
            ) from None
    return specs


#: Databases this process already brought to (or found at) the head revision. `keel serve`
#: checks before starting uvicorn and the app's lifespan would check again in the same process.
_PREPARED: set[str] = set()


def _database_key(url: str) -> str:
    """``url`` with a relative SQLite path made absolute: the embedded default's URL is the
    same in every directory, its database is not."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return str(parsed.set(database=str(Path(parsed.database).resolve())))
    return url


async def prepare_database(database: Database, settings: Settings) -> None:
    """Migrate the embedded default by itself; elsewhere refuse an out-of-date schema."""
    url = _database_key(settings.effective_database_url)
    if url in _PREPARED:
        return
    if settings.is_embedded:
        current = await current_revision(database)
        if current is None and await create_fresh(database):
            pass  # a new embedded database: built at head in one step
        elif current != head_revision():
            await upgrade(database)
    else:
        await ensure_schema_current(database)
    _PREPARED.add(url)


def create_app(
    settings: Settings | None = None,
    *,
    run_background: bool | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    settings = settings or load_settings()
    context = build_context(settings)
    services, database, metrics = context.services, context.database, context.metrics
    metrics.watch_database(database)
    # Background work runs in `keel worker`; on the embedded default there is no other
    # process to run it, so `keel serve` runs it too.
    if run_background is None:
        run_background = settings.is_embedded

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await start_services(context)
        await context.broadcast.connect()
        context.background_tasks.append(
            asyncio.create_task(
                listen_for_invalidations(context.broadcast), name="cache-invalidations"
            )
        )
        for spec in services:
            for task in (*spec.companions, *(spec.background if run_background else ())):
                context.background_tasks.append(
                    asyncio.create_task(task(context), name=f"{spec.name}-{task.__name__}")
                )
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

    for spec in services:
        if spec.router is not None:
            router = spec.router()
            if isinstance(router, ServiceRouter):
                router.mount_prefix = f"/{spec.name}/"
            app.include_router(router, prefix=f"/{spec.name}")
        if spec.root_router is not None:
            app.include_router(spec.root_router())

    init_tracing(app, settings, tracer_provider)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        routes=lambda: app.routes,
    )
    return app


def create_app_from_env() -> FastAPI:
    """The uvicorn factory ``keel serve`` runs: settings from the environment, logs set up."""
    pause_garbage_collection()  # a worker process of `keel serve --workers N` starts here
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    init_sentry(settings)
    return create_app(settings)
