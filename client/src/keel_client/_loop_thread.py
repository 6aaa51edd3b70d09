"""``LoopThread``: an event loop in a daemon thread of its own, what the SDK's blocking faces
(``SyncConfigClient``, ``SyncFlagsClient``, ``SyncAuditClient``, ``keel_client.SyncKeel``) run
their async clients on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """Runs coroutines on an event loop in a daemon thread, for callers without a loop.

    Example::

        runner = LoopThread("keel-config-billing-production")
        runner.start()
        runner.call(client.start())                 # blocks until it returns, or raises
        ...
        runner.stop(client.aclose(), timeout=10)    # the last coroutine, then the thread
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def is_running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the thread and its loop."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result (at most ``timeout`` s)."""
        if self._loop is None:
            coroutine.close()
            raise RuntimeError(f"{self.name} is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self, last: Coroutine[Any, Any, Any], *, timeout: float | None) -> None:
        """Run ``last`` (a client's ``aclose()``; at most ``timeout`` s), then stop the loop,
        end the thread and close the loop, even if ``last`` failed. Nothing when not
        running."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            last.close()
            return
        try:
            asyncio.run_coroutine_threadsafe(last, loop).result(timeout=timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None
