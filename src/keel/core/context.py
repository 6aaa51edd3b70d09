"""What one Keel process shares: :class:`AppContext`, built by :func:`build_context` and
brought up by :func:`start_services`.

The faces (``keel.app``'s ASGI app, the ``keel`` command, ``keel worker``) build one context
each; services receive it in their start-up hooks, background loops and request
dependencies. It lives in ``keel.core`` so that every layer can name it and none has to
import a face.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast, overload

from sqlalchemy.engine import make_url

from keel.core.broadcast import Broadcast, InMemoryBroadcast
from keel.core.changes import prune_change_events_periodically, use_change_publisher
from keel.core.crypto import Keyring, load_keyring
from keel.core.db import Database
from keel.core.metrics import Metrics
from keel.core.schema import create_fresh, current_revision, ensure_schema_current, head_revision
from keel.core.schema import upgrade as upgrade_schema
from keel.core.sealed import load_token_hash_key
from keel.core.services import (
    BackgroundTask,
    ServiceSpec,
    ServiceUnavailableInBuild,
    available_services,
    load_service,
)
from keel.settings import Settings

T = TypeVar("T")


class ResourceKey(Generic[T]):
    """The typed name of a runtime object a service builds at start-up::

    AUTH_SERVICE: ResourceKey[AuthService] = ResourceKey("auth.service")
    context.resources[AUTH_SERVICE] = AuthService(...)  # in spec.startup
    auth = context.resources[AUTH_SERVICE]  # typed AuthService
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"ResourceKey({self.name!r})"


class Resources:
    """The runtime objects of a process, keyed by :class:`ResourceKey` so that each read is
    typed. A key a service did not set (the service is not enabled here) raises
    :class:`LookupError` from ``[]`` and gives ``None`` from :meth:`get`."""

    def __init__(self) -> None:
        self._objects: dict[ResourceKey[Any], Any] = {}

    def __setitem__(self, key: ResourceKey[T], value: T) -> None:
        self._objects[key] = value

    @overload
    def __getitem__(self, key: ResourceKey[T]) -> T: ...
    @overload
    def __getitem__(self, key: str) -> Any: ...
    def __getitem__(self, key: ResourceKey[T] | str) -> T | Any:
        found = self.get(key)
        if found is None:
            name = key if isinstance(key, str) else key.name
            raise LookupError(f"{name} is not running in this process")
        return found

    @overload
    def get(self, key: ResourceKey[T]) -> T | None: ...
    @overload
    def get(self, key: str) -> Any: ...
    def get(self, key: ResourceKey[T] | str) -> T | Any | None:
        """The object set under ``key``; a plain string looks it up by the key's name,
        untyped (tests and a debugger's shortcut: ``resources["audit"]``)."""
        if isinstance(key, str):
            return next((obj for k, obj in self._objects.items() if k.name == key), None)
        return cast("T | None", self._objects.get(key))

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return self.get(key) is not None
        return key in self._objects


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
    resources: Resources = field(default_factory=Resources)
    _keyring: Keyring | None = None

    @property
    def keyring(self) -> Keyring:
        """The master keyring, loaded on first use (missing key: :class:`MasterKeyError`)."""
        if self._keyring is None:
            self._keyring = load_keyring(self.settings)
        return self._keyring


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
            await upgrade_schema(database)
    else:
        await ensure_schema_current(database)
    _PREPARED.add(url)


#: The platform's own background loops, run whichever services are enabled: change events
#: belong to every stream (secrets, config, flags), so their pruning belongs to none of them.
PLATFORM_BACKGROUND: tuple[BackgroundTask, ...] = (prune_change_events_periodically,)


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
