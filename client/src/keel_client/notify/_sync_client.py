"""``SyncNotifyClient``: the blocking face of ``NotifyClient``, on an event loop in a thread.

Each call is :class:`NotifyClient`'s own, run on the face's loop thread: :func:`_blocking`
turns an async method into a blocking one with the same parameters (for type checkers
too), so the face holds no logic and cannot drift from the async client.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from keel_client._loop_thread import LoopThread
from keel_client.notify._client import NotifyClient

__all__ = ["SyncNotifyClient"]

P = ParamSpec("P")
T = TypeVar("T")

#: Seconds ``close()`` gives the client to close its pool.
CLOSE_TIMEOUT = 30.0


def _blocking(
    method: Callable[Concatenate[NotifyClient, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[SyncNotifyClient, P], T]:
    """``method`` of :class:`NotifyClient`, run on the face's loop thread until it returns."""

    @functools.wraps(method)
    def call(face: SyncNotifyClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return face._runner.call(method(face.client, *args, **kwargs))

    return call


class SyncNotifyClient:
    """A :class:`NotifyClient` for code without an event loop (Flask, Django, a script):
    the same calls, each blocking until it returns.

    Example::

        with SyncNotifyClient(NotifyClient.from_env()) as notify:
            ref = notify.send_email(to="user@example.com", template="welcome",
                                    context={"name": "John"})
            print(notify.message(ref.id).status)

    ``SyncKeel.notify`` is one on the ``SyncKeel``'s thread and pool.
    """

    def __init__(self, client: NotifyClient) -> None:
        self.client = client
        self._runner = LoopThread("keel-notify")
        self._runner.start()
        self._owns_runner = True

    @classmethod
    def _on_runner(cls, client: NotifyClient, runner: LoopThread) -> Self:
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
        """Close the client (its pool if it owns one) and the thread it ran on; on a
        ``SyncKeel``'s thread, the ``SyncKeel`` does that."""
        if self._owns_runner and self._runner.is_running:
            self._runner.stop(self.client.aclose(), timeout=CLOSE_TIMEOUT)

    send = _blocking(NotifyClient.send)
    send_email = _blocking(NotifyClient.send_email)
    send_sms = _blocking(NotifyClient.send_sms)
    send_push = _blocking(NotifyClient.send_push)
    send_batch = _blocking(NotifyClient.send_batch)
    message = _blocking(NotifyClient.message)
    messages = _blocking(NotifyClient.messages)
    subscribe = _blocking(NotifyClient.subscribe)
    unsubscribe = _blocking(NotifyClient.unsubscribe)
    identify = _blocking(NotifyClient.identify)
    recipient = _blocking(NotifyClient.recipient)
    preferences = _blocking(NotifyClient.preferences)
    set_preferences = _blocking(NotifyClient.set_preferences)
    inbox = _blocking(NotifyClient.inbox)
    mark_read = _blocking(NotifyClient.mark_read)
    erase = _blocking(NotifyClient.erase)
    publish_template = _blocking(NotifyClient.publish_template)
