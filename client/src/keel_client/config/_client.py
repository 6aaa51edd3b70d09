"""``ConfigClient`` (async) and ``SyncConfigClient``: an environment's configuration, kept
current in memory.

::

    start() ── GET snapshot (If-None-Match: the local copy's revision) ──┬─ 200/304 ─▶ memory + file
                                                                        └─ unreachable ─▶ the file
            └─ background task (keel_client._follower): watch_changes(GET .../watch)
                 ├─ ready / reset ───────────────▶ GET snapshot (If-None-Match) ─▶ swap if newer
                 └─ config {revision > current} ─▶ apply the event's values when it carries
                                                   them, else GET snapshot ─▶ swap if newer
                      swap: the new dict, then the callbacks, then the file (a worker thread,
                      latest only; aclose() waits for it)

    get(key, default) ── a dict lookup: never I/O, never a lock

A snapshot read that fails while following (Keel went away between an event and the read)
is retried: the stream is reopened from before that event, so the event comes again.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, Self

import anyio
import httpx
from pydantic import SecretStr

from keel_client._env import as_auth, check_api_alone, env_settings
from keel_client._follower import SnapshotFollower
from keel_client._loop_thread import LoopThread
from keel_client.changes import MAX_RECONNECT_DELAY, Change
from keel_client.config._exceptions import ConfigError
from keel_client.config._snapshot import (
    ConfigChange,
    ConfigCore,
    Snapshot,
    Source,
    changed_keys,
)
from keel_client.http import (
    BaseAPIClient,
    ClientError,
    KeelHTTPError,
    SyncBaseAPIClient,
)

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "ChangeCallback",
    "ConfigClient",
    "SyncConfigClient",
    "load_snapshot",
]

logger = logging.getLogger("keel_client.config")

#: Seconds ``start()`` waits for the watch stream to open after the first load.
DEFAULT_START_TIMEOUT = 10.0

#: A change callback: sync or async, called with a :class:`ConfigChange`.
ChangeCallback = Callable[[ConfigChange], Awaitable[None] | None]


class _NotStarted(dict[str, Any]):
    """The values of a client not started yet: every read is a mistake, said loudly.

    A subclass so that ``get`` stays a bare ``dict.get`` once the client has started."""

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("ConfigClient.get before start(): await client.start() first")


class ConfigClient:
    """An environment's configuration from Keel, kept current in memory by a background watch.

    Example::

        config = ConfigClient("billing", "production", "https://keel.internal", auth=api_key)
        await config.start()            # or: async with ConfigClient(...) as config:
        workers = config.get("workers", 4)

        @config.on_change
        async def changed(change: ConfigChange) -> None:
            log.info("config %s -> %s: %s", change.old_revision, change.revision, change.keys)

        config = ConfigClient.from_env("billing", "production")    # KEEL_URL, KEEL_TOKEN

    ``start()`` reads the snapshot, writes it to the local copy (``cache_path``, by default
    ``~/.cache/keel/config/<app>-<env>.json``) and follows the environment's watch stream in
    a background task, reconnecting with backoff and resuming without missing a revision.
    A new revision is in memory and the callbacks have run before its local copy is written
    (in a worker thread, within milliseconds); :meth:`aclose` waits for that write.
    When Keel cannot be reached at start, the local copy is used (a warning is logged) and
    the client catches up once Keel answers; with neither, :class:`ConfigUnavailable`.

    :meth:`get` is a dict lookup on the current snapshot: it never waits on the network.
    Values are shared, not copied: treat them as read-only. Secret references
    (``{"$secret": "..."}``) are returned as stored unless ``resolve_secrets=True``, which
    asks Keel to replace those the caller may read by their values; such snapshots are never
    written to disk (so there is no local copy to start from), and a secret's rotation makes
    no new revision (read it again, or use ``keel_client.secrets``).

    ``persist=False`` keeps no local copy. Every other keyword argument is a
    ``BaseAPIClient`` option (timeouts, retries, ``transport``...); the resilient client is
    :attr:`api`. Or pass ``api=`` (a ``BaseAPIClient`` for Keel, e.g. the one
    ``keel_client.Keel`` shares between its sub-clients: ``keel.config.client(...)``) instead
    of ``base_url``, ``auth`` and those options; the client then leaves it open.
    """

    def __init__(
        self,
        application: str,
        environment: str,
        base_url: str | None = None,
        *,
        auth: str | SecretStr | httpx.Auth | None = None,
        api: BaseAPIClient | None = None,
        cache_path: str | os.PathLike[str] | None = None,
        persist: bool = True,
        resolve_secrets: bool = False,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        max_reconnect_delay: float = MAX_RECONNECT_DELAY,
        **options: Any,
    ) -> None:
        self._core = ConfigCore(
            application,
            environment,
            cache_path=cache_path,
            persist=persist,
            resolve_secrets=resolve_secrets,
        )
        self._snapshot: Snapshot | None = None
        self._values: dict[str, Any] = _NotStarted()
        self._source: Source | None = None
        self._start_timeout = start_timeout
        self._owns_api = api is None
        if api is None:
            options.setdefault("name", "ConfigClient")
            api = BaseAPIClient(base_url, auth=as_auth(auth), **options)
        else:
            check_api_alone(base_url, auth, options)
        #: The resilient HTTP client the reads and the watch go through.
        self.api = api
        self._follower: SnapshotFollower[ConfigChange, Snapshot] = SnapshotFollower(
            self.api,
            self._core.watch_path,
            kind="config",
            subject=self._core.subject,
            version_key="revision",
            current_version=lambda: self.revision,
            reload=self._reload,
            advance=self._advance,
            translate=self._core.translate,
            write=self._core.save if self._core.persist else None,
            logger=logger,
            max_reconnect_delay=max_reconnect_delay,
        )

    @classmethod
    def from_env(
        cls,
        application: str,
        environment: str,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> ConfigClient:
        """A client for ``KEEL_URL`` authenticated with ``KEEL_TOKEN`` (an API key or token)."""
        url, token = env_settings(environ)
        options.setdefault("auth", token)
        return cls(application, environment, url, **options)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- reading --------------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` in the current snapshot, or ``default``. No I/O, no lock."""
        return self._values.get(key, default)

    @property
    def values(self) -> Mapping[str, Any]:
        """The current snapshot's values (read-only view)."""
        return MappingProxyType(self._values)

    @property
    def revision(self) -> int:
        """The current snapshot's revision (0 before ``start()``)."""
        return self._snapshot.revision if self._snapshot is not None else 0

    @property
    def loaded_from(self) -> Source | None:
        """``"server"`` once Keel gave or confirmed the snapshot; ``"file"`` while running on
        the local copy because Keel could not be reached."""
        return self._source

    @property
    def application(self) -> str:
        return self._core.application

    @property
    def environment(self) -> str:
        return self._core.environment

    @property
    def cache_path(self) -> os.PathLike[str]:
        """Where the local copy is kept."""
        return self._core.local.path

    def on_change(self, callback: ChangeCallback) -> ChangeCallback:
        """Call ``callback(change)`` (sync or async) after each new snapshot is in memory
        (its local copy is written after the callbacks); returns it, so it also works as a
        decorator. Callbacks run one after the other in the watch task: keep them short
        (start a task for long work). One that raises is logged and the others still run."""
        self._follower.callbacks.append(callback)
        return callback

    def remove_callback(self, callback: ChangeCallback) -> None:
        self._follower.callbacks.remove(callback)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> Self:
        """Load the snapshot (from Keel, else the local copy) and start following changes.

        Returns once the watch stream is open (at most ``start_timeout`` seconds; a slower
        stream is still followed), so a write made after ``start()`` returns reaches this
        client. Raises :class:`ConfigNotFound`, :class:`ConfigPermissionDenied`, or
        :class:`ConfigUnavailable` when neither Keel nor the local copy has a snapshot.
        """
        if self._follower.is_started:
            raise RuntimeError("this ConfigClient is already started")
        local, local_problem = await anyio.to_thread.run_sync(self._core.load_local)
        try:
            fetched = await self._fetch(local)
        except ConfigError:
            raise
        except KeelHTTPError as error:
            if local is None:
                raise self._core.unavailable(error, local_problem) from error
            logger.warning(
                "keel config: %s/%s unreachable (%s); starting from the local copy %s "
                "(revision %d)",
                self.application,
                self.environment,
                error.message,
                self._core.local.path,
                local.revision,
            )
            self._install(local, "file")
        else:
            if local_problem is not None and local is None and self._core.local.path.exists():
                logger.warning("keel config: %s; it is replaced", local_problem)
            snapshot = fetched if fetched is not None else local
            if snapshot is None:  # a 304 answers only a revalidation of the local copy
                raise RuntimeError("Keel answered 304 to a read that was not a revalidation")
            self._install(snapshot, "server")
            if fetched is not None:
                await self._follower.save(fetched)
        self._follower.start()
        if self._source == "server":
            await self._follower.wait_until_following(self._start_timeout)
        return self

    async def aclose(self) -> None:
        """Stop following, wait until the local copy holds the latest snapshot, and close
        pooled connections (the local copy stays; an ``api=`` it was given stays open)."""
        await self._follower.aclose()
        if self._owns_api:
            await self.api.aclose()

    # -- internals ------------------------------------------------------------------------

    def _install(self, snapshot: Snapshot, source: Source) -> None:
        # One assignment each: a reader sees the old dict or the new one, never a mixture.
        self._snapshot = snapshot
        self._values = snapshot.values
        self._source = source

    async def _fetch(self, current: Snapshot | None) -> Snapshot | None:
        """The snapshot from Keel; ``None`` when ``current`` is still current (304)."""
        headers, params = self._core.request(current)
        try:
            response = await self.api.get(self._core.snapshot_path, headers=headers, params=params)
        except ClientError as error:
            raise self._core.translate(error) from error
        if response.status_code == 304:
            return None
        return self._core.parse(response)

    async def _reload(self) -> None:
        fetched = await self._fetch(self._snapshot)
        if fetched is None:
            self._source = "server"
            return
        await self._swap(fetched)

    async def _advance(self, change: Change) -> None:
        """A newer revision's event: applied from its values when it carries them (small
        change sets do) and follows the current revision directly; otherwise read."""
        applied = self._applied(change.data)
        if applied is None:
            await self._reload()
        else:
            # Only the keys of the change set can differ: compare those, not every key.
            await self._swap(applied, among=[*change.data["set"], *change.data["unset"]])

    def _applied(self, event: dict[str, Any]) -> Snapshot | None:
        """The next revision built from its event; ``None`` when the event cannot give it."""
        old = self._snapshot
        values, unset = event.get("set"), event.get("unset")
        if (
            old is None
            or self._core.resolve_secrets  # the event holds references, not resolved values
            or event.get("revision") != old.revision + 1
            or not isinstance(values, dict)
            or not isinstance(unset, list)
        ):
            return None
        merged = {**old.values, **values}
        for key in unset:
            merged.pop(key, None)
        return Snapshot(old.application, old.environment, old.revision + 1, merged)

    async def _swap(self, new: Snapshot, among: list[str] | None = None) -> None:
        """Make ``new`` current, then the callbacks (for a new revision), then the file;
        ``among``: the only keys that may have changed (all when ``None``)."""
        old = self._snapshot
        self._install(new, "server")
        change = None
        if old is not None and old.revision != new.revision:
            change = ConfigChange(
                self.application,
                self.environment,
                old.revision,
                new.revision,
                changed_keys(old.values, new.values, among),
            )
        await self._follower.publish(change, new)


