"""How a Keel process comes up: build the context, prepare the database, start the
services, and the background work it runs.

A serving process whose every service can serve without its database (the gateway, from its
last known good policy copy: ``ServiceSpec.serves_without_database``) starts when the
database cannot be reached, and finishes preparing it in the background once it answers
(:func:`prepare_when_database_returns`); any other process refuses to start.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy.engine import make_url

from keel.core.broadcast import Broadcast, InMemoryBroadcast
from keel.core.changes import prune_change_events_periodically, use_change_publisher
from keel.core.context import AppContext, BackgroundTask
from keel.core.db import Database, unavailability_reason
from keel.core.idempotency import prune_idempotency_keys_periodically
from keel.core.logging import get_logger
from keel.core.metrics import Metrics
from keel.core.schema import create_fresh, current_revision, ensure_schema_current, head_revision
from keel.core.schema import upgrade as upgrade_schema
from keel.core.sealed import load_token_hash_key
from keel.core.services import resolve_services
from keel.settings import Settings

log = get_logger(__name__)


def create_broadcast(redis_url: str | None) -> Broadcast:
    """Redis fan-out across replicas when ``redis_url`` is set, else in-process."""
    if redis_url:
        # Imported only when used: the embedded default never needs it, and the import
        # costs a noticeable part of a cold start.
        from keel.core.broadcast_redis import RedisBroadcast

        return RedisBroadcast(redis_url)
    return InMemoryBroadcast()


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


#: How often a process started without its database tries it again.
DATABASE_RETRY_SECONDS = 2.0


async def start_services(context: AppContext, *, serving: bool = False) -> None:
    """Prepare the database, load the platform keys and run every enabled service's start-up
    hook.

    With ``serving`` (``keel serve`` and its app), a database that cannot be reached is
    tolerated when every enabled service can serve without it (:func:`serves_without_database`):
    the process starts with ``context.database_ready`` unset. Anything else (an old schema, a
    master key that does not open the platform keys, another process) raises as before.
    """
    try:
        await prepare_platform(context)
    except Exception as error:
        reason = unavailability_reason(error)
        if not (serving and reason is not None and serves_without_database(context)):
            raise
        log.warning(
            "keel.database.unavailable_at_start",
            reason=reason,
            services=[spec.name for spec in context.services],
        )
    use_change_publisher(context.database.engine, context.broadcast)
    for spec in context.services:
        if spec.startup is not None:
            await spec.startup(context)


async def stop_services(context: AppContext) -> None:
    """Run every enabled service's shutdown hook (each one's failure logged, none skipped)."""
    for spec in context.services:
        if spec.shutdown is not None:
            try:
                await spec.shutdown(context)
            except Exception:  # one service's failure must not keep the others' resources
                log.exception("keel.shutdown.service_failed", service=spec.name)


async def prepare_platform(context: AppContext) -> None:
    """Bring the database to (or check it at) the head revision and load the platform keys;
    then ``context.database_ready`` is set."""
    await prepare_database(context.database, context.settings)
    # Before any service hashes a token: the stored key survives master key rotation.
    await load_token_hash_key(context.database, context.keyring)
    context.database_ready.set()


def serves_without_database(context: AppContext) -> bool:
    """Whether every enabled service can serve with the database unreachable at start (the
    gateway: when it holds its last known good policy copy)."""
    return bool(context.services) and all(
        spec.serves_without_database is not None and spec.serves_without_database(context)
        for spec in context.services
    )


async def prepare_when_database_returns(context: AppContext) -> None:
    """In a process started without its database: prepare it (:func:`prepare_platform`) as
    soon as it answers, trying every :data:`DATABASE_RETRY_SECONDS`. An error that is not an
    outage (an old schema) is logged once each time it changes, and tried again too: the
    operator may migrate meanwhile."""
    last_problem: str | None = None
    while not context.database_ready.is_set():
        await asyncio.sleep(DATABASE_RETRY_SECONDS)
        try:
            await prepare_platform(context)
        except Exception as error:
            if unavailability_reason(error) is not None:
                continue
            problem = f"{type(error).__name__}: {error}"
            if problem != last_problem:
                log.error("keel.database.prepare_failed", error=problem)
                last_problem = problem
        else:
            log.info("keel.database.ready")


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
            await upgrade_schema(database)
    else:
        await ensure_schema_current(database)
    _PREPARED.add(url)


#: The platform's own background loops, run whichever services are enabled: change events
#: belong to every stream (secrets, config, flags), so their pruning belongs to none of them;
#: idempotency keys are kept by any service's writes.
PLATFORM_BACKGROUND: tuple[BackgroundTask, ...] = (
    prune_change_events_periodically,
    prune_idempotency_keys_periodically,
)


def background_work(context: AppContext) -> list[tuple[str, BackgroundTask]]:
    """What ``keel worker`` (and ``keel serve`` on the embedded default) runs in the
    background, each loop named ``<owner>-<function>``: the platform's, then each enabled
    service's."""
    work = [(f"platform-{task.__name__}", task) for task in PLATFORM_BACKGROUND]
    work += [
        (f"{spec.name}-{task.__name__}", task)
        for spec in context.services
        for task in spec.background
    ]
    return work
