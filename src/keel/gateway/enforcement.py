"""The tenant's edge policy held current in this process, compiled for enforcement.

::

    GatewayEnforcement.start(context)
      ├─ read the policy of KEEL_GATEWAY__TENANT (database) ─ unreachable, or not reached
      │  since the process started: the last known good copy on disk
      │  (KEEL_GATEWAY__POLICY_CACHE_PATH), and retry in the background
      ├─ compile: EdgeEnforcer (keel_client.edge, the code services run too)
      ├─ follow: the broadcast channel changes.<tenant>.gateway ─ on an event (or lost
      │  messages) read again; a newer revision is compiled and swapped in, then saved to disk
      └─ listeners: the proxy rebuilds its upstream pools on a swap

    Credentials are checked here, without a network hop: JWTs against the signing keys'
    JWKS read from the database (the auth service's verifier), API keys looked up by the
    auth service and kept for API_KEY_TTL seconds under a keyed hash.

The gateway's proxy, the ``auth_request``/``forwardAuth``/``ext_authz`` endpoint and the
rate-limit endpoint services call all read :attr:`GatewayEnforcement.enforcer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

from keel.auth.service import AuthService
from keel.core.broadcast import MessagesLost
from keel.core.changes import change_channel
from keel.core.context import AppContext, ResourceKey
from keel.core.db import DatabaseUnavailable
from keel.core.logging import get_logger
from keel.core.tenancy import get_tenant_by_slug
from keel.gateway.service.last_known_good import (
    load_last_known_good_entry,
    save_last_known_good,
)
from keel.gateway.service.policy import PolicySnapshot, current_revision, read_policy
from keel_client.auth import InvalidToken, Principal
from keel_client.edge._enforce import EdgeEnforcer
from keel_client.edge._model import EdgePolicy
from keel_client.edge._ratelimit import LimiterStore, MemoryLimiterStore, RedisLimiterStore

log = get_logger(__name__)

GATEWAY_ENFORCEMENT: ResourceKey[GatewayEnforcement] = ResourceKey("gateway.enforcement")
#: How long an API key's principal is reused before the auth service is asked again
#: (a revoked key stops working within this time, as with the SDK's introspection cache).
API_KEY_TTL = 30.0
API_KEY_CACHE_SIZE = 10_000
#: How often a replica that started from its local copy retries the database.
RETRY_SECONDS = 2.0
#: How often the revision is read when no change was broadcast (see ``_follow``).
POLL_SECONDS = 2.0


class InProcessAuthenticator:
    """``keel_client.edge.EdgeAuthenticator`` backed by this process's auth service."""

    def __init__(self, auth: AuthService, context: AppContext) -> None:
        self.auth = auth
        self.context = context
        self._secret = secrets.token_bytes(32)
        self._api_keys: dict[bytes, tuple[float, Principal | None]] = {}

    async def authenticate(self, credential: str) -> Principal:
        if not self.context.database_ready.is_set():
            # Started without the database: until its platform keys are loaded an API key's
            # hash would be the wrong one, and its refusal cached (the edge answers 503).
            raise DatabaseUnavailable("not reached since the process started")
        if not credential.startswith("keel_"):
            return await self.auth.verifier.verify(credential)
        digest = hashlib.blake2b(credential.encode(), key=self._secret, digest_size=32).digest()
        cached = self._api_keys.get(digest)
        now = time.monotonic()
        if cached is not None and now - cached[0] < API_KEY_TTL:
            principal = cached[1]
        else:
            async with self.context.database.session() as session:
                principal = await self.auth.api_keys.principal_for_api_key(session, credential)
            if len(self._api_keys) >= API_KEY_CACHE_SIZE:
                self._api_keys.clear()
            self._api_keys[digest] = (now, principal)
        if principal is None:
            raise InvalidToken("invalid_api_key", "the API key is invalid, expired or revoked")
        return principal


def create_limiter(context: AppContext) -> LimiterStore:
    """Redis when Keel has one (every replica counts together), else this process."""
    url = context.settings.redis_url
    if url is None:
        return MemoryLimiterStore()
    import redis.asyncio as redis  # only when configured: it costs start-up time
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # No client-side retries: redis-py's default (three, with backoff) would hold every
    # request for seconds during an outage, where each rule's fail mode should answer at once.
    client = redis.Redis.from_url(
        url.get_secret_value(),
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )
    return RedisLimiterStore(client)


