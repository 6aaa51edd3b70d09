"""``SyncKeel``: the blocking face of ``Keel``, for a service without an event loop.

One ``Keel`` runs on an event loop in a daemon thread (``LoopThread``); every sub-client of
the face calls the same async sub-client there, so a ``SyncKeel`` too has one connection
pool, one breaker per host and one token source, and no logic of its own::

    SyncKeel ── LoopThread ── Keel (api: the pool)
      ├─ .auth / .secrets / .audit   each call: runner.call(keel.<service>.<call>(...))
      ├─ .jobs                       SyncJobsClient: each call runs keel.jobs.<call>(...) there
      ├─ .notify                     SyncNotifyClient: each call runs keel.notify.<call>(...) there
      ├─ .storage                    SyncStorageClient (built on first use), the same way
      └─ .config.client / .flags.client / .audit.recorder
                                     SyncConfigClient / SyncFlagsClient / SyncAuditClient
                                     on the same thread (it stays up until SyncKeel.close())
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self, TypeVar, Unpack

from pydantic import SecretStr

from keel_client._keel import Credentials, Keel, KeelAudit
from keel_client._loop_thread import LoopThread
from keel_client.audit import (
    BatchReceipts,
    EventPage,
    Sensitivity,
    SyncAuditClient,
    TransactionFields,
    TransactionReceipt,
    build_transaction,
)
from keel_client.auth import AuthClient, Principal, TokenSet
from keel_client.config import SyncConfigClient
from keel_client.flags import SyncFlagsClient
from keel_client.http import ClientHealth, RequestOptions
from keel_client.jobs import SyncJobsClient
from keel_client.notify import SyncNotifyClient
from keel_client.secrets import SecretCache, SecretsClient

if TYPE_CHECKING:
    from keel_client.storage import SyncStorageClient

__all__ = ["SyncKeel", "SyncKeelAudit", "SyncKeelAuth", "SyncKeelConfig", "SyncKeelFlags",
           "SyncKeelSecrets"]  # fmt: skip

T = TypeVar("T")

#: Seconds ``close()`` gives the Keel to close what it handed out and its pool.
CLOSE_TIMEOUT = 30.0


async def _run(function: Callable[[], T]) -> T:
    """``function()`` as a coroutine: a plain call made on the loop's thread."""
    return function()


class SyncKeelAuth:
    """``SyncKeel.auth``: :class:`~keel_client.auth.AuthClient`'s calls, blocking."""

    def __init__(self, client: AuthClient, runner: LoopThread) -> None:
        self._client, self._runner = client, runner

    def login(
        self,
        username: str,
        password: str | SecretStr,
        tenant: str = "default",
        totp_code: str | SecretStr | None = None,
        **options: Unpack[RequestOptions],
    ) -> TokenSet:
        """See :meth:`AuthClient.login`."""
        return self._runner.call(
            self._client.login(username, password, tenant, totp_code, **options)
        )

    def refresh(
        self, refresh_token: str | SecretStr, **options: Unpack[RequestOptions]
    ) -> TokenSet:
        """See :meth:`AuthClient.refresh`."""
        return self._runner.call(self._client.refresh(refresh_token, **options))

    def logout(self, access_token: str | SecretStr, **options: Unpack[RequestOptions]) -> None:
        """See :meth:`AuthClient.logout`."""
        self._runner.call(self._client.logout(access_token, **options))

    def me(self, token: str | SecretStr, **options: Unpack[RequestOptions]) -> Principal:
        """See :meth:`AuthClient.me`."""
        return self._runner.call(self._client.me(token, **options))


