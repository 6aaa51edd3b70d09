"""The SDK's analytics events: exposures, tracked events and evaluation summaries, buffered
in memory and sent to ``POST /flags/v1/events`` in batches by a background task.

::

    evaluation ─ count(flag) ─────────────▶ per-flag counters ─┐  (summary events at each flush)
               └ in_experiment ─ exposure ─▶ bounded queue ────┼─▶ batches of ≤ batch_size
    track(event, value) ───────────────────▶ bounded queue ────┘   every flush_interval, or
                                                                   as soon as a batch is full

The queue holds at most ``capacity`` events: when Keel is away it drops the oldest and counts
them (:attr:`EventStats.dropped`). A batch Keel could not take (unreachable, 5xx, 429) goes
back to the head of the queue and is retried with backoff; one it refused (another 4xx) is
dropped and counted, since sending it again would be refused again. Every method is
thread-safe (a sync service's threads record while the sender runs on the client's loop);
evaluation counts are kept without a lock, so racing threads may lose one now and then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from keel_client.http import BaseAPIClient, ClientError, KeelHTTPError, backoff

__all__ = ["EventBuffer", "EventSender", "EventStats"]

logger = logging.getLogger("keel_client.flags")

EVENTS_PATH: Final = "/flags/v1/events"
#: What one ``POST /flags/v1/events`` may hold (the server's bound).
MAX_BATCH: Final = 1000
#: Keel refuses a batch holding an event older than 7 days; older ones are dropped first.
MAX_EVENT_AGE: Final = 7 * 24 * 3600 - 3600
#: An exposure of the same (flag, variation, context key) is sent once per this many seconds.
EXPOSURE_DEDUP_SECONDS: Final = 300.0
#: The de-duplication memory is cleared when it holds this many exposures.
MAX_REMEMBERED_EXPOSURES: Final = 10_000
_MAX_EVENT_NAME: Final = 200
_MAX_CONTEXT_KEY: Final = 512


@dataclass(frozen=True, slots=True)
class EventStats:
    """Counters of a client's events since it started."""

    #: Events Keel accepted (``202``), summaries included.
    sent: int
    #: Events dropped: the queue was full (Keel away), or Keel refused their batch (4xx).
    dropped: int
    #: Events waiting in the queue (summaries not counted).
    queued: int


def _time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


class EventBuffer:
    """The events waiting to be sent: a bounded queue and the evaluation counters."""

    def __init__(
        self,
        *,
        capacity: int,
        batch_size: int,
        on_full_batch: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1 or not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"capacity >= 1 and 1 <= batch_size <= {MAX_BATCH}")
        self.capacity = capacity
        self.batch_size = batch_size
        self.on_full_batch = on_full_batch
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: deque[dict[str, Any]] = deque()
        self._counts: dict[str, int] = {}
        self._exposed: dict[tuple[str, str, str], float] = {}
        self.sent = 0
        self.dropped = 0

    # -- recording (any thread) --------------------------------------------------------------

    def count(self, flag: str) -> None:
        """One evaluation of ``flag`` (sent as a ``summary`` event at the next flush)."""
        # No lock: this runs on every evaluation, and the lock tripled its cost (measured:
        # 1.0 against 0.33 µs). Threads racing on one key may lose a count now and then;
        # a summary only needs to say that, and about how often, a flag was evaluated.
        counts = self._counts
        counts[flag] = counts.get(flag, 0) + 1

    def exposure(self, flag: str, variation: str, context_key: str) -> None:
        """An experiment flag served ``variation`` to ``context_key``; repeats of the same
        exposure within :data:`EXPOSURE_DEDUP_SECONDS` are not sent again."""
        if not context_key or len(context_key) > _MAX_CONTEXT_KEY:
            return
        now = self._clock()
        seen = (flag, variation, context_key)
        with self._lock:
            last = self._exposed.get(seen)
            if last is not None and now - last < EXPOSURE_DEDUP_SECONDS:
                return
            if len(self._exposed) >= MAX_REMEMBERED_EXPOSURES:
                self._exposed.clear()
            self._exposed[seen] = now
        self._append(
            {
                "kind": "exposure",
                "flag": flag,
                "variation": variation,
                "context_key": context_key,
                "time": now,
            }
        )

    def track(self, event: str, context_key: str, value: float | None) -> bool:
        """A conversion; ``False`` (nothing recorded) when Keel would refuse it."""
        if not isinstance(event, str) or not 1 <= len(event) <= _MAX_EVENT_NAME:
            return False
        if not context_key or len(context_key) > _MAX_CONTEXT_KEY:
            return False
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            if not math.isfinite(value):
                return False
        self._append(
            {
                "kind": "track",
                "event": event,
                "value": value,
                "context_key": context_key,
                "time": self._clock(),
            }
        )
        return True

    def _append(self, event: dict[str, Any]) -> None:
        with self._lock:
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(event)
            is_full = len(self._queue) == self.batch_size
        if is_full and self.on_full_batch is not None:
            self.on_full_batch()

    # -- sending (the sender task) -----------------------------------------------------------

    def take_batch(self) -> list[dict[str, Any]]:
        """Up to ``batch_size`` queued events, oldest first, with the wire's times; events too
        old for Keel are dropped (and counted) here."""
        oldest = self._clock() - MAX_EVENT_AGE
        with self._lock:
            batch: list[dict[str, Any]] = []
            while self._queue and len(batch) < self.batch_size:
                event = self._queue.popleft()
                if event["time"] < oldest:
                    self.dropped += 1
                    continue
                batch.append(event)
        return batch

    def take_summaries(self) -> list[dict[str, Any]]:
        """A ``summary`` event per flag evaluated since the last call."""
        counts, self._counts = self._counts, {}
        moment = self._clock()
        return [
            {"kind": "summary", "flag": flag, "count": count, "time": moment}
            for flag, count in counts.items()
        ]

    def put_back(self, batch: list[dict[str, Any]]) -> None:
        """Return an unsent batch to the head of the queue (summaries included), dropping the
        oldest events beyond ``capacity``."""
        with self._lock:
            self._queue.extendleft(reversed(batch))
            while len(self._queue) > self.capacity:
                self._queue.popleft()
                self.dropped += 1

    def record_sent(self, count: int) -> None:
        with self._lock:
            self.sent += count

    def record_dropped(self, count: int) -> None:
        with self._lock:
            self.dropped += count

    def stats(self) -> EventStats:
        with self._lock:
            return EventStats(self.sent, self.dropped, len(self._queue))

    def __len__(self) -> int:
        return len(self._queue)


