"""``FlagsClient`` (async) and ``SyncFlagsClient``: an environment's flags, evaluated locally
on a snapshot kept current by the change stream.

::

    start() ── GET snapshot (If-None-Match: the local copy's version) ──┬─ 200/304 ─▶ store + file
                                                                       └─ unreachable ─▶ the file
            ├─ background task (keel_client._follower): watch_changes(GET .../watch)
            │    ├─ ready / reset ───────────────▶ GET snapshot (If-None-Match) ─▶ swap if newer
            │    └─ flags {version > current} ───▶ GET snapshot (If-None-Match) ─▶ swap if newer
            │         swap: only the changed flags are recompiled (FlagStore.with_changes);
            │         one assignment, then the callbacks, then the local copy (a worker
            │         thread, latest only; aclose() waits for it)
            └─ background task: events ─ POST /flags/v1/events in batches (see _events.py)

    is_enabled / variation / variation_detail ── FlagStore.evaluate on the current store:
        never I/O, never a lock, never raises

The local copy reuses the config SDK's atomic file writer (``keel_client.config``'s
``LocalCopy``: a temporary file renamed over the old one, mode 0600 in a 0700 directory).
"""

from __future__ import annotations

import logging
import os
import threading
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Self
from urllib.parse import quote

import anyio
import httpx
from pydantic import SecretStr

from keel_client._env import as_auth, check_api_alone, env_settings
from keel_client._follower import SnapshotFollower
from keel_client._loop_thread import LoopThread
from keel_client.changes import MAX_RECONNECT_DELAY
from keel_client.config._snapshot import LocalCopy, LocalCopyError, Snapshot, check_name
from keel_client.flags._engine import EvaluationDetail, FlagStore, ReasonKind
from keel_client.flags._events import EventBuffer, EventSender, EventStats
from keel_client.flags._exceptions import (
    FlagsError,
    FlagsNotFound,
    FlagsPermissionDenied,
    FlagsUnavailable,
)
from keel_client.flags._model import FlagType, is_number, now_ms, parse_timestamp_ms
from keel_client.http import (
    BaseAPIClient,
    ClientError,
    KeelHTTPError,
    ResponseValidationError,
)

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "FlagsChange",
    "FlagsChangeCallback",
    "FlagsClient",
    "SyncFlagsClient",
    "default_flags_cache_path",
]

logger = logging.getLogger("keel_client.flags")

API_PREFIX: Final = "/flags/v1"
#: The ``application`` under which the local copy is filed (the config SDK's file format).
_LOCAL_COPY_KIND: Final = "flags"
#: Seconds ``start()`` waits for the watch stream to open after the first load.
DEFAULT_START_TIMEOUT: Final = 10.0

#: Where the current snapshot came from: Keel, or the local copy (Keel was unreachable).
Source = Literal["server", "file"]


@dataclass(frozen=True, slots=True)
class FlagsChange:
    """What a change callback receives: the client moved from snapshot ``old_version`` to
    ``version``; ``keys`` are the flags and ``segments`` the segments whose JSON differs
    (added, removed or changed), sorted. Versions that came while the client was catching up
    are coalesced into one change."""

    environment: str
    old_version: int
    version: int
    keys: tuple[str, ...]
    segments: tuple[str, ...]


#: A change callback: sync or async, called with a :class:`FlagsChange`.
FlagsChangeCallback = Callable[[FlagsChange], Awaitable[None] | None]


