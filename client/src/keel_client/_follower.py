"""What the config and flags SDKs share: a snapshot kept current by following a watch stream,
the change callbacks, and the local copy saved after them, off the event loop.

::

    SnapshotFollower.start()
      └─ task: watch_changes(watch_path, yield_ready=True) ─ reconnect, resume, backoff
           ├─ ready / reset ─────────────────────────────▶ reload()   (read, swap if newer)
           └─ subject's change, data[version_key] newer ─▶ advance(change) (apply, or read)
                 the client swaps the snapshot in, then publish(change, snapshot):
                     the callbacks ─▶ LatestSaver.save(snapshot) ─▶ a worker thread writes it
    aclose(): stop following, then wait for the last save

The client owns its snapshot (what it holds, how a change applies); this module owns the
order of things. A reload or advance that fails (Keel went away between an event and the
read) reopens the stream from before that event, so the event comes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from keel_client.changes import Change, watch_changes
from keel_client.http import BaseAPIClient, ClientError, KeelHTTPError, backoff

__all__ = ["LatestSaver", "SnapshotFollower", "is_newer"]

#: The first pause before reopening a stream that ended on an error (doubles, jittered).
RETRY_BASE = 1.0
#: Threads writing local copies, shared by every client of a process. Measured with 100
#: clients on 2 cores (a write is ~5 ms, mostly fsync): 4 threads wrote 100 copies in 130 ms
#: for 7 ms of the event loop's time; anyio's worker threads (up to 40) took 310 ms and
#: 34 ms, the loop's time being what delays the next client's change.
WRITER_THREADS = 4
#: How long a save waits before it is written. A change reaches a process's clients together
#: (a fleet's config, flags and every watcher of them); their copies' writes (JSON, a file,
#: an fsync) are worth nothing until a restart, yet written at once they took the GIL while
#: the other clients were still being handed the change: with 100 config clients the median
#: time until all had it was 1.6x that of 100 bare streams, 1.07x without the files. A burst
#: of saves of one client in the wait is one write; :meth:`LatestSaver.flush` cuts it short.
SAVE_DELAY_SECONDS = 0.25

_writers: tuple[int, ThreadPoolExecutor] | None = None

ChangeT = TypeVar("ChangeT")
SavedT = TypeVar("SavedT")


def _writer_pool() -> ThreadPoolExecutor:
    """This process's pool of local-copy writers (a forked child makes its own: the parent's
    threads are not in it). Its threads are joined at interpreter exit, so a write handed
    over is finished even by a process that never closed its client."""
    global _writers
    if _writers is None or _writers[0] != os.getpid():
        pool = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="keel-local-copy")
        _writers = (os.getpid(), pool)
    return _writers[1]


def is_newer(version: Any, current: int) -> bool:
    """Whether ``version`` (from an event's JSON) is an integer above ``current``."""
    return isinstance(version, int) and not isinstance(version, bool) and version > current


class LatestSaver(Generic[SavedT]):
    """Writes the latest snapshot handed to :meth:`save` with ``write``, in a worker thread
    (a small pool shared by the process's clients), one write at a time, ``delay`` seconds
    after the first save that found it idle (see :data:`SAVE_DELAY_SECONDS`).

    :meth:`save` returns at once. A snapshot handed over while a write is in flight waits
    for that write to finish; when several are handed over meanwhile, only the last one is
    written (each write replaces the whole file, so the ones before it would be overwritten
    straight away). :meth:`flush` waits until the last snapshot handed over is on disk.

    ``write`` logs its own failures and does not raise (memory still serves); anything it
    raises all the same is logged here, and the next save is still written.

    Example::

        saver = LatestSaver(local_copy.write, logger=logger)
        saver.save(snapshot)      # from the event loop; returns at once
        await saver.flush()       # at close: the file now holds the latest snapshot
    """

    def __init__(
        self,
        write: Callable[[SavedT], None],
        *,
        logger: logging.Logger,
        delay: float = SAVE_DELAY_SECONDS,
    ) -> None:
        self._write = write
        self._logger = logger
        self._delay = delay
        self._hurry = asyncio.Event()  # set by flush(): write now
        #: The snapshot waiting to be written, boxed (a snapshot may itself be falsy).
        self._pending: tuple[SavedT] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def is_idle(self) -> bool:
        """No write in flight and none waiting."""
        return self._task is None or self._task.done()

    def save(self, snapshot: SavedT) -> None:
        """Have ``snapshot`` written once the write in flight (if any) is done."""
        self._pending = (snapshot,)
        if self.is_idle:
            self._hurry.clear()
            self._task = asyncio.get_running_loop().create_task(
                self._write_pending(), name="keel-local-copy"
            )

    async def flush(self) -> None:
        """Wait until the last snapshot handed to :meth:`save` is written (or failed).

        The write goes on if the caller is cancelled: a file is never left half-replaced
        (writes are atomic anyway), and the latest snapshot still lands."""
        while not self.is_idle:
            assert self._task is not None
            self._hurry.set()
            await asyncio.shield(self._task)

    async def _write_pending(self) -> None:
        loop = asyncio.get_running_loop()
        if self._delay > 0 and not self._hurry.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._delay):
                    await self._hurry.wait()
        while self._pending is not None:
            (snapshot,), self._pending = self._pending, None
            try:
                # Shielded: cancelling this task (a loop shutting down) must not drop a
                # write that is queued in the pool but not started yet.
                await asyncio.shield(loop.run_in_executor(_writer_pool(), self._write, snapshot))
            except Exception:
                self._logger.exception("keel: writing the local copy failed")


