"""``SyncAuditClient``: the blocking face of ``AuditClient``, on an event loop in a thread."""

from __future__ import annotations

import types
from typing import Self, Unpack

from keel_client._loop_thread import LoopThread
from keel_client.audit._api import TransactionReceipt
from keel_client.audit._client import AuditClient, AuditClientStats
from keel_client.audit._events import EventFields, TransactionFields, build_transaction

__all__ = ["SyncAuditClient"]


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
        self._runner = LoopThread("keel-audit")
        self._owns_runner = True
        self._is_started = False

    @classmethod
    def _on_runner(cls, client: AuditClient, runner: LoopThread) -> Self:
        """The blocking face of ``client`` on a loop thread already running, which it leaves
        running (``keel_client.SyncKeel`` runs all its sub-clients on one)."""
        face = cls.__new__(cls)
        face.client, face._runner = client, runner
        face._owns_runner, face._is_started = False, False
        return face

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
        if self._is_started:
            raise RuntimeError("this SyncAuditClient is already started")
        self._is_started = True
        if self._owns_runner:
            self._runner.start()
        try:
            self._runner.call(self.client.start())
        except BaseException:
            self.close(timeout=0)
            raise

    def record(self, action: str, **fields: Unpack[EventFields]) -> str:
        """See :meth:`AuditClient.record`; thread-safe."""
        return self.client.record(action, **fields)

    def record_transaction(self, **fields: Unpack[TransactionFields]) -> TransactionReceipt:
        """See :meth:`AuditClient.record_transaction`; blocks until Keel answers."""
        if not self._is_started:
            raise RuntimeError("the SyncAuditClient is not started")
        build_transaction(**fields)  # a float amount fails here, on the caller's thread
        return self._runner.call(self.client.record_transaction(**fields))

    def flush(self, timeout: float | None = 30.0) -> bool:
        """See :meth:`AuditClient.flush`; blocks the calling thread."""
        return self._runner.call(self.client.flush(timeout))

    def close(self, timeout: float | None = 30.0) -> None:
        """See :meth:`AuditClient.aclose`; then stops the thread (a shared thread is left
        running)."""
        if not self._is_started or not self._runner.is_running:
            return
        self._is_started = False
        if self._owns_runner:
            self._runner.stop(self.client.aclose(timeout), timeout=None)
        else:
            self._runner.call(self.client.aclose(timeout))

    def stats(self) -> AuditClientStats:
        return self.client.stats()