def default_flags_cache_path(environment: str, environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/keel/flags/<env>.json`` (``~/.cache`` without the variable)."""
    environ = os.environ if environ is None else environ
    root = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "keel" / "flags" / f"{environment}.json"


def _value_type_of(default: Any) -> FlagType | None:
    """The flag type a caller's default asks for (``None``: any)."""
    if isinstance(default, bool):
        return "boolean"
    if isinstance(default, str):
        return "string"
    if is_number(default):
        return "number"
    if isinstance(default, dict | list):
        return "json"
    return None


def _changed(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """``{key: new value or None (removed)}`` for every key whose value differs."""
    changes: dict[str, Any] = {key: None for key in before.keys() - after.keys()}
    changes.update((key, value) for key, value in after.items() if before.get(key) != value)
    return changes


class FlagsClient:
    """An environment's feature flags, evaluated locally and kept current by a background
    watch; exposures, tracked events and evaluation counts sent to Keel in batches.

    Example::

        flags = FlagsClient("production", "https://keel.internal", auth=api_key)
        await flags.start()            # or: async with FlagsClient(...) as flags:
        user = {"key": "user-1", "email": "ana@corp.com"}
        if flags.is_enabled("checkout-v2", user):
            ...
        color = flags.variation("button-color", user, "blue")
        detail = flags.variation_detail("button-color", user, "blue")  # value, variation, reason
        flags.track("purchase", user, 12.5)

        flags = FlagsClient.from_env("production")        # KEEL_URL, KEEL_TOKEN

    ``start()`` reads the environment's snapshot, writes it to the local copy (``cache_path``,
    by default ``~/.cache/keel/flags/<env>.json``) and follows the watch stream, reconnecting
    with backoff and resuming without missing a change. A new snapshot is in use and the
    callbacks have run before its local copy is written (in a worker thread, within
    milliseconds); :meth:`aclose` waits for that write. When Keel cannot be reached at start
    the local copy is used (a warning is logged) and the client catches up once Keel answers.

    Evaluation never raises and never waits: any problem (not started, unknown flag, a value
    of the wrong type, a malformed flag or context) gives the caller's default, and
    :meth:`variation_detail` says why. The credential needs ``flags:<env>:read``.

    Every other keyword argument is a ``BaseAPIClient`` option; or pass ``api=`` (a
    ``BaseAPIClient`` for Keel, e.g. the one ``keel_client.Keel`` shares between its
    sub-clients: ``keel.flags.client(...)``) instead of ``base_url``, ``auth`` and those
    options; the client then leaves it open.
    """

    def __init__(
        self,
        environment: str,
        base_url: str | None = None,
        *,
        auth: str | SecretStr | httpx.Auth | None = None,
        api: BaseAPIClient | None = None,
        cache_path: str | os.PathLike[str] | None = None,
        persist: bool = True,
        send_events: bool = True,
        flush_interval: float = 5.0,
        batch_size: int = 500,
        max_queued_events: int = 10_000,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        max_reconnect_delay: float = MAX_RECONNECT_DELAY,
        **options: Any,
    ) -> None:
        self.environment = check_name("environment", environment)
        self._persist = persist
        self._local = LocalCopy(
            Path(cache_path) if cache_path is not None else default_flags_cache_path(environment)
        )
        base = f"{API_PREFIX}/envs/{quote(environment)}"
        self._snapshot_path = f"{base}/snapshot"
        self._watch_path = f"{base}/watch"
        self._store = FlagStore()
        self._document: dict[str, Any] | None = None
        self._version = 0
        self._etag: str | None = None
        self._source: Source | None = None
        #: Set once a snapshot is in memory; a thread (the OpenFeature provider) may wait on it.
        self.ready = threading.Event()
        self._start_timeout = start_timeout
        self._warned_not_started = False
        self._owns_api = api is None
        if api is None:
            options.setdefault("name", "FlagsClient")
            api = BaseAPIClient(base_url, auth=as_auth(auth), **options)
        else:
            check_api_alone(base_url, auth, options)
        #: The resilient HTTP client the reads, the watch and the events go through.
        self.api = api
        self._follower: SnapshotFollower[FlagsChange, dict[str, Any]] = SnapshotFollower(
            self.api,
            self._watch_path,
            kind="flags",
            subject=self.environment,
            version_key="version",
            current_version=lambda: self._version,
            reload=self._reload,
            advance=lambda change: self._reload(),
            translate=self._translate,
            write=self._save if persist else None,
            logger=logger,
            max_reconnect_delay=max_reconnect_delay,
        )
        self._events: EventBuffer | None = None
        self._sender: EventSender | None = None
        if send_events:
            self._events = EventBuffer(capacity=max_queued_events, batch_size=batch_size)
            self._sender = EventSender(
                self.api, environment, self._events, flush_interval=flush_interval
            )

    @classmethod
    def from_env(
        cls, environment: str, environ: Mapping[str, str] | None = None, **options: Any
    ) -> FlagsClient:
        """A client for ``KEEL_URL`` authenticated with ``KEEL_TOKEN`` (an API key or token)."""
        url, token = env_settings(environ)
        options.setdefault("auth", token)
        return cls(environment, url, **options)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- evaluation -----------------------------------------------------------------------

    def variation_detail(
        self,
        key: str,
        context: Mapping[str, Any],
        default: Any = None,
        *,
        value_type: FlagType | None = None,
    ) -> EvaluationDetail:
        """The value of flag ``key`` for ``context`` with its variation and reason.

        ``value_type`` (``"boolean"``, ``"string"``, ``"number"``, ``"json"``) makes a value
        of another type ``ERROR``/``WRONG_TYPE`` with ``default``. Never raises."""
        if not self._warned_not_started and self._source is None:
            self._warned_not_started = True
            logger.warning(
                "keel flags: %r evaluated before the client of %s has a snapshot "
                "(await start() first); serving defaults",
                key,
                self.environment,
            )
        try:
            detail = self._store.evaluate(key, context, default, value_type=value_type)
        except Exception as error:  # e.g. an unhashable key: still never raise
            logger.error("keel flags: evaluating %r failed (%s)", key, type(error).__name__)
            return FlagStore().evaluate("", {"key": ""}, default)
        events = self._events
        if events is not None and detail.reason.kind is not ReasonKind.ERROR:
            events.count(key)
            if detail.reason.in_experiment and detail.variation is not None:
                events.exposure(key, detail.variation, context["key"])
        return detail

    def variation(self, key: str, context: Mapping[str, Any], default: Any = None) -> Any:
        """The value of flag ``key`` for ``context``, or ``default``. The default's type is
        the type asked for: a value of another type gives ``default`` (``None`` or another
        type accepts any value)."""
        return self.variation_detail(
            key, context, default, value_type=_value_type_of(default)
        ).value

    def is_enabled(self, key: str, context: Mapping[str, Any], default: bool = False) -> bool:
        """Whether boolean flag ``key`` is on for ``context``; ``default`` on any problem."""
        value = self.variation_detail(key, context, default, value_type="boolean").value
        return value if isinstance(value, bool) else default

    def track(self, event: str, context: Mapping[str, Any], value: float | None = None) -> None:
        """Record a conversion ``event`` (with an optional numeric ``value``) for ``context``,
        sent with the next batch. Never raises: an invalid event is logged and dropped."""
        if self._events is None:
            return
        key = context.get("key") if isinstance(context, Mapping) else None
        if not isinstance(key, str) or not self._events.track(event, key, value):
            logger.warning(
                "keel flags: track(%r) dropped: needs an event name of 1-200 characters, "
                "a context with a string key and a finite number or None as value",
                event if isinstance(event, str) else type(event).__name__,
            )

    # -- state ----------------------------------------------------------------------------

    @property
    def store(self) -> FlagStore:
        """The compiled snapshot in use (empty before the first snapshot)."""
        return self._store

    @property
    def version(self) -> int:
        """The snapshot's version (0 before the first snapshot)."""
        return self._version

    @property
    def loaded_from(self) -> Source | None:
        """``"server"`` once Keel gave or confirmed the snapshot; ``"file"`` while running on
        the local copy because Keel could not be reached; ``None`` before any snapshot."""
        return self._source

    @property
    def cache_path(self) -> Path:
        """Where the local copy is kept."""
        return self._local.path

    def keys(self) -> list[str]:
        """The keys of the flags in the current snapshot."""
        return self._store.keys()

    def flag(self, key: str) -> Mapping[str, Any] | None:
        """The JSON of flag ``key`` in the current snapshot (read-only: do not change it)."""
        document = self._document
        flags = document.get("flags") if document is not None else None
        return flags.get(key) if isinstance(flags, dict) else None

    def served_by_rollout(self, key: str, detail: EvaluationDetail) -> bool:
        """Whether ``detail`` (of flag ``key``) came from a percentage rollout: the rule or the
        fallthrough (after the schedule) it names serves a ``rollout``."""
        flag = self.flag(key)
        reason = detail.reason
        if flag is None or detail.variation is None:
            return False
        try:
            if reason.kind is ReasonKind.RULE_MATCH and reason.rule_index is not None:
                return "rollout" in flag["rules"][reason.rule_index]["serve"]
            if reason.kind is ReasonKind.FALLTHROUGH:
                serve, moment = flag["fallthrough"], now_ms(None)
                steps = sorted(
                    (parse_timestamp_ms(step["at"]) or 0.0, step["fallthrough"])
                    for step in flag.get("schedule") or ()
                )
                for at, step in steps:
                    if at > moment:
                        break
                    serve = step
                return "rollout" in serve
        except (KeyError, IndexError, TypeError):
            return False
        return False

    @property
    def event_stats(self) -> EventStats:
        """Events sent, dropped and queued since the client started."""
        if self._events is None:
            return EventStats(0, 0, 0)
        return self._events.stats()

    def on_change(self, callback: FlagsChangeCallback) -> FlagsChangeCallback:
        """Call ``callback(change)`` (sync or async) after each new snapshot is in use (its
        local copy is written after the callbacks); returns it, so it also works as a
        decorator. Callbacks run one after the other in the watch task: keep them short. One
        that raises is logged and the others still run."""
        self._follower.callbacks.append(callback)
        return callback

    def remove_callback(self, callback: FlagsChangeCallback) -> None:
        self._follower.callbacks.remove(callback)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, *, require_snapshot: bool = True) -> Self:
        """Load the snapshot (from Keel, else the local copy), start following changes and
        sending events.

        Returns once the watch stream is open (at most ``start_timeout`` seconds), so a
        toggle made after ``start()`` returns reaches this client. Raises
        :class:`FlagsNotFound`, :class:`FlagsPermissionDenied`, or :class:`FlagsUnavailable`
        when neither Keel nor the local copy has a snapshot; with
        ``require_snapshot=False`` it logs instead, serves defaults and keeps trying.
        """
        if self._follower.is_started:
            raise RuntimeError("this FlagsClient is already started")
        local, local_problem = await anyio.to_thread.run_sync(self._read_local)
        try:
            fetched = await self._fetch(local[1] if local is not None else None)
        except FlagsError as error:  # refused: 404, 401, 403
            if require_snapshot:
                raise
            logger.warning("keel flags: %s; retrying in the background", error.message)
            if local is not None:
                self._install(local[0], local[1], "file")
        except KeelHTTPError as error:
            if local is not None:
                logger.warning(
                    "keel flags: %s unreachable (%s); starting from the local copy %s (version %d)",
                    self.environment,
                    error.message,
                    self._local.path,
                    local[0]["version"],
                )
                self._install(local[0], local[1], "file")
            else:
                failure = self._unavailable(error, local_problem)
                if require_snapshot:
                    raise failure from error
                logger.warning("keel flags: %s; serving defaults until Keel answers", failure)
        else:
            if fetched is None:
                assert local is not None  # a 304 answers only a revalidation of the local copy
                self._install(local[0], local[1], "server")
            else:
                self._install(*fetched, "server")
                await self._follower.save(fetched[0])
        self._follower.start()
        if self._sender is not None:
            self._sender.start()
        if self._source == "server":
            await self._follower.wait_until_following(self._start_timeout)
        return self

    async def flush(self) -> bool:
        """Send the queued events and evaluation counts now; ``False`` when Keel could not
        take them (they stay queued and go with a later batch)."""
        if self._sender is None:
            return True
        return await self._sender.flush()

    async def aclose(self, *, flush_timeout: float = 5.0) -> None:
        """Stop following, wait until the local copy holds the latest snapshot, send the
        events left (for at most ``flush_timeout`` seconds) and close pooled connections.
        The local copy stays; an ``api=`` it was given stays open."""
        await self._follower.aclose()
        if self._sender is not None:
            await self._sender.stop(flush_timeout=flush_timeout)
        if self._owns_api:
            await self.api.aclose()

    # -- internals ------------------------------------------------------------------------

    def _install(self, document: dict[str, Any], etag: str | None, source: Source) -> FlagsChange:
        """Swap in ``document``: only its changed flags and segments are compiled."""
        old, old_version = self._document, self._version
        if old is None or old.get("environment") != document.get("environment"):
            store = FlagStore(document)
            keys, segments = (
                sorted(document.get("flags") or ()),
                sorted(document.get("segments") or ()),
            )
        else:
            flags = _changed(old.get("flags") or {}, document.get("flags") or {})
            changed_segments = _changed(old.get("segments") or {}, document.get("segments") or {})
            store = self._store.with_changes(
                flags=flags, segments=changed_segments, version=document["version"]
            )
            keys, segments = sorted(flags), sorted(changed_segments)
        # One assignment each, store last but read first: an evaluation sees the old store or
        # the new one, never a mixture.
        self._document = document
        self._version = int(document["version"])
        self._etag = etag
        self._store = store
        self._source = source
        self.ready.set()
        return FlagsChange(
            self.environment, old_version, self._version, tuple(keys), tuple(segments)
        )

    def _read_local(self) -> tuple[tuple[dict[str, Any], str | None] | None, str | None]:
        """The local copy as ``(document, etag)``, or ``None`` and why it is unusable."""
        if not self._persist:
            return None, None
        try:
            copy = self._local.read(_LOCAL_COPY_KIND, self.environment)
            FlagStore(copy.values)  # a snapshot the engine cannot take is no snapshot
        except LocalCopyError as error:
            return None, str(error)
        except ValueError:
            return None, f"the local copy {self._local.path} holds no flag snapshot"
        if copy.values.get("version") != copy.revision:
            return None, f"the local copy {self._local.path} is inconsistent"
        return (copy.values, f'"{copy.revision}"'), None

    def _save(self, document: dict[str, Any]) -> None:
        """Write ``document`` to the local copy (in a worker thread); a failure is logged,
        never raised (memory still serves)."""
        version = int(document["version"])
        try:
            self._local.write(Snapshot(_LOCAL_COPY_KIND, self.environment, version, document))
        except OSError as error:
            logger.warning(
                "keel flags: could not write the local copy %s (%s: %s)",
                self._local.path,
                type(error).__name__,
                error.strerror or error,
            )

    async def _fetch(self, etag: str | None) -> tuple[dict[str, Any], str | None] | None:
        """The snapshot from Keel with its ETag; ``None`` when ``etag`` is current (304)."""
        headers = {"If-None-Match": etag} if etag is not None else {}
        try:
            response = await self.api.get(self._snapshot_path, headers=headers)
        except ClientError as error:
            raise self._translate(error) from error
        if response.status_code == 304:
            return None
        try:
            document = response.json()
            version = document["version"]
            FlagStore(document)
        except (ValueError, KeyError, TypeError) as error:
            raise ResponseValidationError(
                f"flags {self.environment}: the answer is not a flag snapshot",
                errors=[],
                status=response.status_code,
                request_id=response.headers.get("x-request-id"),
            ) from error
        if isinstance(version, bool) or not isinstance(version, int):
            raise ResponseValidationError(
                f"flags {self.environment}: the snapshot's version is not an integer",
                errors=[],
                status=response.status_code,
                request_id=response.headers.get("x-request-id"),
            )
        return document, response.headers.get("etag") or f'"{version}"'

    def _translate(self, error: ClientError) -> FlagsError:
        fields: dict[str, Any] = {
            "environment": self.environment,
            "status": error.status,
            "request_id": error.request_id,
            "method": error.method,
            "url": error.url,
        }
        detail = error.detail or error.title or "refused"
        if error.status == 404:
            return FlagsNotFound(f"flags {self.environment}: not found ({detail})", **fields)
        if error.status in (401, 403):
            return FlagsPermissionDenied(
                f"flags {self.environment}: permission denied (needs "
                f"flags:{self.environment}:read, or the token is invalid)",
                **fields,
            )
        return FlagsError(f"flags {self.environment}: read refused ({detail})", **fields)

    def _unavailable(self, error: KeelHTTPError, local_problem: str | None) -> FlagsUnavailable:
        reasons = [f"Keel: {error.message}"]
        if not self._persist:
            reasons.append("local copies are turned off (persist=False)")
        elif local_problem is not None:
            reasons.append(local_problem)
        return FlagsUnavailable(
            f"no flags for {self.environment}: {'; '.join(reasons)}",
            reasons=reasons,
            environment=self.environment,
        )

    async def _reload(self) -> None:
        fetched = await self._fetch(self._etag if self._document is not None else None)
        if fetched is None:
            self._source = "server"
            return
        document, etag = fetched
        if self._document is not None and int(document["version"]) == self._version:
            self._source, self._etag = "server", etag
            return
        had_snapshot = self._document is not None
        change = self._install(document, etag, "server")
        await self._follower.publish(change if had_snapshot else None, document)


class SyncFlagsClient:
    """The blocking face of :class:`FlagsClient`, for a service without an event loop (Flask,
    Django, a worker): the client runs on an event loop in a daemon thread of its own;
    evaluation reads the same in-memory store, without a lock.

    Example::

        flags = SyncFlagsClient("production", "https://keel.internal", auth=api_key).start()
        if flags.is_enabled("checkout-v2", {"key": user.id}):
            ...
        flags.close()

    Callbacks run on that thread. Takes the same arguments as :class:`FlagsClient`.
    """

    def __init__(self, environment: str, *args: Any, **kwargs: Any) -> None:
        self.client = FlagsClient(environment, *args, **kwargs)
        self._runner = LoopThread(f"keel-flags-{environment}")
        self._owns_runner = True
        self._is_started = False

    @classmethod
    def _on_runner(cls, client: FlagsClient, runner: LoopThread) -> Self:
        """The blocking face of ``client`` on a loop thread already running, which it leaves
        running (``keel_client.SyncKeel`` runs all its sub-clients on one)."""
        face = cls.__new__(cls)
        face.client, face._runner = client, runner
        face._owns_runner, face._is_started = False, False
        return face

    @classmethod
    def from_env(
        cls, environment: str, environ: Mapping[str, str] | None = None, **options: Any
    ) -> SyncFlagsClient:
        """A client for ``KEEL_URL`` authenticated with ``KEEL_TOKEN``."""
        url, token = env_settings(environ)
        options.setdefault("auth", token)
        return cls(environment, url, **options)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()

    @property
    def environment(self) -> str:
        return self.client.environment

    @property
    def version(self) -> int:
        return self.client.version

    @property
    def loaded_from(self) -> Source | None:
        return self.client.loaded_from

    @property
    def is_started(self) -> bool:
        return self._is_started and self._runner.is_running

    def variation_detail(
        self,
        key: str,
        context: Mapping[str, Any],
        default: Any = None,
        *,
        value_type: FlagType | None = None,
    ) -> EvaluationDetail:
        return self.client.variation_detail(key, context, default, value_type=value_type)

    def variation(self, key: str, context: Mapping[str, Any], default: Any = None) -> Any:
        return self.client.variation(key, context, default)

    def is_enabled(self, key: str, context: Mapping[str, Any], default: bool = False) -> bool:
        return self.client.is_enabled(key, context, default)

    def track(self, event: str, context: Mapping[str, Any], value: float | None = None) -> None:
        self.client.track(event, context, value)

    def on_change(self, callback: FlagsChangeCallback) -> FlagsChangeCallback:
        """See :meth:`FlagsClient.on_change`; the callback runs on the client's thread."""
        return self.client.on_change(callback)

    def flush(self, timeout: float = 10.0) -> bool:
        """See :meth:`FlagsClient.flush`."""
        if not self.is_started:
            return False
        return self._runner.call(self.client.flush(), timeout)

    def start(self, *, require_snapshot: bool = True) -> Self:
        """Start the thread and the client; see :meth:`FlagsClient.start`."""
        if self._is_started:
            raise RuntimeError("this SyncFlagsClient is already started")
        self._is_started = True
        if self._owns_runner:
            self._runner.start()
        try:
            self._runner.call(self.client.start(require_snapshot=require_snapshot))
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop following, write the latest local copy, send the events left, close
        connections and end the thread (a shared thread is left running)."""
        if not self.is_started:
            return
        self._is_started = False
        if self._owns_runner:
            self._runner.stop(self.client.aclose(), timeout=15)
        else:
            self._runner.call(self.client.aclose(), timeout=15)
