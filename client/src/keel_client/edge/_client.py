"""``EdgeClient``: the tenant's edge policy from Keel, held as an immutable snapshot and kept
current by the gateway's change stream.

::

    start() ── GET /gateway/v1/policy (If-None-Match: the local copy's revision)
            │     ├─ 200 / 304 ─▶ EdgeSnapshot(revision, policy, table) + the local copy
            │     ├─ a policy this SDK version cannot read ─▶ as if Keel were unreachable
            │     └─ unreachable ─▶ the local copy (a warning says so)
            └─ background task (keel_client._follower): watch_changes(GET .../policy/watch)
                 ├─ ready / reset ──────────────────────▶ GET policy (If-None-Match) ─▶ swap
                 └─ gateway {subject "policy", revision > current} ─▶ GET policy ─▶ swap
                      swap: one assignment of a new snapshot, then the callbacks, then the
                      local copy (a worker thread, latest only; aclose() waits for it)
                      a policy that fails validation: the snapshot stays, one error is logged

    snapshot ── an attribute read: never I/O, never a lock

The gateway's proxy follows every route (``service=None``). A service behind no gateway
passes its own pool name (``service="orders"``): it keeps the routes whose ``upstream``, or
one of whose ``versions``, names that pool, and matches them without looking at the host
(its own host is not the public one the routes list).

The local copy reuses the config SDK's atomic file writer (``keel_client.config``'s
``LocalCopy``: a temporary file renamed over the old one, mode 0600 in a 0700 directory). It
holds the whole policy as Keel gave it, so one file serves whichever ``service`` reads it.
Revision 0 (no policy written yet) is never saved: there is nothing to fall back to.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Self

import anyio
import httpx
from pydantic import SecretStr, ValidationError

from keel_client._env import as_auth, check_api_alone, env_settings
from keel_client._follower import SnapshotFollower
from keel_client.changes import MAX_RECONNECT_DELAY
from keel_client.config._snapshot import LocalCopy, LocalCopyError, Snapshot, changed_keys
from keel_client.edge._match import RouteTable
from keel_client.edge._model import EdgePolicy, Route
from keel_client.http import BaseAPIClient, ClientError, KeelHTTPError

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "EdgeChange",
    "EdgeChangeCallback",
    "EdgeClient",
    "EdgeError",
    "EdgeSnapshot",
    "EdgeUnavailable",
    "routes_for_service",
]

logger = logging.getLogger("keel_client.edge")

POLICY_PATH: Final = "/gateway/v1/policy"
WATCH_PATH: Final = "/gateway/v1/policy/watch"
#: The subject of a policy change on the ``gateway`` change stream.
POLICY_SUBJECT: Final = "policy"
#: The read permission the credential needs (named in errors).
READ_PERMISSION: Final = "gateway:policy:read"
#: How the local copy is filed (the config SDK's ``application`` and ``environment``).
_LOCAL_COPY_KIND: Final = ("gateway", "policy")
#: Seconds ``start()`` waits for the watch stream to open after the first load.
DEFAULT_START_TIMEOUT: Final = 10.0

#: Where the current snapshot came from: Keel, or the local copy (Keel was unreachable).
Source = Literal["server", "file"]


class EdgeError(KeelHTTPError):
    """Base of the edge client's errors (raised by ``start()`` only: a running client logs
    and keeps its snapshot). Keel refused the read (401, 403: the credential lacks
    ``gateway:policy:read``; 404: no gateway service).

    Example::

        try:
            await edge.start()
        except EdgeError as error:
            sys.exit(f"no edge policy: {error}")
    """

    default_code = "edge_error"


class EdgeUnavailable(EdgeError):
    """No policy at all: Keel was unreachable (or gave a policy this SDK version cannot
    read) and there is no usable local copy. ``reasons`` says why each source failed."""

    default_code = "edge_unavailable"

    def __init__(self, message: str, *, reasons: list[str], **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.reasons = reasons


class _UnreadablePolicy(KeelHTTPError):
    """Keel's answer holds no policy this SDK version can validate (a newer server, or not
    a policy at all); ``revision`` is the revision it claimed, when it said."""

    default_code = "edge_policy_unreadable"

    def __init__(self, message: str, *, revision: int | None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.revision = revision


def routes_for_service(routes: tuple[Route, ...] | list[Route], service: str) -> list[Route]:
    """The routes a service named ``service`` enforces itself: those whose ``upstream`` or
    one of whose ``versions`` names that pool (a route pointing elsewhere is not its own)."""
    return [
        route
        for route in routes
        if route.upstream == service or any(rule.upstream == service for rule in route.versions)
    ]


@dataclass(frozen=True, slots=True)
class EdgeSnapshot:
    """One revision of the edge policy, ready to enforce: ``policy`` is the policy this
    client enforces (the whole policy for the gateway; for a service, its own routes and
    every pool) and ``table`` its routes compiled for matching (for a service, without
    hosts). Immutable: a change makes a new snapshot."""

    revision: int
    policy: EdgePolicy
    table: RouteTable
    #: The tenant the policy belongs to (Keel says which): callers of any other tenant are
    #: refused by the middleware. ``None`` before the first policy.
    tenant_id: str | None = None

    @classmethod
    def build(
        cls, revision: int, policy: EdgePolicy, service: str | None, tenant_id: str | None = None
    ) -> EdgeSnapshot:
        """The snapshot of ``policy`` as the gateway (``service=None``) or as the service of
        that pool name sees it."""
        if service is None:
            return cls(revision, policy, RouteTable(policy.routes), tenant_id)
        # A subset of a valid policy's routes, every pool kept: references still resolve
        # and no two routes can newly tie, so there is nothing to validate again.
        own = policy.model_copy(update={"routes": routes_for_service(policy.routes, service)})
        return cls(revision, own, RouteTable(own.routes, ignore_hosts=True), tenant_id)


@dataclass(frozen=True, slots=True)
class EdgeChange:
    """What a change callback receives: the client moved from ``old_revision`` to the
    ``snapshot`` now in use; ``routes`` names the routes it enforces that were added, removed
    or changed, sorted. Revisions that came while it was catching up are coalesced."""

    old_revision: int
    snapshot: EdgeSnapshot
    routes: tuple[str, ...]

    @property
    def revision(self) -> int:
        return self.snapshot.revision


#: A change callback: sync or async, called with an :class:`EdgeChange`.
EdgeChangeCallback = Callable[[EdgeChange], Awaitable[None] | None]

#: The snapshot before any policy: revision 0, no routes (what Keel serves before a write).
_EMPTY_POLICY: Final = EdgePolicy()


def _changed_routes(before: RouteTable, after: RouteTable) -> tuple[str, ...]:
    """Names of the routes added, removed or changed between two tables, sorted."""
    return changed_keys(
        {route.name: route for route in before.routes},
        {route.name: route for route in after.routes},
    )


def _describe(error: ValidationError) -> str:
    """Where a policy failed validation, without the values (the first three errors)."""
    details = error.errors(include_input=False, include_url=False)
    described = [
        ".".join(str(part) for part in detail["loc"]) + f": {detail['msg']}"
        for detail in details[:3]
    ]
    more = f" (and {len(details) - 3} more)" if len(details) > 3 else ""
    return "; ".join(described) + more


def _tenant_of(document: Any) -> str | None:
    tenant = document.get("tenant_id") if isinstance(document, dict) else None
    return tenant if isinstance(tenant, str) and tenant else None


def parse_policy_document(document: Any) -> tuple[int, EdgePolicy]:
    """``(revision, policy)`` of a ``GET /gateway/v1/policy`` answer's JSON (also the local
    copy's content); :class:`_UnreadablePolicy` when it is not one this SDK can read."""
    if not isinstance(document, dict):
        raise _UnreadablePolicy("the answer is not a policy document", revision=None)
    revision = document.get("revision")
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise _UnreadablePolicy("the answer has no valid revision", revision=None)
    try:
        policy = EdgePolicy.model_validate(document.get("policy"))
    except ValidationError as error:
        raise _UnreadablePolicy(
            f"policy revision {revision} is not valid for this keel-client version "
            f"(a newer Keel? upgrade keel-client): {_describe(error)}",
            revision=revision,
        ) from None
    return revision, policy