class SyncConfigClient:
    """The blocking face of :class:`ConfigClient`, for a service without an event loop
    (Flask, Django, a worker): the client runs on an event loop in a daemon thread of its
    own; :meth:`get` reads the same in-memory snapshot, without a lock.

    Example::

        config = SyncConfigClient("billing", "production", "https://keel.internal",
                                  auth=api_key).start()
        workers = config.get("workers", 4)
        config.on_change(lambda change: log.info("config now %d", change.revision))
        ...
        config.close()

    Callbacks run on that thread. Takes the same arguments as :class:`ConfigClient`.
    """

    def __init__(self, application: str, environment: str, *args: Any, **kwargs: Any) -> None:
        self._client = ConfigClient(application, environment, *args, **kwargs)
        self._runner = LoopThread(f"keel-config-{application}-{environment}")
        self._owns_runner = True
        self._is_started = False

    @classmethod
    def _on_runner(cls, client: ConfigClient, runner: LoopThread) -> Self:
        """The blocking face of ``client`` on a loop thread already running, which it leaves
        running (``keel_client.SyncKeel`` runs all its sub-clients on one)."""
        face = cls.__new__(cls)
        face._client, face._runner = client, runner
        face._owns_runner, face._is_started = False, False
        return face

    @classmethod
    def from_env(
        cls,
        application: str,
        environment: str,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> SyncConfigClient:
        """A client for ``KEEL_URL`` authenticated with ``KEEL_TOKEN``."""
        url, token = env_settings(environ)
        options.setdefault("auth", token)
        return cls(application, environment, url, **options)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` in the current snapshot, or ``default``. No I/O, no lock."""
        return self._client.get(key, default)

    @property
    def values(self) -> Mapping[str, Any]:
        return self._client.values

    @property
    def revision(self) -> int:
        return self._client.revision

    @property
    def loaded_from(self) -> Source | None:
        return self._client.loaded_from

    @property
    def application(self) -> str:
        return self._client.application

    @property
    def environment(self) -> str:
        return self._client.environment

    def on_change(self, callback: ChangeCallback) -> ChangeCallback:
        """See :meth:`ConfigClient.on_change`; the callback runs on the client's thread."""
        return self._client.on_change(callback)

    def start(self) -> Self:
        """Start the thread and the client; see :meth:`ConfigClient.start`."""
        if self._is_started:
            raise RuntimeError("this SyncConfigClient is already started")
        self._is_started = True
        if self._owns_runner:
            self._runner.start()
        try:
            self._runner.call(self._client.start())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop following, write the latest local copy, close connections and end the
        thread (a shared thread is left running)."""
        if not self._is_started or not self._runner.is_running:
            return
        self._is_started = False
        if self._owns_runner:
            self._runner.stop(self._client.aclose(), timeout=10)
        else:
            self._runner.call(self._client.aclose(), timeout=10)


def load_snapshot(
    application: str,
    environment: str,
    base_url: str | None = None,
    *,
    auth: str | SecretStr | httpx.Auth | None = None,
    cache_path: str | os.PathLike[str] | None = None,
    persist: bool = True,
    resolve_secrets: bool = False,
    **options: Any,
) -> tuple[Snapshot, Source]:
    """One blocking read of the snapshot (what a settings class needs at start-up), written
    to the local copy; the local copy when Keel cannot be reached (a warning is logged).

    Raises as :meth:`ConfigClient.start` does. Without ``base_url`` it reads ``KEEL_URL`` and
    ``KEEL_TOKEN``.
    """
    core = ConfigCore(
        application,
        environment,
        cache_path=cache_path,
        persist=persist,
        resolve_secrets=resolve_secrets,
    )
    if base_url is None:
        base_url, token = env_settings()
        auth = token if auth is None else auth
    local, local_problem = core.load_local()
    headers, params = core.request(local)
    options.setdefault("name", "ConfigSnapshot")
    with SyncBaseAPIClient(base_url, auth=as_auth(auth), **options) as api:
        try:
            response = api.get(core.snapshot_path, headers=headers, params=params)
        except ClientError as error:
            raise core.translate(error) from error
        except KeelHTTPError as error:
            if local is None:
                raise core.unavailable(error, local_problem) from error
            logger.warning(
                "keel config: %s unreachable (%s); using the local copy %s (revision %d)",
                core.subject,
                error.message,
                core.local.path,
                local.revision,
            )
            return local, "file"
    if response.status_code == 304 and local is not None:
        return local, "server"
    snapshot = core.parse(response)
    core.save(snapshot)
    return snapshot, "server"
