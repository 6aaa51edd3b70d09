"""``JobSpool``: where enqueues go while Keel is unreachable, and the replay that sends them.

An enqueue that cannot reach Keel (``_policy.is_unreachable``) is appended to a local journal
(``keel_client._journal.Journal``, the audit spool's code) and the caller gets a reference
marked spooled. While anything waits there, later enqueues join the queue behind it, so jobs
reach Keel in the order they were enqueued::

    enqueue ── spool empty? ── POST /jobs/v1/jobs ── ok ──────────────▶ JobRef(job)
                   │                     └── unreachable ──┐
                   └── no: behind the backlog ─────────────┴▶ append ─▶ JobRef(is_spooled)
    replay task ── the oldest lines ── one POST (a group, or one line with its own key)
        ├─ answered (201, or 200 for a unique key's duplicate) ─▶ acknowledge, next lines
        ├─ refused for good (400/413/422) ─▶ a group: its lines one at a time, to find the
        │                                    one; a line: log, ``on_rejected``, acknowledge
        └─ anything else ─▶ keep them, back off with full jitter, send them again

The same key on every resend makes a request that reached Keel just before a crash or a
lost answer come back with its first answer instead of a second job. Consecutive lines
that never reached Keel (appended behind the backlog) go as one batch (``max_group``
jobs; one request instead of hundreds), keyed by a hash of their keys; the group is written
to ``replay-plan.json`` before it is sent, so the process that replays after a crash sends
the same group under the same key. A line whose own enqueue may have reached Keel (it
failed after being sent: a timeout, a lost answer) goes alone, under its own key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from keel_client._journal import DEFAULT_MAX_SPOOL_BYTES, Journal, SpoolError
from keel_client.audit import retry_delay
from keel_client.http import CircuitOpenError, HTTPStatusError, KeelHTTPError, parse_retry_after
from keel_client.jobs._policy import is_rejected

__all__ = ["JobSpool", "RejectedJob", "SpooledRequest"]

logger = logging.getLogger("keel_client.jobs")

JOBS_PATH = "/jobs/v1/jobs"
BATCH_PATH = "/jobs/v1/jobs/batch"
PLAN_FILE = "replay-plan.json"
#: Jobs of one replayed group at most (Keel takes 10,000 a batch; this bounds the body).
DEFAULT_MAX_GROUP = 500


@dataclass(frozen=True, slots=True)
class SpooledRequest:
    """One spooled enqueue: the endpoint, its JSON body and its ``Idempotency-Key``;
    ``was_sent``: an attempt may have reached Keel (so it is replayed alone, under its key)."""

    path: str
    body: dict[str, Any]
    idempotency_key: str
    was_sent: bool = False

    @property
    def is_groupable(self) -> bool:
        return self.path == JOBS_PATH and not self.was_sent

    def encode(self) -> bytes:
        line = {"path": self.path, "key": self.idempotency_key, "body": self.body,
                "sent": self.was_sent, "spooled_at": datetime.now(UTC).isoformat()}  # fmt: skip
        return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, line: bytes) -> SpooledRequest:
        data = json.loads(line)
        return cls(
            path=data["path"],
            body=data["body"],
            idempotency_key=data["key"],
            was_sent=bool(data.get("sent", True)),
        )


def group_request(requests: list[SpooledRequest]) -> SpooledRequest:
    """One batch enqueue of ``requests`` (never sent alone), keyed by a hash of their keys:
    the same group is the same key, in this process or the next."""
    digest = hashlib.sha256("\n".join(r.idempotency_key for r in requests).encode()).hexdigest()
    body = {"jobs": [request.body for request in requests]}
    return SpooledRequest(BATCH_PATH, body, f"spool-group-{digest[:40]}")


@dataclass(frozen=True, slots=True)
class RejectedJob:
    """A spooled enqueue Keel refused for good (a bad argument, an unknown queue...); handed
    to ``on_rejected`` and dropped, so it never blocks the jobs behind it."""

    request: SpooledRequest
    status: int | None
    code: str
    detail: str | None


#: Sends one spooled request; raises a ``KeelHTTPError`` when Keel did not take it.
Send = Callable[[SpooledRequest], Awaitable[None]]


class JobSpool:
    """The local queue of enqueues Keel has not taken yet, and the task that replays it.

    One process per directory (an exclusive lock: a second gets ``SpoolLockedError``);
    after a crash the next spool on the directory replays what was left, first and in order.

    Example::

        spool = JobSpool("/var/spool/billing-jobs", send=post_one)
        await spool.start()
        spool.append(SpooledRequest("/jobs/v1/jobs", body, key))
        await spool.flush(timeout=5.0)
        await spool.aclose()
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        send: Send,
        max_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        fsync: bool = True,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        on_rejected: Callable[[RejectedJob], None] | None = None,
        max_group: int = DEFAULT_MAX_GROUP,
    ) -> None:
        self.max_group = max_group
        self.journal = Journal(
            directory, name="jobs spool", logger=logger, max_bytes=max_bytes, fsync=fsync
        )
        self._send = send
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.on_rejected = on_rejected
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Condition()
        self.sent = 0
        self.rejected = 0
        self.consecutive_failures = 0
        self.last_error: str | None = None

    @property
    def pending(self) -> int:
        """Enqueues waiting for Keel."""
        return self.journal.pending_count if self.journal.is_open else 0

    async def start(self) -> None:
        """Lock the directory, recover what a previous process left, and start replaying."""
        if self._task is not None:
            raise RuntimeError("a JobSpool starts once")
        self.journal.open()
        if self.journal.recovered:
            logger.info("replaying %d spooled enqueues", self.journal.recovered,
                        extra={"spool_dir": str(self.journal.directory)})  # fmt: skip
        self._task = asyncio.create_task(self._replay_forever(), name="keel-jobs-spool")

    def append(self, request: SpooledRequest) -> None:
        """Journal an enqueue (on disk before this returns, with ``fsync``) for the replay."""
        if self._task is None:
            raise SpoolError("the jobs spool is not started")
        self.journal.append(request.encode())
        self._wakeup.set()

    async def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every enqueue spooled so far reached Keel (or was refused for good);
        ``False`` when ``timeout`` seconds pass first (they stay spooled)."""
        journal = self.journal
        target = journal.recovered + journal.appended
        try:
            async with asyncio.timeout(timeout), self._progress:
                await self._progress.wait_for(
                    lambda: journal.acknowledged >= target or not journal.is_open
                )
        except TimeoutError:
            return False
        return journal.acknowledged >= target

    async def aclose(self) -> None:
        """Stop replaying and release the directory; what is left stays for the next start."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending = self.pending
        self.journal.close()
        if pending:
            logger.warning("%d enqueues stay in the jobs spool for the next start", pending,
                           extra={"spool_dir": str(self.journal.directory)})  # fmt: skip

    async def _replay_forever(self) -> None:
        alone = 0  # lines still to send one at a time after a refused group
        while True:
            lines = self.journal.peek(1 if alone else self.max_group)
            if not lines:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            group = self._next_group(lines)
            if not group:
                logger.error("dropping a spooled enqueue that does not parse")
                await self._acknowledge(1, sent=False)
                continue
            request = group[0] if len(group) == 1 else group_request(group)
            try:
                await self._send(request)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if isinstance(error, KeelHTTPError) and is_rejected(error):
                    if len(group) > 1:
                        alone = len(group)  # all or none: find the one Keel refuses
                        self._write_plan(None)
                        continue
                    self._reject(request, error)
                    await self._acknowledge(1, sent=False)
                    alone = max(alone - 1, 0)
                    continue
                await asyncio.sleep(self._failed(error))
                continue
            if self.consecutive_failures:
                logger.info("Keel reachable again; replaying the jobs spool")
            self.consecutive_failures = 0
            await self._acknowledge(len(group), sent=True)
            alone = max(alone - len(group), 0)

    def _next_group(self, lines: list[bytes]) -> list[SpooledRequest]:
        """The requests of the next send: the head alone, or the groupable lines after it
        (as planned before a crash, if this head's group was planned)."""
        group: list[SpooledRequest] = []
        for line in lines:
            try:
                request = SpooledRequest.decode(line)
            except (ValueError, KeyError, TypeError):
                break
            if group and not (request.is_groupable and group[0].is_groupable):
                break
            group.append(request)
            if not request.is_groupable:
                break
        if len(group) <= 1:
            return group
        planned = self._read_plan()
        if planned is not None and planned[0] == group[0].idempotency_key:
            return group[: planned[1]]
        self._write_plan((group[0].idempotency_key, len(group)))
        return group

    def _read_plan(self) -> tuple[str, int] | None:
        try:
            plan = json.loads((self.journal.directory / PLAN_FILE).read_bytes())
            return str(plan["first"]), int(plan["count"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_plan(self, plan: tuple[str, int] | None) -> None:
        path = self.journal.directory / PLAN_FILE
        if plan is None:
            path.unlink(missing_ok=True)
            return
        temporary = path.with_suffix(".tmp")
        with temporary.open("wb") as file:
            file.write(json.dumps({"first": plan[0], "count": plan[1]}).encode())
            if self.journal.fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temporary, path)

    async def _acknowledge(self, count: int, *, sent: bool) -> None:
        try:
            self.journal.acknowledge(count)
        except SpoolError as error:
            # Sent all the same; a restart before the next mark resends it, answered by its key.
            logger.warning("%s", error)
        if sent:
            self.sent += count
        else:
            self.rejected += count
        async with self._progress:
            self._progress.notify_all()

    def _failed(self, error: Exception) -> float:
        """Note a failed replay; the seconds to wait before the next."""
        self.consecutive_failures += 1
        self.last_error = (
            str(error) if isinstance(error, KeelHTTPError) else f"{type(error).__name__}: {error}"
        )
        if self.consecutive_failures == 1:
            logger.warning("Keel unavailable; %d enqueues wait in the jobs spool: %s",
                           self.pending, self.last_error)  # fmt: skip
        retry_after: float | None = None
        if isinstance(error, CircuitOpenError):
            retry_after = error.retry_after
        elif isinstance(error, HTTPStatusError) and error.status in (429, 503):
            retry_after = parse_retry_after(
                error.response.headers.get("retry-after"), now=time.time()
            )
        return retry_delay(
            self.consecutive_failures,
            base=self.backoff_base,
            cap=self.backoff_max,
            retry_after=retry_after,
        )

    def _reject(self, request: SpooledRequest, error: KeelHTTPError) -> None:
        rejected = RejectedJob(request, error.status, error.code, error.detail)
        logger.error(
            "a spooled enqueue was refused by Keel and dropped: %s %s (%s %s)",
            request.body.get("task", "batch"),
            request.idempotency_key,
            error.status,
            error.code,
        )
        if self.on_rejected is not None:
            try:
                self.on_rejected(rejected)
            except Exception:
                logger.exception("on_rejected raised; the enqueue is dropped all the same")