class EdgeClient:
    """The tenant's edge policy from Keel, kept current by a background watch: what the
    gateway's proxy and ``use_keel_edge`` enforce.

    Example::

        edge = EdgeClient("https://keel.internal", auth=api_key, service="orders",
                          local_copy=Path("/var/cache/orders/edge.json"))
        await edge.start()          # or: async with EdgeClient(...) as edge:
        found = edge.snapshot.table.match(request.host, request.path, request.method)

        @edge.on_change
        def changed(change: EdgeChange) -> None:
            log.info("edge policy %d -> %d: %s", change.old_revision, change.revision,
                     change.routes)

        edge = EdgeClient.from_env(service="orders")     # KEEL_URL, KEEL_TOKEN
        edge = keel.edge.client(service="orders")        # on a Keel's shared pool

    ``service`` (a pool name) keeps that service's own routes, matched without hosts;
    ``None`` (the gateway) keeps every route. ``local_copy`` is a file for the last known
    good policy (``None``: none kept): written after each change, and read at start when
    Keel cannot be reached (a warning says so). :attr:`snapshot` never waits on the network.

    A policy Keel serves that this SDK version cannot validate (a newer server) is never
    installed: the client keeps its snapshot and logs one error for that revision. The
    credential needs ``gateway:policy:read``. Every other keyword argument is a
    ``BaseAPIClient`` option; or pass ``api=`` (e.g. a ``keel_client.Keel``'s shared client)
    instead of ``base_url``, ``auth`` and those options; the client then leaves it open.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        auth: str | SecretStr | httpx.Auth | None = None,
        api: BaseAPIClient | None = None,
        service: str | None = None,
        local_copy: str | os.PathLike[str] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        max_reconnect_delay: float = MAX_RECONNECT_DELAY,
        **options: Any,
    ) -> None:
        if service is not None and (not isinstance(service, str) or not service):
            raise ValueError("service is the name of an upstream pool, or None")
        self.service = service
        self._local = LocalCopy(Path(local_copy)) if local_copy is not None else None
        self._snapshot = EdgeSnapshot.build(0, _EMPTY_POLICY, service)
        self._source: Source | None = None
        #: The revision whose failed validation was logged (logged once, not on every read).
        self._rejected_revision: int | None = None
        self._start_timeout = start_timeout
        self._owns_api = api is None
        if api is None:
            options.setdefault("name", "EdgeClient")
            api = BaseAPIClient(base_url, auth=as_auth(auth), **options)
        else:
            check_api_alone(base_url, auth, options)
        #: The resilient HTTP client the reads and the watch go through.
        self.api = api
        self._follower: SnapshotFollower[EdgeChange, dict[str, Any]] = SnapshotFollower(
            self.api,
            WATCH_PATH,
            kind="edge",
            subject=POLICY_SUBJECT,
            version_key="revision",
            current_version=lambda: self._snapshot.revision,
            reload=self._reload,
            advance=lambda change: self._reload(),
            translate=self._translate,
            write=self._save if self._local is not None else None,
            logger=logger,
            max_reconnect_delay=max_reconnect_delay,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> EdgeClient:
        """A client for ``KEEL_URL`` authenticated with ``KEEL_TOKEN`` (an API key or token)."""
        url, token = env_settings(environ)
        options.setdefault("auth", token)
        return cls(url, **options)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- state ----------------------------------------------------------------------------

    @property
    def snapshot(self) -> EdgeSnapshot:
        """The policy in use (revision 0, no routes, before the first policy). No I/O."""
        return self._snapshot

    @property
    def revision(self) -> int:
        return self._snapshot.revision

    @property
    def loaded_from(self) -> Source | None:
        """``"server"`` once Keel gave or confirmed the policy; ``"file"`` while running on
        the local copy because Keel could not be reached; ``None`` before any policy."""
        return self._source

    @property
    def local_copy(self) -> Path | None:
        """Where the last known good policy is kept (``None``: nowhere)."""
        return self._local.path if self._local is not None else None

    def on_change(self, callback: EdgeChangeCallback) -> EdgeChangeCallback:
        """Have ``callback`` (sync or async; usable as a decorator) told of each snapshot
        swapped in, in the watch task, before the local copy is written. A callback that
        raises is logged; the snapshot stays in use and the other callbacks still run."""
        self._follower.callbacks.append(callback)
        return callback

    def remove_callback(self, callback: EdgeChangeCallback) -> None:
        self._follower.callbacks.remove(callback)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, *, require_policy: bool = True) -> Self:
        """Load the policy (from Keel, else the local copy) and start following changes.

        Returns once the watch stream is open (at most ``start_timeout`` seconds), so a
        change made after ``start()`` returns reaches this client. Raises :class:`EdgeError`
        when Keel refuses the read, :class:`EdgeUnavailable` when neither Keel nor the local
        copy has a policy; with ``require_policy=False`` it logs instead, holds revision 0
        (no routes) and keeps trying.
        """
        if self._follower.is_started:
            raise RuntimeError("this EdgeClient is already started")
        local, local_problem = await anyio.to_thread.run_sync(self._read_local)
        try:
            fetched = await self._fetch(local.revision if local is not None else None)
        except EdgeError as error:  # refused: 401, 403, 404
            if require_policy:
                raise
            logger.warning("keel edge: %s; retrying in the background", error.message)
            if local is not None:
                self._install(local, "file")
        except KeelHTTPError as error:  # unreachable, or a policy this SDK cannot read
            if isinstance(error, _UnreadablePolicy):
                self._note_rejected(error)
            if local is not None:
                logger.warning(
                    "keel edge: Keel's policy could not be read (%s); starting from the local "
                    "copy %s (revision %d)",
                    error.message,
                    self.local_copy,
                    local.revision,
                )
                self._install(local, "file")
            else:
                failure = self._unavailable(error, local_problem)
                if require_policy:
                    raise failure from error
                logger.warning("keel edge: %s; enforcing no routes until Keel answers", failure)
        else:
            if fetched is None:
                assert local is not None  # a 304 answers only a revalidation of the local copy
                self._install(local, "server")
            else:
                self._install(fetched[0], "server")
                await self._follower.save(fetched[1])
        self._follower.start()
        if self._source == "server":
            await self._follower.wait_until_following(self._start_timeout)
        return self

    async def aclose(self) -> None:
        """Stop following, wait until the local copy holds the latest policy, and close
        pooled connections (an ``api=`` it was given stays open). Safe to call twice."""
        await self._follower.aclose()
        if self._owns_api:
            await self.api.aclose()

    # -- internals ------------------------------------------------------------------------

    def _install(self, snapshot: EdgeSnapshot, source: Source) -> EdgeChange:
        """Swap in ``snapshot`` (one assignment: a reader sees the old one or the new one)."""
        old, self._snapshot = self._snapshot, snapshot
        self._source = source
        return EdgeChange(old.revision, snapshot, _changed_routes(old.table, snapshot.table))

    def _read_local(self) -> tuple[EdgeSnapshot | None, str | None]:
        """The local copy as a snapshot, or ``None`` and why it is unusable."""
        if self._local is None:
            return None, None
        try:
            copy = self._local.read(*_LOCAL_COPY_KIND)
            revision, policy = parse_policy_document(copy.values)
        except LocalCopyError as error:
            return None, str(error)
        except _UnreadablePolicy as error:
            return None, f"the local copy {self._local.path}: {error.message}"
        if revision != copy.revision:
            return None, f"the local copy {self._local.path} is inconsistent"
        return EdgeSnapshot.build(revision, policy, self.service, _tenant_of(copy.values)), None

    def _save(self, document: dict[str, Any]) -> None:
        """Write ``document`` (a policy answer) to the local copy, in a worker thread; a
        failure is logged, never raised (memory still serves)."""
        assert self._local is not None
        revision = int(document["revision"])
        if revision < 1:  # the empty policy before any write: nothing worth falling back to
            return
        try:
            self._local.write(Snapshot(*_LOCAL_COPY_KIND, revision, document))
        except OSError as error:
            logger.warning(
                "keel edge: could not write the local copy %s (%s: %s)",
                self._local.path,
                type(error).__name__,
                error.strerror or error,
            )

    async def _fetch(self, revision: int | None) -> tuple[EdgeSnapshot, dict[str, Any]] | None:
        """The policy from Keel as a snapshot and the answer's JSON; ``None`` when
        ``revision`` is current (304). :class:`_UnreadablePolicy` for a policy this SDK
        version cannot read."""
        headers = {"If-None-Match": f'"{revision}"'} if revision is not None else {}
        try:
            response = await self.api.get(POLICY_PATH, headers=headers)
        except ClientError as error:
            raise self._translate(error) from error
        if response.status_code == 304:
            return None
        try:
            document = response.json()
        except ValueError:
            document = None
        try:
            revision, policy = parse_policy_document(document)
        except _UnreadablePolicy as error:
            error.status = response.status_code
            error.request_id = response.headers.get("x-request-id")
            raise
        return EdgeSnapshot.build(revision, policy, self.service, _tenant_of(document)), document

    def _translate(self, error: ClientError) -> EdgeError:
        detail = error.detail or error.title or "refused"
        if error.status in (401, 403):
            message = (
                f"edge policy: permission denied (needs {READ_PERMISSION}, or the token is invalid)"
            )
        elif error.status == 404:
            message = f"edge policy: not found (is the gateway service enabled? {detail})"
        else:
            message = f"edge policy: read refused ({detail})"
        return EdgeError(
            message,
            status=error.status,
            code=error.code,
            request_id=error.request_id,
            method=error.method,
            url=error.url,
        )

    def _unavailable(self, error: KeelHTTPError, local_problem: str | None) -> EdgeUnavailable:
        reasons = [f"Keel: {error.message}"]
        if self._local is None:
            reasons.append("no local copy is kept (local_copy=None)")
        elif local_problem is not None:
            reasons.append(local_problem)
        return EdgeUnavailable(f"no edge policy: {'; '.join(reasons)}", reasons=reasons)

    def _note_rejected(self, error: _UnreadablePolicy) -> None:
        """Log a policy this SDK cannot read: once per revision (a reconnect reads it again)."""
        if error.revision is not None and error.revision == self._rejected_revision:
            return
        self._rejected_revision = error.revision
        logger.error("keel edge: %s; keeping revision %d", error.message, self._snapshot.revision)

    async def _reload(self) -> None:
        """Read the policy again (the follower's ``reload`` and ``advance``); swap it in if
        its revision differs."""
        try:
            fetched = await self._fetch(self._snapshot.revision if self._source else None)
        except _UnreadablePolicy as error:
            self._note_rejected(error)  # memory keeps serving the snapshot it has
            return
        if fetched is None:
            self._source = "server"
            return
        snapshot, document = fetched
        if snapshot.revision == self._snapshot.revision:
            # Confirmed (or, for a client that had none, revision 0: the empty policy it holds).
            self._source = "server"
            return
        # A client that started with no policy held revision 0 (no routes): taking its first
        # policy is a change of what it enforces, told to the callbacks like any other.
        await self._follower.publish(self._install(snapshot, "server"), document)