class GatewayEnforcement:
    """The tenant's policy, compiled, kept current, and saved as the last known good copy."""

    def __init__(
        self, context: AppContext, *, authenticator: InProcessAuthenticator, limiter: LimiterStore
    ) -> None:
        self.context = context
        settings = context.settings.gateway
        self.tenant_slug = settings.tenant
        self.cache_path = settings.cache_path(context.settings.data_dir)
        self.authenticator = authenticator
        self.limiter = limiter
        self.tenant_id: str | None = None
        self.revision = -1
        self.enforcer = self._compile(EdgePolicy())
        self.from_local_copy = False
        #: Whether :meth:`start` has run (the policy loaded, or found absent).
        self.started = False
        self._started_event = asyncio.Event()
        self._listeners: list[Callable[[EdgePolicy], Any]] = []
        self._follower: asyncio.Task[None] | None = None

    def _compile(self, policy: EdgePolicy) -> EdgeEnforcer:
        # The key secret is the same in every replica (an HMAC of a fixed label under the
        # platform's token-hash key), so an API key's requests share one counter in Redis
        # whichever replica they reach; a per-process random secret counted them apart, N
        # replicas allowing N times the limit. Taken at each compile: a replica started
        # without its database loads the platform's key later, before its first read.
        return EdgeEnforcer(
            policy,
            authenticator=self.authenticator,
            limiter=self.limiter,
            tenant_id=self.tenant_id,
            key_secret=bytes.fromhex(self.context.keyring.token_hash("keel.gateway.limit-keys")),
        )

    @property
    def policy(self) -> EdgePolicy:
        return self.enforcer.policy

    def on_change(self, listener: Callable[[EdgePolicy], Any]) -> None:
        """Call ``listener(policy)`` after each swap (and not for the one in place now)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Load the policy, or the local copy; with neither (the database away, or the
        tenant not created yet) start empty, every request answered 404, and keep trying."""
        try:
            await self.reload()
        except Exception as error:
            if self._load_local_copy():
                log.warning(
                    "gateway.policy.local_copy",
                    path=str(self.cache_path),
                    error=type(error).__name__,
                )
            else:
                log.warning(
                    "gateway.policy.unavailable",
                    tenant=self.tenant_slug,
                    error=type(error).__name__,
                )
        self._follower = asyncio.create_task(self._follow(), name="gateway-policy-follower")
        self.started = True
        self._started_event.set()

    async def wait_started(self, timeout: float) -> bool:
        """Whether :meth:`start` has run, waiting up to ``timeout`` seconds for it (a
        decision asked for while the process starts waits for the policy, not a 404)."""
        if self.started:
            return True
        try:
            await asyncio.wait_for(self._started_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None

    async def reload(self) -> bool:
        """Read the policy; compile and swap it in if it is newer. Whether it was.

        The revision is read first (one small query): the poll that backs up the broadcast
        costs nothing more while the policy stays as it is. Nothing is read before the
        process's database is prepared (``context.database_ready``: the schema checked, the
        platform keys loaded), in a process that started without it."""
        if not self.context.database_ready.is_set():
            raise DatabaseUnavailable("not reached since the process started")
        async with self.context.database.session() as session:
            if self.tenant_id is None:
                tenant = await get_tenant_by_slug(session, self.tenant_slug)
                self.tenant_id = tenant.id
            revision, _ = await current_revision(session, self.tenant_id)
            if revision <= self.revision and not self.from_local_copy:
                return False
            snapshot = await read_policy(session, self.tenant_id)
        if snapshot.revision <= self.revision and not self.from_local_copy:
            return False
        self._swap(snapshot.revision, snapshot.policy)
        self.from_local_copy = False
        await asyncio.to_thread(self._save_local_copy, snapshot)
        return True

    def _swap(self, revision: int, policy: EdgePolicy) -> None:
        self.enforcer = self._compile(policy)
        self.revision = revision
        for listener in self._listeners:
            try:
                listener(policy)
            except Exception:
                log.exception("gateway.policy.listener_failed")
        log.info("gateway.policy.loaded", revision=revision, routes=len(policy.routes))

    async def _follow(self) -> None:
        # Started without the database: keel.core.lifecycle prepares it once it answers.
        await self.context.database_ready.wait()
        while self.tenant_id is None:  # started from the local copy; wait for the database
            await asyncio.sleep(RETRY_SECONDS)
            with contextlib.suppress(Exception):
                await self.reload()
        channel = change_channel(self.tenant_id, "gateway")
        while True:
            try:
                async with self.context.broadcast.subscribe(channel) as subscription:
                    await self._reload_quietly()  # what changed before we subscribed
                    while True:
                        # The broadcast carries the change at once; the poll is for writers
                        # it does not reach (another process on the embedded default, which
                        # has no Redis, or `keel gateway apply` run beside it).
                        with contextlib.suppress(MessagesLost, TimeoutError):
                            await subscription.get(timeout=POLL_SECONDS)
                        await self._reload_quietly()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gateway.policy.follow_failed")
                await asyncio.sleep(RETRY_SECONDS)

    async def _reload_quietly(self) -> None:
        for attempt in range(5):
            try:
                await self.reload()
                return
            except Exception as error:
                log.warning("gateway.policy.reload_failed", error=type(error).__name__)
                await asyncio.sleep(RETRY_SECONDS * (attempt + 1))

    # -- the last known good copy (keel.gateway.service.last_known_good) ------------------

    def _save_local_copy(self, snapshot: PolicySnapshot) -> None:
        try:
            save_last_known_good(
                self.cache_path, self.tenant_slug, snapshot, tenant_id=self.tenant_id
            )
        except OSError as error:
            log.warning("gateway.policy.save_failed", path=str(self.cache_path), error=str(error))

    def _load_local_copy(self) -> bool:
        entry = load_last_known_good_entry(self.cache_path, self.tenant_slug)
        if entry is None:
            return False
        snapshot, tenant_id = entry
        self.tenant_id = tenant_id
        self._swap(snapshot.revision, snapshot.policy)
        self.from_local_copy = True
        return True
