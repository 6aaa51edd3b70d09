"""What the SDK's request/answer service clients share: :class:`ServiceClient`, the async
base (a pool of its own or a shared ``BaseAPIClient``, ``from_env``, ``async with``,
``aclose``), and :class:`SyncFace`, the base of their blocking faces (a loop thread of their
own or a ``SyncKeel``'s, ``with``, ``close``), with :func:`blocking`, which turns an async
method of the client into a blocking one of the face.

``StorageClient``, ``NotifyClient`` and ``JobsClient`` (and their ``Sync*`` faces) are built
on them. The clients that follow a snapshot (config, flags, edge) start a watch in
``async with`` and take other arguments first, and ``SecretsClient`` has a blocking twin of
its own rather than a face: they keep their own lifecycle.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, Self, TypeVar

import httpx
from pydantic import SecretStr

from keel_client._env import as_auth, check_api_alone, env_settings
from keel_client._loop_thread import LoopThread
from keel_client.http import BaseAPIClient

__all__ = ["CLOSE_TIMEOUT", "ServiceClient", "SyncFace", "blocking"]

P = ParamSpec("P")
T = TypeVar("T")

#: Seconds a face's ``close()`` gives its client to close (its pool, a spool).
CLOSE_TIMEOUT = 30.0


class ServiceClient:
    """The base of a client of one Keel service: its calls go through :attr:`api`.

    Alone: ``Client("https://keel.internal", auth=api_key)`` or ``Client.from_env()``, with
    a pool of its own (named after the class) that :meth:`aclose` closes; or ``api=`` a shared
    ``BaseAPIClient`` (what ``keel_client.Keel`` does), which is its owner's to close.

    Example (a subclass)::

        class NotifyClient(ServiceClient):
            async def send(self, template: str, **fields: Any) -> MessageRef:
                return await self.api.post(f"{API}/messages", json=..., ...)
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        auth: str | SecretStr | httpx.Auth | None = None,
        api: BaseAPIClient | None = None,
        **options: Any,
    ) -> None:
        self._owns_api = api is None
        if api is None:
            if base_url is None:
                raise ValueError("give the Keel base_url (with auth) or a BaseAPIClient as api=")
            options.setdefault("name", type(self).__name__)
            api = BaseAPIClient(base_url, auth=as_auth(auth), **options)
        else:
            check_api_alone(base_url, auth, options)
        #: The resilient HTTP client the calls go through (retries, breaker, metrics).
        self.api = api

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Self:
        """A client for ``KEEL_URL`` authenticated with ``KEEL_TOKEN``; ``options`` are
        ``BaseAPIClient``'s."""
        url, token = env_settings(environ)
        return cls(url, auth=token, **options)

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
        """Close the pool if this client owns it (a shared one is its owner's to close)."""
        if self._owns_api:
            await self.api.aclose()


ClientT = TypeVar("ClientT", bound=ServiceClient)


class SyncFace(Generic[ClientT]):
    """The base of a :class:`ServiceClient`'s blocking face, for code without an event loop
    (Flask, Django, a script): each call is the client's own, run on a loop thread until it
    returns. Alone, the face runs a thread of its own (named :attr:`thread_name`);
    ``keel_client.SyncKeel`` runs all its sub-clients on one (:meth:`_on_runner`).

    Example (a subclass)::

        class SyncNotifyClient(SyncFace[NotifyClient]):
            thread_name = "keel-notify"
            send = blocking(NotifyClient.send)
    """

    #: The name of the loop thread a face started alone runs.
    thread_name: ClassVar[str] = "keel-client"

    def __init__(self, client: ClientT) -> None:
        self.client = client
        self._runner = LoopThread(self.thread_name)
        self._runner.start()
        self._owns_runner = True

    @classmethod
    def _on_runner(cls, client: ClientT, runner: LoopThread) -> Self:
        """The blocking face of ``client`` on a loop thread already running, which it leaves
        running (``keel_client.SyncKeel`` runs all its sub-clients on one)."""
        face = cls.__new__(cls)
        face.client, face._runner, face._owns_runner = client, runner, False
        return face

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
        """Close the client (``aclose``: its pool if it owns one, and what else it holds) and
        the thread it ran on; on a ``SyncKeel``'s thread, the ``SyncKeel`` does that."""
        if self._owns_runner and self._runner.is_running:
            self._runner.stop(self.client.aclose(), timeout=CLOSE_TIMEOUT)


def blocking(
    method: Callable[Concatenate[ClientT, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncFace[ClientT], P], T]:
    """``method`` of a :class:`ServiceClient`, run on the face's loop thread until it returns:
    a blocking method of the face with the same parameters (for type checkers too), so the
    face holds no logic and cannot drift from the async client."""

    @functools.wraps(method)
    def call(face: SyncFace[ClientT], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return face._runner.call(method(face.client, *args, **kwargs))

    return call