class SyncKeelSecrets:
    """``SyncKeel.secrets``: :class:`~keel_client.secrets.SecretsClient`'s calls, blocking
    (the same cache; dynamic credentials, renewed by a task, are on the async face)."""

    def __init__(self, client: SecretsClient, runner: LoopThread) -> None:
        self._client, self._runner = client, runner

    @property
    def cache(self) -> SecretCache:
        return self._client.cache

    def get(
        self,
        path: str,
        key: str | None = None,
        *,
        mount: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> Any:
        """See :meth:`SecretsClient.get`."""
        return self._runner.call(self._client.get(path, key, mount=mount, **options))

    def get_many(
        self, paths: Iterable[str], *, mount: str | None = None, **options: Unpack[RequestOptions]
    ) -> dict[str, dict[str, Any]]:
        """See :meth:`SecretsClient.get_many`."""
        return self._runner.call(self._client.get_many(list(paths), mount=mount, **options))

    def set(
        self,
        path: str,
        data: Mapping[str, Any],
        *,
        cas: int | None = None,
        mount: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> int:
        """See :meth:`SecretsClient.set`."""
        return self._runner.call(self._client.set(path, data, cas=cas, mount=mount, **options))

    def invalidate(self, path: str, *, mount: str | None = None) -> None:
        """See :meth:`SecretsClient.invalidate`."""
        self._runner.call(_run(lambda: self._client.invalidate(path, mount=mount)))

    def clear_cache(self) -> None:
        self._runner.call(_run(self._client.clear_cache))


class SyncKeelAudit:
    """``SyncKeel.audit``: :class:`~keel_client.audit.AuditAPI`'s calls, blocking, and
    durable recorders (:class:`~keel_client.audit.SyncAuditClient`) on the same thread."""

    def __init__(self, api: KeelAudit, runner: LoopThread) -> None:
        self._api, self._runner = api, runner

    def register_action(
        self,
        action: str,
        *,
        description: str,
        category: str = "change",
        sensitivity: Sensitivity | str = Sensitivity.INTERNAL,
        sensitive_fields: Sequence[str] = (),
        **options: Unpack[RequestOptions],
    ) -> None:
        """See :meth:`AuditAPI.register_action`."""
        self._runner.call(
            self._api.register_action(
                action,
                description=description,
                category=category,
                sensitivity=sensitivity,
                sensitive_fields=sensitive_fields,
                **options,
            )
        )

    def send_events(
        self, events: Sequence[Mapping[str, Any]], **options: Unpack[RequestOptions]
    ) -> BatchReceipts:
        """See :meth:`AuditAPI.send_events`."""
        return self._runner.call(self._api.send_events(events, **options))

    def record_transaction(self, **fields: Unpack[TransactionFields]) -> TransactionReceipt:
        """See :meth:`AuditAPI.record_transaction`."""
        build_transaction(**fields)  # a float amount fails here, on the caller's thread
        return self._runner.call(self._api.record_transaction(**fields))

    def list_events(
        self,
        *,
        action: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> EventPage:
        """See :meth:`AuditAPI.list_events`."""
        return self._runner.call(
            self._api.list_events(action=action, limit=limit, cursor=cursor, **options)
        )

    def recorder(self, *, spool_dir: str | os.PathLike[str], **options: Any) -> SyncAuditClient:
        """A :class:`~keel_client.audit.SyncAuditClient` spooling to ``spool_dir``, on this
        Keel's thread and pool; not started (``with`` it, or ``start()``)."""
        client = self._runner.call(_run(lambda: self._api.recorder(spool_dir=spool_dir, **options)))
        return SyncAuditClient._on_runner(client, self._runner)


class SyncKeelConfig:
    """``SyncKeel.config``: :class:`~keel_client.config.SyncConfigClient` on the Keel's
    thread and pool."""

    def __init__(self, keel: Keel, runner: LoopThread) -> None:
        self._keel, self._runner = keel, runner

    def client(self, application: str, environment: str, **options: Any) -> SyncConfigClient:
        """See :meth:`KeelConfig.client`; not started (``with`` it, or ``start()``)."""
        client = self._runner.call(
            _run(lambda: self._keel.config.client(application, environment, **options))
        )
        return SyncConfigClient._on_runner(client, self._runner)


class SyncKeelFlags:
    """``SyncKeel.flags``: :class:`~keel_client.flags.SyncFlagsClient` on the Keel's thread
    and pool."""

    def __init__(self, keel: Keel, runner: LoopThread) -> None:
        self._keel, self._runner = keel, runner

    def client(self, environment: str, **options: Any) -> SyncFlagsClient:
        """See :meth:`KeelFlags.client`; not started (``with`` it, or ``start()``)."""
        client = self._runner.call(_run(lambda: self._keel.flags.client(environment, **options)))
        return SyncFlagsClient._on_runner(client, self._runner)


class SyncKeel:
    """The blocking face of :class:`~keel_client.Keel`: the same sub-clients, calls and
    options, for Flask, Django, a worker or a script.

    Example::

        with SyncKeel("https://keel.internal", credentials=api_key) as keel:
            password = keel.secrets.get("apps/billing/db", "password", timeout=2.0)
            with keel.config.client("billing", "production") as config:
                workers = config.get("workers", 4)
            with keel.flags.client("production") as flags:
                flags.is_enabled("checkout-v2", {"key": "user-1"})

        keel = SyncKeel.from_env()      # KEEL_URL with KEEL_TOKEN, or KEEL_CLIENT_ID/SECRET
        ...
        keel.close()

    A ``Keel`` runs on an event loop in a daemon thread started here; every call of a
    sub-client runs there and blocks the calling thread until it returns. Callbacks of
    config and flags clients run on that thread. Arguments as ``Keel`` takes them.
    """

    def __init__(self, url: str, credentials: Credentials = None, **options: Any) -> None:
        self._start(lambda: Keel(url, credentials, **options))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Self:
        """See :meth:`Keel.from_env`."""
        face = cls.__new__(cls)
        face._start(lambda: Keel.from_env(environ, **options))
        return face

    def _start(self, make: Callable[[], Keel]) -> None:
        self._runner = LoopThread("keel")
        self._runner.start()
        try:
            # Built on the loop's thread: whatever binds to a loop binds to this one.
            self.keel = self._runner.call(_run(make))
        except BaseException:
            self._runner.stop(_run(lambda: None), timeout=CLOSE_TIMEOUT)
            raise
        self.auth = SyncKeelAuth(self.keel.auth, self._runner)
        self.secrets = SyncKeelSecrets(self.keel.secrets, self._runner)
        self.audit = SyncKeelAudit(self.keel.audit, self._runner)
        self.config = SyncKeelConfig(self.keel, self._runner)
        self.flags = SyncKeelFlags(self.keel, self._runner)
        self.jobs = SyncJobsClient._on_runner(self.keel.jobs, self._runner)
        self.notify = SyncNotifyClient._on_runner(self.keel.notify, self._runner)

    @functools.cached_property
    def storage(self) -> SyncStorageClient:
        """See :attr:`Keel.storage`: its calls, blocking, on this Keel's thread."""
        from keel_client.storage import SyncStorageClient

        client = self._runner.call(_run(lambda: self.keel.storage))
        return SyncStorageClient._on_runner(client, self._runner)

    @property
    def url(self) -> str:
        return self.keel.url

    def health(self) -> ClientHealth:
        """See :meth:`Keel.health`."""
        return self.keel.health()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the Keel (see :meth:`Keel.aclose`: what it handed out, then the pool) and
        end its thread. A second call does nothing."""
        if self._runner.is_running:
            self._runner.stop(self.keel.aclose(), timeout=CLOSE_TIMEOUT)
