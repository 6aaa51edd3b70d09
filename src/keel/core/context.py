"""What one Keel process shares (:class:`AppContext`) and what each service declares to it
(:class:`ServiceSpec`); :mod:`keel.core.lifecycle` builds and starts them.

The faces (``keel.app``'s ASGI app, the ``keel`` command, ``keel worker``) build one context
each; services receive it in their start-up hooks, background loops and request
dependencies. It lives in ``keel.core`` so that every layer can name it and none has to
import a face.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from fastapi import APIRouter

from keel.core.broadcast import Broadcast
from keel.core.crypto import Keyring, load_keyring
from keel.core.db import Database
from keel.core.lazy import import_named
from keel.core.metrics import Metrics
from keel.settings import Settings

T = TypeVar("T")


class ResourceKey(Generic[T]):
    """The typed name of a runtime object a service builds at start-up::

    AUTH_RESOURCE: ResourceKey[AuthService] = ResourceKey("auth")
    context.resources[AUTH_RESOURCE] = AuthService(...)  # in spec.startup
    auth = context.resources[AUTH_RESOURCE]  # an AuthService, for mypy too
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

    def __getitem__(self, key: ResourceKey[T]) -> T:
        found = self.get(key)
        if found is None:
            raise LookupError(f"{key.name} is not running in this process")
        return found

    def get(self, key: ResourceKey[T]) -> T | None:
        return cast("T | None", self._objects.get(key))

    def __contains__(self, key: object) -> bool:
        return key in self._objects


# -- Keel's own background tasks --------------------------------------------------------------
#
# A service names its tasks in its ``tasks.py`` and lists them in its spec
# (``ServiceSpec.tasks``); it enqueues one in the transaction of the change that calls for it
# (``keel.jobs.service.enqueue_task``), so the task exists if and only if the change
# committed. ``keel.jobs.runner`` claims and runs them in ``keel worker`` (and in
# ``keel serve`` on the embedded default), with the engine's leases, retries and dead letter
# queue::
#
#     async def deliver(context: AppContext, run: TaskRun, args: dict[str, Any]) -> Any:
#         ...  # raise RetryTask(reason, seconds) to run again later, DiscardTask to give up
#
#     DELIVER = PlatformTask("notify", "deliver", deliver, max_attempts=10, timeout_seconds=60)

#: The prefix of Keel's own queues: ``keel.<service>``.
PLATFORM_QUEUE_PREFIX = "keel."


@dataclass(frozen=True)
class TaskRun:
    """The attempt a handler runs: whose job it is, and which attempt of how many."""

    tenant_id: str
    job_id: str
    attempt: int
    max_attempts: int

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


TaskHandler = Callable[["AppContext", TaskRun, Any], Coroutine[Any, Any, Any]]


@dataclass(frozen=True)
class PlatformTask:
    """One kind of Keel's own background work: ``handler`` runs each job of it — the
    function, or its ``"module:function"`` name, imported when a job first runs (declaring
    a task then costs a process that never runs one nothing)."""

    service: str
    name: str
    handler: TaskHandler | str
    max_attempts: int = 10
    timeout_seconds: int = 60

    def resolve_handler(self) -> TaskHandler:
        """The handler itself, imported if it was given by name."""
        if not isinstance(self.handler, str):
            return self.handler
        handler: TaskHandler = import_named(self.handler)
        return handler

    @property
    def queue(self) -> str:
        """The service's queue: every task of a service shares one."""
        return f"{PLATFORM_QUEUE_PREFIX}{self.service}"

    @property
    def task_name(self) -> str:
        """The job's ``task``: ``<service>.<name>``."""
        return f"{self.service}.{self.name}"


class RetryTask(Exception):
    """Raised by a handler: this attempt failed, run the job again after ``seconds`` (the
    job's backoff when ``None``), or discard it if this was its last attempt."""

    def __init__(self, reason: str, seconds: float | None = None) -> None:
        super().__init__(reason)
        self.seconds = seconds


class DiscardTask(Exception):
    """Raised by a handler: the job can never succeed; it goes to the dead letter queue."""


ReadyCheck = Callable[["AppContext"], Coroutine[Any, Any, None]]
RouterFactory = Callable[[], APIRouter]
BackgroundTask = Callable[["AppContext"], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    #: Mounted at ``/<name>``; the router's own paths start with ``/v1/...``. A
    #: ``"module:function"`` name (:func:`~keel.core.lazy.import_named`) is imported and
    #: called on the first request under ``/<name>/`` or the first listing of every route
    #: (the OpenAPI document), not at start: see :class:`~keel.core.http.DeferredRouter`.
    router: RouterFactory | str | None = None
    #: Routes mounted at the root, for paths standards fix (``/.well-known/...``).
    root_router: RouterFactory | str | None = None
    #: The start every path of ``root_router`` shares (``/.well-known/``): the root router is
    #: then built on the first request under it, as ``router`` is; ``None``: at start.
    root_prefix: str | None = None
    ready_check: ReadyCheck | None = None
    #: Builds the service's runtime objects into ``context.resources`` before serving.
    startup: ReadyCheck | None = None
    #: Releases what ``startup`` built (connections, clients) when the process stops.
    shutdown: ReadyCheck | None = None
    #: Request body limits above ``KEEL_MAX_BODY_BYTES`` for some of its paths (relative to
    #: the mount: ``/v1/messages/batch``), from the settings.
    body_limits: Callable[[Settings], Mapping[str, int]] | None = None
    #: Long-running loops started by ``keel worker`` (and by ``keel serve`` on the
    #: embedded default, where there is no separate worker).
    background: Sequence[BackgroundTask] = field(default_factory=tuple)
    #: Loops every process serving the service runs alongside its requests (``keel serve``
    #: on any database), such as sequencing what those requests recorded.
    companions: Sequence[BackgroundTask] = field(default_factory=tuple)
    #: Modules with tables, for the migration history.
    model_modules: Sequence[str] = field(default_factory=tuple)
    #: The service's own background tasks (its ``tasks.py``), run on the jobs engine by
    #: ``keel.jobs.runner`` wherever background work runs.
    tasks: Sequence[PlatformTask] = field(default_factory=tuple)
    #: Whether the service can serve with the database unreachable at start (the gateway:
    #: from its last known good policy copy). A serving process whose every service says so
    #: starts without it; its start-up hook then finds ``context.database_ready`` unset.
    serves_without_database: Callable[[AppContext], bool] | None = None


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
    #: Set once the schema is checked and the platform keys loaded: at start, or later in a
    #: process that started without its database (``keel.core.lifecycle``).
    database_ready: asyncio.Event = field(default_factory=asyncio.Event)
    _keyring: Keyring | None = None

    @property
    def keyring(self) -> Keyring:
        """The master keyring, loaded on first use (missing key: :class:`MasterKeyError`)."""
        if self._keyring is None:
            self._keyring = load_keyring(self.settings)
        return self._keyring