def wire_batch(environment: str, batch: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of ``POST /flags/v1/events`` for ``batch`` (times as RFC 3339)."""
    return {
        "environment": environment,
        "events": [{**event, "time": _time(event["time"])} for event in batch],
    }


class EventSender:
    """Sends an :class:`EventBuffer` to Keel from a background task of the event loop."""

    def __init__(
        self,
        api: BaseAPIClient,
        environment: str,
        buffer: EventBuffer,
        *,
        flush_interval: float,
        max_retry_delay: float = 60.0,
    ) -> None:
        self.api = api
        self.environment = environment
        self.buffer = buffer
        self.flush_interval = flush_interval
        self.max_retry_delay = max_retry_delay
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        buffer.on_full_batch = self.wake

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"keel-flags-events-{self.environment}")

    def wake(self) -> None:
        """Send now (a batch is full); callable from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(self._wake.set)

    async def stop(self, *, flush_timeout: float) -> None:
        """Stop the task, then send what is left (for at most ``flush_timeout`` seconds)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_timeout):
                await self.flush()

    async def flush(self) -> bool:
        """Send every queued event and the evaluation summaries now; ``False`` when Keel
        could not take them (they stay queued)."""
        async with self._flushing:
            summaries = self.buffer.take_summaries()
            if summaries:
                self.buffer.put_back(summaries)
            while True:
                batch = self.buffer.take_batch()
                if not batch:
                    return True
                if not await self._send(batch):
                    return False

    async def _send(self, batch: list[dict[str, Any]]) -> bool:
        try:
            answer = await self.api.post(
                EVENTS_PATH, json=wire_batch(self.environment, batch), max_retries=0
            )
        except ClientError as error:
            if error.status == 429:
                self.buffer.put_back(batch)
                return False
            # Refused for what it holds (or who sends it): sending it again changes nothing.
            self.buffer.record_dropped(len(batch))
            logger.warning(
                "keel flags: Keel refused a batch of %d events for %s (%s); dropped",
                len(batch),
                self.environment,
                error.detail or error.title or error.status,
            )
            return True
        except KeelHTTPError as error:
            self.buffer.put_back(batch)
            logger.info("keel flags: sending events failed (%s); will retry", error.message)
            return False
        self.buffer.record_sent(len(batch))
        if answer.status_code != 202:
            logger.debug("keel flags: events answered %d", answer.status_code)
        return True

    async def _run(self) -> None:
        failures = 0
        while True:
            delay = (
                self.flush_interval
                if failures == 0
                else min(self.max_retry_delay, self.flush_interval)
                + backoff(failures - 1, base=self.flush_interval, cap=self.max_retry_delay)
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            try:
                failures = 0 if await self.flush() else failures + 1
            except Exception:  # never let the sender die
                logger.exception("keel flags: sending events failed")
                failures += 1
