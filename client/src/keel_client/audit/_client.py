"""Record audit events without losing one: ``AuditClient``.

``AuditClient.record()`` writes the event to a local write-ahead journal (the spool,
``_spool``) and returns; a background task sends the journal to Keel in batches
(``_api.AuditAPI``) and marks what Keel acknowledged::

    record() ── validate ── append one JSON line to the spool (written to the OS) ── return id
                                   │
    sender task ◀── batch: batch_size events, or max_batch_delay, or flush() ──┘
      ├─ 200 ─────────────────▶ acknowledge: the acknowledged position is renamed into place,
      │                          fully acknowledged segment files are deleted
      ├─ 400/409/413/422 ─────▶ the batch again one event at a time; an event refused alone
      │                          is reported (``on_rejected``, a log line) and acknowledged
      └─ anything else ───────▶ keep the events, back off with full jitter, send them again
                                 (5xx, 429, 401/403, timeouts, connection errors)

After a crash, even ``kill -9``, the next client on the same spool directory sends the
unacknowledged lines first, in order. Keel stores an event ``id`` once and answers a resent
one with its original receipt, so a line that reached Keel just before the crash is not
duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, Self, Unpack

import httpx
from pydantic import SecretStr

from keel_client._env import as_auth, env_settings
from keel_client.audit._api import AuditAPI, TransactionReceipt
from keel_client.audit._events import EventFields, TransactionFields, build_event, encode_event
from keel_client.audit._policy import FailureStep, RejectedEvent, failure_step, retry_delay
from keel_client.audit._spool import (
    DEFAULT_MAX_SPOOL_BYTES,
    DEFAULT_SEGMENT_BYTES,
    AuditSpool,
    SpoolError,
)
from keel_client.audit._vocabulary import MAX_BATCH_SIZE
from keel_client.http import CircuitOpenError, HTTPStatusError, KeelHTTPError, parse_retry_after

__all__ = ["AuditClient", "AuditClientStats", "AuditRecorder"]

logger = logging.getLogger("keel_client.audit")

DEFAULT_BATCH_SIZE = 500
#: Keel refuses bodies over 1 MiB; half of it leaves room for any proxy in between.
DEFAULT_MAX_BATCH_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class AuditClientStats:
    """A client's progress and health, for metrics and readiness checks.

    Example::

        stats = audit.stats()
        if not stats.is_healthy:
            log.warning("audit delivery failing", pending=stats.pending, error=stats.last_error)
    """

    #: Events in the spool not yet acknowledged by Keel.
    pending: int
    pending_bytes: int
    #: Events recorded since start.
    recorded: int
    #: Events found unacknowledged in the spool at start (sent first).
    replayed: int
    #: Events Keel acknowledged since start.
    delivered: int
    #: Events Keel refused for good since start (reported to ``on_rejected``).
    rejected: int
    #: Failed sends in a row; 0 once a send succeeds.
    consecutive_failures: int
    #: The last send failure, safe to log (no credentials).
    last_error: str | None
    last_error_at: datetime | None

    @property
    def is_healthy(self) -> bool:
        """The last send reached Keel (or nothing was sent yet)."""
        return self.consecutive_failures == 0


class AuditRecorder(Protocol):
    """Anything with :meth:`AuditClient.record`'s signature (``AuditClient``,
    ``SyncAuditClient``, a test double)."""

    def record(self, action: str, **fields: Unpack[EventFields]) -> str: ...


class AuditClient:
    """Records audit events durably and sends them to Keel in the background.

    ``record()`` validates the event, appends it to the spool (a journal in ``spool_dir``)
    and returns its id without touching the network; a background task sends batches of up
    to ``batch_size`` events (or whatever arrived within ``max_batch_delay``) and keeps
    unreachable-service periods in the spool, backing off with jitter. No event is lost
    across a crash or a restart: the next client on the same directory sends what was not
    acknowledged, first and in order, and Keel's idempotency on event ids prevents a
    duplicate. An event Keel refuses for good (unregistered action, id reused with other
    content) is reported to ``on_rejected`` and a log line, then dropped, so it never blocks
    the ones after it.

    Example::

        audit = AuditClient(
            "https://keel.internal", auth=api_key, spool_dir="/var/spool/billing-audit"
        )
        async with audit:
            audit.record(
                "billing.invoice.refund",
                actor=EventActor("user", user.id, ip=request.client.host),
                target=EventTarget("invoice", invoice.id),
                data={"amount": 1200, "currency": "EUR"},
            )
            if not await audit.flush(timeout=5.0):
                log.warning("audit events still pending", pending=audit.stats().pending)

    ``auth`` is an API key or token (sent as ``Authorization: Bearer``) or any
    ``httpx.Auth`` (e.g. ``keel_client.auth.ServiceCredentials``); it needs the
    ``audit:event:write`` permission. Pass ``api=`` instead of ``base_url``/``auth`` to
    choose the HTTP settings (timeouts, transport, breaker); the client then leaves it open.
    The default API has no circuit breaker: the sender already sends one batch at a time
    and backs off.

    One client per spool directory (an exclusive lock; a second gets
    :class:`SpoolLockedError`). ``record()`` may be called from any thread once
    :meth:`start` ran; it raises :class:`SpoolFullError` when ``max_spool_bytes`` of events
    wait for Keel. ``fsync=True`` makes each record survive a power loss, at the price of a
    disk flush per event. ``SyncAuditClient`` wraps this client for code without a loop.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        spool_dir: str | os.PathLike[str],
        auth: str | SecretStr | httpx.Auth | None = None,
        api: AuditAPI | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_delay: float = 0.2,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        max_spool_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = False,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        on_rejected: Callable[[RejectedEvent], None] | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH_SIZE}")
        if max_batch_delay < 0 or backoff_base <= 0 or backoff_max <= 0:
            raise ValueError("max_batch_delay must be >= 0, backoff_base and backoff_max > 0")
        if api is None:
            if base_url is None:
                raise ValueError("give the Keel base_url (with auth) or an AuditAPI as api=")
            api = AuditAPI(base_url, auth=as_auth(auth), breaker=None, deadline=30.0)
            self._owns_api = True
        elif base_url is not None or auth is not None:
            raise ValueError("give either base_url and auth, or api=, not both")
        else:
            self._owns_api = False
        self.api = api
        self.batch_size = batch_size
        self.max_batch_delay = max_batch_delay
        self.max_batch_bytes = max_batch_bytes
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.on_rejected = on_rejected
        self.spool = AuditSpool(
            spool_dir, max_bytes=max_spool_bytes, segment_bytes=segment_bytes, fsync=fsync
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._progress: asyncio.Condition | None = None
        self._wake_lock = threading.Lock()
        self._wake_scheduled = False
        self._flush_target = 0
        self._is_closed = False
        self._delivered = 0
        self._rejected = 0
        self._failures = 0
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None

    @classmethod
    def from_env(
        cls,
        *,
        spool_dir: str | os.PathLike[str],
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> AuditClient:
        """A client for ``KEEL_URL`` authenticated with ``KEEL_TOKEN`` (an API key or token
        holding ``audit:event:write``), spooling to ``spool_dir``; ``options`` as
        :class:`AuditClient` takes them."""
        url, token = env_settings(environ)
        options.setdefault("auth", token)
        return cls(url, spool_dir=spool_dir, **options)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the spool (lock it, recover unacknowledged events) and start sending."""
        if self._task is not None or self._is_closed:
            raise RuntimeError("an AuditClient starts once")
        self.spool.open()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Condition()
        if self.spool.recovered:
            logger.info(
                "sending %d audit events left unacknowledged in the spool",
                self.spool.recovered,
                extra={"spool_dir": str(self.spool.directory)},
            )
        self._task = asyncio.create_task(self._send_forever(), name="keel-audit-sender")
        self._task.add_done_callback(_report_sender_end)

    def record(self, action: str, **fields: Unpack[EventFields]) -> str:
        """Journal an event for sending and return its id; never waits on the network.

        Raises ``ValueError``/``TypeError`` for an event Keel would refuse (bad action
        format, outcome, non-JSON data, too large), :class:`SpoolFullError` when too much
        waits for Keel, :class:`SpoolError` before :meth:`start` or after :meth:`aclose`.
        Thread-safe.
        """
        event = build_event(action, **fields)
        line = encode_event(event)
        if len(line) + 1 > self.max_batch_bytes:
            raise ValueError(f"the event is larger than max_batch_bytes={self.max_batch_bytes}")
        if self._is_closed:
            raise SpoolError("the AuditClient is closed")
        if self._task is None:
            raise SpoolError("the AuditClient is not started")
        self.spool.append(line)
        self._wake()
        return str(event["id"])

    async def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every event recorded so far is acknowledged (or refused for good).

        Returns ``False`` when ``timeout`` seconds pass first; the events stay in the spool
        and are still being sent.
        """
        if self._task is None or self._progress is None or self._wakeup is None:
            raise RuntimeError("the AuditClient is not started")
        spool = self.spool
        target = spool.recovered + spool.appended
        if spool.acknowledged >= target:
            return True
        self._flush_target = max(self._flush_target, target)
        self._wakeup.set()
        progress, task = self._progress, self._task
        try:
            async with asyncio.timeout(timeout), progress:
                await progress.wait_for(lambda: spool.acknowledged >= target or task.done())
        except TimeoutError:
            return False
        return spool.acknowledged >= target

    async def aclose(self, timeout: float | None = 30.0) -> None:
        """Flush (for up to ``timeout`` seconds), stop sending and release the spool.

        Events still unacknowledged stay in the spool for the next client on it.
        """
        if self._is_closed:
            return
        flushed = True
        task = self._task
        try:
            if task is not None:
                flushed = await self.flush(timeout)
        finally:
            self._is_closed = True
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            pending = self.spool.pending_count
            self.spool.close()
            if self._owns_api:
                await self.api.aclose()
        if not flushed:
            logger.warning(
                "audit client closed with %d events unacknowledged; they stay in the spool",
                pending,
                extra={"spool_dir": str(self.spool.directory), "last_error": self._last_error},
            )

    async def record_transaction(self, **fields: Unpack[TransactionFields]) -> TransactionReceipt:
        """Record a financial transaction and return Keel's receipt once it is in the log.

        Unlike :meth:`record`, this waits for Keel: a transaction is not spooled, so the
        caller knows it was recorded (or gets the error) before going on. See
        :meth:`AuditAPI.record_transaction` for the checks, retries and errors; a float
        amount raises ``TypeError`` before anything is sent. Needs no :meth:`start`.

        Example::

            receipt = await audit.record_transaction(
                transaction_id="tx-2026-0042",
                amount=Decimal("1234.50"),
                currency="EUR",
                from_account="ops-eur",
                to_account="supplier-981",
                reason="invoice INV-118",
                user="u-42",
                authorising_chain=["u-7", "u-9"],
            )
        """
        if self._is_closed:
            raise RuntimeError("the AuditClient is closed")
        return await self.api.record_transaction(**fields)

    def stats(self) -> AuditClientStats:
        """Pending, delivered and refused counts, and the last send error."""
        return AuditClientStats(
            pending=self.spool.pending_count,
            pending_bytes=self.spool.pending_bytes,
            recorded=self.spool.appended,
            replayed=self.spool.recovered,
            delivered=self._delivered,
            rejected=self._rejected,
            consecutive_failures=self._failures,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
        )

    def _wake(self) -> None:
        """Tell the sender there is work, from the loop's thread or any other."""
        wakeup, loop = self._wakeup, self._loop
        if wakeup is None or loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            wakeup.set()
            return
        with self._wake_lock:
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        try:
            loop.call_soon_threadsafe(self._wake_in_loop)
        except RuntimeError:
            # The loop is closed: the event is journaled and the next client sends it.
            with self._wake_lock:
                self._wake_scheduled = False

    def _wake_in_loop(self) -> None:
        with self._wake_lock:
            self._wake_scheduled = False
        if self._wakeup is not None:
            self._wakeup.set()

    def _is_batch_due(self) -> bool:
        spool = self.spool
        return (
            spool.pending_count >= self.batch_size
            or self._flush_target > spool.acknowledged
            or self._is_closed
        )

    async def _linger(self, wakeup: asyncio.Event) -> None:
        """Wait up to ``max_batch_delay`` for a full batch, unless a flush wants it now."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.max_batch_delay
        while not self._is_batch_due():
            remaining = until - loop.time()
            if remaining <= 0:
                return
            wakeup.clear()
            if self._is_batch_due():
                return
            try:
                async with asyncio.timeout(remaining):
                    await wakeup.wait()
            except TimeoutError:
                return

    async def _send_forever(self) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        isolate = 0  # events still to send one at a time after a refused batch
        while True:
            if self.spool.pending_count == 0:
                wakeup.clear()
                if self.spool.pending_count == 0:
                    await wakeup.wait()
                continue
            if isolate == 0:
                await self._linger(wakeup)
            lines = self.spool.peek(1 if isolate else self.batch_size, self.max_batch_bytes)
            try:
                result = await self.api.send_lines(lines)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                status = error.status if isinstance(error, KeelHTTPError) else None
                step = failure_step(status, len(lines))
                if step is FailureStep.ISOLATE:
                    isolate = len(lines)
                    self._reached_keel()
                    continue
                if step is FailureStep.REJECT and isinstance(error, KeelHTTPError):
                    self._reached_keel()
                    self._reject(lines[0], error)
                    await self._acknowledge(1, delivered=0)
                    isolate = max(isolate - 1, 0)
                    continue
                await asyncio.sleep(self._failed(error))
                continue
            if len(result.receipts) != len(lines):
                logger.warning(
                    "audit batch answered with %d receipts for %d events",
                    len(result.receipts),
                    len(lines),
                )
            self._reached_keel()
            await self._acknowledge(len(lines), delivered=len(lines))
            isolate = max(isolate - len(lines), 0)

    async def _acknowledge(self, count: int, *, delivered: int) -> None:
        try:
            self.spool.acknowledge(count)
        except SpoolError as error:
            # Delivered all the same; a restart before the next mark resends them, harmlessly.
            logger.warning("%s", error)
        self._delivered += delivered
        self._rejected += count - delivered
        assert self._progress is not None
        async with self._progress:
            self._progress.notify_all()

    def _reached_keel(self) -> None:
        if self._failures:
            logger.info("audit service reachable again after %d failed sends", self._failures)
        self._failures = 0

    def _failed(self, error: Exception) -> float:
        """Note a failed send; the seconds to wait before the next."""
        self._failures += 1
        self._last_error = (
            str(error) if isinstance(error, KeelHTTPError) else f"{type(error).__name__}: {error}"
        )
        self._last_error_at = datetime.now(UTC)
        if self._failures == 1:
            if isinstance(error, KeelHTTPError):
                logger.warning(
                    "audit service unavailable; keeping %d events in the spool: %s",
                    self.spool.pending_count,
                    self._last_error,
                )
            else:
                logger.exception("unexpected error sending audit events; will retry")
        retry_after: float | None = None
        if isinstance(error, CircuitOpenError):
            retry_after = error.retry_after
        elif isinstance(error, HTTPStatusError) and error.status in (429, 503):
            retry_after = parse_retry_after(
                error.response.headers.get("retry-after"), now=time.time()
            )
        return retry_delay(
            self._failures, base=self.backoff_base, cap=self.backoff_max, retry_after=retry_after
        )

    def _reject(self, line: bytes, error: KeelHTTPError) -> None:
        event = json.loads(line)
        rejected = RejectedEvent(
            event=event,
            status=error.status,
            code=error.code,
            detail=error.detail,
            request_id=error.request_id,
        )
        logger.warning(
            "audit event refused by Keel and dropped: %s %s (%s %s)",
            rejected.action,
            rejected.id,
            error.status,
            error.code,
            extra={"audit_event_id": rejected.id, "request_id": error.request_id},
        )
        if self.on_rejected is not None:
            try:
                self.on_rejected(rejected)
            except Exception:
                logger.exception("on_rejected raised; the event is dropped all the same")


def _report_sender_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # Never expected; events stay in the spool for the next client all the same.
        logger.error("the audit sender stopped", exc_info=task.exception())
