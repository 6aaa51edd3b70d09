"""``SyncAuditClient``: the blocking face of ``AuditClient``, on a thread of its own."""

from __future__ import annotations

import asyncio
import threading
import types
from collections.abc import Coroutine
from typing import Any, Self, TypeVar, Unpack

from keel_client.audit._api import TransactionReceipt
from keel_client.audit._client import AuditClient, AuditClientStats
from keel_client.audit._events import EventFields, TransactionFields, build_transaction

__all__ = ["SyncAuditClient"]

_T = TypeVar("_T")


class SyncAuditClient:
    """An :class:`AuditClient` for code without an event loop: it runs on a thread of its own.

    Example::

        audit = SyncAuditClient(
            AuditClient("https://keel.internal", auth=api_key, spool_dir="/var/spool/app")
        )
        with audit:
            audit.record("app.report.export", actor=EventActor("user", user_id))
            audit.flush(timeout=5.0)
    """

    def __init__(self, client: AuditClient) -> None:
        self.client = client
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="keel-audit", daemon=True
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the loop thread and the client on it (see :meth:`AuditClient.start`)."""
        self._thread.start()
        try:
            self._run(self.client.start())
        except BaseException:
            self._stop_loop()
            raise

    def record(self, action: str, **fields: Unpack[EventFields]) -> str:
        """See :meth:`AuditClient.record`; thread-safe."""
        return self.client.record(action, **fields)

    def record_transaction(self, **fields: Unpack[TransactionFields]) -> TransactionReceipt:
        """See :meth:`AuditClient.record_transaction`; blocks until Keel answers."""
        if not self._thread.is_alive():
            raise RuntimeError("the SyncAuditClient is not started")
        build_transaction(**fields)  # a float amount fails here, on the caller's thread
        return self._run(self.client.record_transaction(**fields))

    def flush(self, timeout: float | None = 30.0) -> bool:
        """See :meth:`AuditClient.flush`; blocks the calling thread."""
        return self._run(self.client.flush(timeout))

    def close(self, timeout: float | None = 30.0) -> None:
        """See :meth:`AuditClient.aclose`; then stops the thread."""
        if not self._thread.is_alive():
            return
        try:
            self._run(self.client.aclose(timeout))
        finally:
            self._stop_loop()

    def stats(self) -> AuditClientStats:
        return self.client.stats()

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10.0)
        if not self._thread.is_alive():
            self._loop.close()