class SnapshotFollower(Generic[ChangeT, SavedT]):
    """Keeps a client's snapshot current: follows the watch stream at ``watch_path`` in a
    background task and calls back into the client, which holds the snapshot.

    - ``reload()`` reads the snapshot again and swaps it in if it is newer; it runs on the
      stream's ``ready`` (a stream started from now: nothing after it is missed) and
      ``reset`` (the server lost the resume point).
    - ``advance(change)`` runs for a change of ``subject`` whose ``data[version_key]`` is
      newer than ``current_version()``: the client applies it, or reads the snapshot.
    - After a swap the client calls :meth:`publish`: the change callbacks run, then the
      snapshot is handed to a :class:`LatestSaver` (``write``; ``None`` keeps no local
      copy). The value is in memory and the callbacks have run before the file is written,
      so a change reaches a service's code without waiting on the disk; :meth:`aclose`
      waits for the last write.

    Example (inside a client)::

        self._follower = SnapshotFollower(
            self.api, "/config/v1/apps/billing/envs/production/watch",
            kind="config", subject="billing/production", version_key="revision",
            current_version=lambda: self.revision, reload=self._reload,
            advance=self._advance, translate=self._translate, write=local_copy.write,
            logger=logger, max_reconnect_delay=30.0,
        )
        self._follower.start()
        await self._follower.wait_until_following(10.0)
    """

    def __init__(
        self,
        api: BaseAPIClient,
        watch_path: str,
        *,
        kind: str,
        subject: str,
        version_key: str,
        current_version: Callable[[], int],
        reload: Callable[[], Awaitable[None]],
        advance: Callable[[Change], Awaitable[None]],
        translate: Callable[[ClientError], KeelHTTPError],
        write: Callable[[SavedT], None] | None,
        logger: logging.Logger,
        max_reconnect_delay: float,
    ) -> None:
        self.api = api
        self.watch_path = watch_path
        self.subject = subject
        self.version_key = version_key
        #: The change callbacks, called in order by :meth:`publish`.
        self.callbacks: list[Callable[[ChangeT], Awaitable[None] | None]] = []
        self._kind = kind
        self._current_version = current_version
        self._reload = reload
        self._advance = advance
        self._translate = translate
        self._saver = LatestSaver(write, logger=logger) if write is not None else None
        self._logger = logger
        self._max_reconnect_delay = max_reconnect_delay
        self._task: asyncio.Task[None] | None = None
        self._following = asyncio.Event()

    @property
    def is_started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Follow the stream in a background task (until :meth:`aclose`)."""
        if self._task is not None:
            raise RuntimeError(f"already following {self.watch_path}")
        self._task = asyncio.create_task(self._follow(), name=f"keel-{self._kind}-{self.subject}")

    async def wait_until_following(self, timeout: float) -> None:
        """Return once the stream is open and the snapshot read after it (at most
        ``timeout`` seconds; a slower stream is still followed)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._following.wait()

    async def save(self, snapshot: SavedT) -> None:
        """Write ``snapshot`` to the local copy now (at start) and wait for it."""
        if self._saver is not None:
            self._saver.save(snapshot)
            await self._saver.flush()

    async def publish(self, change: ChangeT | None, snapshot: SavedT) -> None:
        """After a swap: the callbacks (unless ``change`` is ``None``), then the local copy,
        written in the background. The copy is handed over even if a callback is cancelled
        (the client is closing), so :meth:`aclose` still writes it."""
        try:
            if change is not None:
                await self._notify(change)
        finally:
            if self._saver is not None:
                self._saver.save(snapshot)

    async def aclose(self) -> None:
        """Stop following, then wait for the local copy's last write."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._saver is not None:
            await self._saver.flush()

    async def _notify(self, change: ChangeT) -> None:
        for callback in list(self.callbacks):
            try:
                result = callback(change)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self._logger.exception(
                    "keel %s: change callback %s failed (%s %s)",
                    self._kind,
                    getattr(callback, "__qualname__", repr(callback)),
                    self.version_key,
                    getattr(change, self.version_key, "?"),
                )

    async def _follow(self) -> None:
        position: int | None = None
        failures = 0
        while True:
            try:
                stream: AsyncGenerator[Change, None] = watch_changes(  # type: ignore[assignment]
                    self.api,
                    self.watch_path,
                    last_event_id=position,
                    max_reconnect_delay=self._max_reconnect_delay,
                    yield_ready=True,
                )
                async with contextlib.aclosing(stream) as changes:
                    async for change in changes:
                        if change.is_ready or change.is_reset:
                            # From here on nothing is missed: read what came before.
                            await self._reload()
                            self._following.set()
                        elif change.subject == self.subject and is_newer(
                            change.data.get(self.version_key), self._current_version()
                        ):
                            await self._advance(change)
                        # Only once handled: a failed read reopens from before the event.
                        position = change.id
                        failures = 0
            except ClientError as error:  # the stream was refused (401, 403, 404)
                self._logger.warning(
                    "keel %s: the watch of %s was refused (%s); retrying",
                    self._kind,
                    self.subject,
                    self._translate(error).message,
                )
            except KeelHTTPError as error:  # a snapshot read failed or was refused
                self._logger.warning(
                    "keel %s: reading %s failed (%s); retrying", self._kind, self.subject, error
                )
            except Exception:  # never let the follower die: memory keeps serving
                self._logger.exception("keel %s: following %s failed", self._kind, self.subject)
            failures += 1
            await asyncio.sleep(
                RETRY_BASE + backoff(failures - 1, base=RETRY_BASE, cap=self._max_reconnect_delay)
            )
