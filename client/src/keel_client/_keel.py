"""``Keel``: the SDK's front door, what a service creates once to talk to Keel.

One ``BaseAPIClient`` (``keel.api``) holds the connection pool, the circuit breaker per host,
the retry budget, the metrics and the credential (one token source); every sub-client is
built on it::

    Keel(url, credentials) ── api: BaseAPIClient (pool, breakers, budget, token source)
      ├─ .auth     AuthClient on api, sending no credential of its own (calls carry the user's)
      ├─ .secrets  SecretsClient(api=api)
      ├─ .audit    AuditAPI on api; .audit.recorder(spool_dir=...) ─▶ AuditClient(api=api)
      ├─ .config   .config.client(app, env) ─▶ ConfigClient(api=api)
      ├─ .flags    .flags.client(env) ─▶ FlagsClient(api=api)
      ├─ .jobs     JobsClient(api=api); .jobs.open_spool(dir) spools enqueues Keel cannot take
      ├─ .notify   NotifyClient(api=api): sends, recipients, preferences, status, inbox
      ├─ .storage  StorageClient(api=api), built on first use: buckets, uploads, downloads
      └─ .edge     .edge.client(service=...) ─▶ EdgeClient(api=api): the gateway's policy

Per-call ``RequestOptions`` (``timeout``, ``deadline``, ``max_retries``, ``idempotency_key``,
``request_id``) override the defaults given to ``Keel(...)``. ``aclose()`` closes what the
sub-clients handed out, then the pool. ``SyncKeel`` (``_sync_keel``) is the blocking face.
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Self

import httpx
from pydantic import SecretStr

from keel_client._env import ENV_CLIENT_ID, ENV_CLIENT_SECRET, as_auth, env_settings
from keel_client.audit import AuditAPI, AuditClient
from keel_client.auth import AuthClient, ServiceCredentials
from keel_client.config import ConfigClient
from keel_client.flags import FlagsClient
from keel_client.http import BaseAPIClient, ClientHealth
from keel_client.jobs import JobsClient
from keel_client.notify import NotifyClient
from keel_client.secrets import SecretsClient

if TYPE_CHECKING:
    from keel_client.edge._client import EdgeClient
    from keel_client.storage import StorageClient

__all__ = ["Credentials", "Keel", "KeelAudit", "KeelConfig", "KeelEdge", "KeelFlags"]

#: What ``Keel`` authenticates with: an API key or access token (sent as
#: ``Authorization: Bearer``), any ``httpx.Auth`` (``ServiceCredentials`` for a service
#: account's own, refreshed token), or ``None``.
Credentials = str | SecretStr | httpx.Auth | None


class KeelConfig:
    """``keel.config``: live configuration clients on the Keel's connection pool.

    Example::

        async with keel.config.client("billing", "production") as config:
            workers = config.get("workers", 4)
    """

    def __init__(self, keel: Keel) -> None:
        self._keel = keel

    def client(self, application: str, environment: str, **options: Any) -> ConfigClient:
        """A :class:`~keel_client.config.ConfigClient` of ``application`` in ``environment``
        on this Keel's pool, not started (``await client.start()`` or ``async with``).

        ``options`` are ``ConfigClient``'s own (``cache_path``, ``persist``,
        ``resolve_secrets``...), not HTTP options: those are the Keel's. The Keel closes it
        on :meth:`Keel.aclose` if it is still open."""
        client = ConfigClient(application, environment, api=self._keel.api, **options)
        self._keel._adopt(client.aclose)
        return client


class KeelFlags:
    """``keel.flags``: feature-flag clients on the Keel's connection pool.

    Example::

        async with keel.flags.client("production") as flags:
            if flags.is_enabled("checkout-v2", {"key": user_id}):
                ...
    """

    def __init__(self, keel: Keel) -> None:
        self._keel = keel

    def client(self, environment: str, **options: Any) -> FlagsClient:
        """A :class:`~keel_client.flags.FlagsClient` of ``environment`` on this Keel's pool,
        not started (``await client.start()`` or ``async with``).

        ``options`` are ``FlagsClient``'s own (``cache_path``, ``send_events``,
        ``flush_interval``...). The Keel closes it on :meth:`Keel.aclose` if still open."""
        client = FlagsClient(environment, api=self._keel.api, **options)
        self._keel._adopt(client.aclose)
        return client


class KeelEdge:
    """``keel.edge``: edge-policy clients (what the gateway and ``use_keel_edge`` enforce)
    on the Keel's connection pool.

    Example::

        async with keel.edge.client(service="orders", local_copy=cache_dir / "edge.json") as edge:
            found = edge.snapshot.table.match(host, path, method)
    """

    def __init__(self, keel: Keel) -> None:
        self._keel = keel

    def client(self, **options: Any) -> EdgeClient:
        """A :class:`~keel_client.edge.EdgeClient` on this Keel's pool, not started
        (``await client.start()`` or ``async with``).

        ``options`` are ``EdgeClient``'s own (``service``, ``local_copy``, ``start_timeout``...),
        not HTTP options: those are the Keel's. The Keel closes it on :meth:`Keel.aclose` if
        it is still open."""
        # Imported here: the policy's models are needed only by a service that enforces it.
        from keel_client.edge._client import EdgeClient

        client = EdgeClient(api=self._keel.api, **options)
        self._keel._adopt(client.aclose)
        return client


class KeelAudit(AuditAPI):
    """``keel.audit``: the audit API (:class:`~keel_client.audit.AuditAPI`) on the Keel's
    connection pool, and durable recorders built on it.

    Example::

        await keel.audit.register_action("billing.invoice.refund", description="Refund")
        async with keel.audit.recorder(spool_dir="/var/spool/billing-audit") as audit:
            audit.record("billing.invoice.refund", target=EventTarget("invoice", "42"))
    """

    _keel: Keel

    def recorder(self, *, spool_dir: str | os.PathLike[str], **options: Any) -> AuditClient:
        """An :class:`~keel_client.audit.AuditClient` spooling to ``spool_dir`` and sending
        through this pool, not started (``await recorder.start()`` or ``async with``).

        ``options`` are ``AuditClient``'s own (``batch_size``, ``fsync``, ``on_rejected``...).
        The Keel closes it on :meth:`Keel.aclose` if it is still open (which flushes)."""
        client = AuditClient(api=self, spool_dir=spool_dir, **options)
        self._keel._adopt(client.aclose)
        return client


class Keel:
    """Keel from a service: one connection pool, one breaker per host, one token source, and
    a sub-client per service (``.auth``, ``.secrets``, ``.audit``, ``.config``, ``.flags``,
    ``.jobs``, ``.notify``, ``.storage``, ``.edge``).

    Example::

        async with Keel("https://keel.internal", credentials=api_key) as keel:
            password = await keel.secrets.get("apps/billing/db", "password")
            principal = await keel.auth.me(user_token)
            await keel.audit.register_action("billing.invoice.refund", description="Refund")
            async with keel.config.client("billing", "production") as config:
                workers = config.get("workers", 4)
            async with keel.flags.client("production") as flags:
                flags.is_enabled("checkout-v2", {"key": "user-1"})
            await keel.jobs.enqueue("send_report", 42, queue="reports")
            await keel.notify.send_email(to="user@example.com", template="welcome",
                                         context={"name": "John"})

            # per-call options override the defaults given to Keel(...)
            await keel.secrets.get("apps/billing/db", timeout=2.0, max_retries=0)
            await keel.secrets.set("apps/billing/db", {"password": new},
                                   idempotency_key="rotate-2026-12-06")

        keel = Keel.from_env()      # KEEL_URL with KEEL_TOKEN, or KEEL_CLIENT_ID/SECRET

    ``credentials``: see :data:`Credentials`; the one token source every sub-client shares
    (a ``ServiceCredentials`` fetches its token once for all of them). Every other keyword
    argument is a ``BaseAPIClient`` option (``timeout``, ``deadline``, ``retry``,
    ``breaker``, ``transport``, ``limits``...): the defaults of every call. ``keel.auth``
    sends no credential of its own (its calls carry the user's tokens).

    The existing clients (``keel_client.secrets.SecretsClient(...)`` and the like) keep
    working alone, each with a pool of its own; ``Keel`` is for a service using several.
    """

    def __init__(
        self, url: str, credentials: Credentials = None, *, name: str = "Keel", **options: Any
    ) -> None:
        if "auth" in options:
            raise TypeError("Keel takes credentials=, not auth=")
        self.url = url
        #: The shared resilient client: its pool, breakers, budget, metrics and credential.
        self.api = BaseAPIClient(url, auth=as_auth(credentials), name=name, **options)
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._is_closed = False
        #: Login, refresh, logout and ``me`` (its calls carry the user's own tokens).
        self.auth = AuthClient._sharing(self.api, authenticate=False)
        #: Secrets, cached briefly in memory; dynamic credentials renewed in the background.
        self.secrets = SecretsClient(api=self.api)
        #: The audit API; ``.recorder(spool_dir=...)`` for durable, batched recording.
        self.audit = KeelAudit._sharing(self.api)
        self.audit._keel = self
        #: ``.client(application, environment)``: a live configuration client.
        self.config = KeelConfig(self)
        #: ``.client(environment)``: a feature-flags client, evaluated locally.
        self.flags = KeelFlags(self)
        #: Enqueue (``.open_spool(dir)``: spooled while Keel is unreachable), read, cancel.
        self.jobs = JobsClient(api=self.api)
        #: Send messages from templates; recipients, preferences, a message's status, inbox.
        self.notify = NotifyClient(api=self.api)
        #: ``.client(service=...)``: the edge policy, kept current (gateway, use_keel_edge).
        self.edge = KeelEdge(self)

    @functools.cached_property
    def storage(self) -> StorageClient:
        """Buckets, streamed uploads and downloads, presigned URLs, scan state
        (``keel_client.storage``, imported on first use)."""
        from keel_client.storage import StorageClient

        return StorageClient(api=self.api)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Self:
        """A Keel for ``KEEL_URL``, authenticated with ``KEEL_TOKEN`` (an API key or access
        token) or else with a service account's ``KEEL_CLIENT_ID`` and
        ``KEEL_CLIENT_SECRET`` (a :class:`~keel_client.auth.ServiceCredentials`, closed with
        the Keel); without either, unauthenticated. ``options`` as ``Keel`` takes them."""
        environ = os.environ if environ is None else environ
        url, token = env_settings(environ)
        if token is not None:
            return cls(url, token, **options)
        client_id = environ.get(ENV_CLIENT_ID, "").strip()
        client_secret = environ.get(ENV_CLIENT_SECRET, "").strip()
        if bool(client_id) != bool(client_secret):
            raise ValueError(f"{ENV_CLIENT_ID} and {ENV_CLIENT_SECRET} go together")
        if not client_id:
            return cls(url, None, **options)
        credentials = ServiceCredentials(
            url, client_id=client_id, client_secret=SecretStr(client_secret)
        )
        keel = cls(url, credentials, **options)
        keel._closers.append(credentials.aclose)
        return keel

    def health(self) -> ClientHealth:
        """Breaker state per host and the retry budget, shared by every sub-client."""
        return self.api.health()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every client the sub-clients handed out (config, flags, recorders: they
        stop following and flush), the jobs spool (a few seconds to drain; the rest stays on
        disk), stop renewing dynamic credentials, then close the pool.
        A second call does nothing."""
        if self._is_closed:
            return
        self._is_closed = True
        adopted, self._closers = self._closers, []
        try:
            for close in adopted:
                await close()
            await self.jobs.aclose()
            await self.secrets.aclose()
        finally:
            await self.api.aclose()

    def _adopt(self, close: Callable[[], Awaitable[None]]) -> None:
        """Close this with the Keel (before the pool). Sub-clients' own ``aclose`` may run
        first: each is safe to call twice."""
        if self._is_closed:
            raise RuntimeError("this Keel is closed")
        # Before any closer already there (owned credentials): those go last.
        self._closers.insert(0, close)
