"""``Journal``: a local write-ahead journal of JSON lines, and its errors: the durable spool
under the audit client (``keel_client.audit.AuditSpool``) and the jobs client's enqueue spool
(``keel_client.jobs``).

A client appends a line here and returns; its sender peeks the oldest lines, sends them, and
acknowledges what Keel stored. The journal's directory::

    spool.lock                    flock-ed by the process that owns the spool; holds its pid
    acknowledged.json             {"segment": 7, "offset": 52311}: everything before is done
    segment-000000000007.jsonl    one JSON object per line, append-only, exactly the wire JSON
    segment-000000000008.jsonl    a new segment per start and every ``segment_bytes``

After a crash, even ``kill -9``, the next journal opened on the directory queues the
unacknowledged lines first, in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import types
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Self

__all__ = [
    "DEFAULT_MAX_SPOOL_BYTES",
    "DEFAULT_SEGMENT_BYTES",
    "Journal",
    "SpoolError",
    "SpoolFullError",
    "SpoolLockedError",
]


DEFAULT_MAX_SPOOL_BYTES = 64 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024

LOCK_FILE = "spool.lock"
ACK_FILE = "acknowledged.json"
_SEGMENT_NAME = re.compile(r"^segment-(\d{12})\.jsonl$")


class SpoolError(Exception):
    """A spool cannot take the line: not open, full, locked or not writable.

    Example::

        try:
            audit.record("billing.invoice.refund", target=EventTarget("invoice", "42"))
        except SpoolError as error:
            raise ServiceUnavailable("audit trail unavailable") from error
    """


class SpoolLockedError(SpoolError):
    """Another client (in this process or another) holds the spool directory.

    Each process needs a spool directory of its own: two writers on one journal would
    interleave and acknowledge each other's lines.
    """


class SpoolFullError(SpoolError):
    """Unacknowledged lines reached ``max_spool_bytes``: Keel has been unreachable too long.

    Nothing is dropped silently; the caller decides (refuse the operation, alert, wait).
    """


@dataclass(slots=True)
class _Entry:
    """A pending journal line and where it ends: acknowledging it moves the mark there."""

    line: bytes
    segment: int
    end: int


class Journal:
    """A durable FIFO of JSON lines: an append-only journal plus an acknowledged mark.

    ``append`` writes the line to the active segment file (and to disk with ``fsync=True``)
    before it returns; ``peek`` hands out the oldest pending lines; ``acknowledge(n)``
    moves the mark past the oldest ``n`` (renaming a small file into place) and deletes the
    segments wholly before it. ``open`` takes an exclusive ``flock`` on the directory, drops a
    torn last line left by a crash, and queues every line after the mark, in order. Lines
    append from any thread; one consumer peeks and acknowledges.

    Example::

        with Journal("/var/spool/myapp-audit", name="audit spool") as spool:
            spool.append(encode_event(build_event("app.session.login")))
            lines = spool.peek(100)
            ...  # send them
            spool.acknowledge(len(lines))

    Without ``fsync`` a line survives the process's crash (it is in the OS), not a power
    loss. The mark is written after the lines reached Keel, so at worst a crash resends
    lines Keel already has: each line carries its own idempotency (an event id, an
    ``Idempotency-Key``), so Keel answers a resent one with its first answer.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        name: str = "spool",
        service: str = "Keel",
        logger: logging.Logger | None = None,
        max_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = False,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.directory = Path(directory)
        #: What the journal is called in errors and logs ("audit spool", "jobs spool").
        self.name = name
        self._service = service
        self._logger = logger or logging.getLogger("keel_client")
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._ack_lock = threading.Lock()
        self._entries: deque[_Entry] = deque()
        self._segments: deque[int] = deque()
        self._pending_bytes = 0
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._owner_pid = 0
        self._segment = 0
        self._segment_size = 0
        #: Lines found unacknowledged by ``open``.
        self.recovered = 0
        #: Lines appended since ``open``.
        self.appended = 0
        #: Lines acknowledged since ``open``.
        self.acknowledged = 0
        #: Bytes of a torn last line dropped by ``open`` (a write cut short by a crash).
        self.torn_bytes = 0
        #: Lines ``open`` skipped because they were not a JSON object (damaged on disk).
        self.damaged_lines = 0

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    @property
    def pending_count(self) -> int:
        """Lines appended or recovered and not yet acknowledged."""
        return len(self._entries)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Lock the directory, recover its journal and start a new segment.

        Raises :class:`SpoolLockedError` when another client holds the directory.
        """
        if self._fd is not None:
            raise SpoolError(f"the {self.name} {self.directory} is already open")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = _lock_directory(self.directory, self.name)
        self._owner_pid = os.getpid()
        try:
            self._start_segment(self._recover())
        except BaseException:
            self._entries.clear()
            self._segments.clear()
            self._pending_bytes = 0
            self._release_lock()
            raise

    def close(self) -> None:
        """Close the journal and release the directory; pending lines stay on disk."""
        with self._lock:
            fd, self._fd = self._fd, None
            self._entries.clear()
            self._pending_bytes = 0
        if fd is not None:
            try:
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        self._release_lock()

    def append(self, line: bytes) -> None:
        """Write one line (a JSON object) to the journal; it is pending until acknowledged.

        Raises :class:`SpoolFullError` past ``max_bytes`` of pending lines, and
        :class:`SpoolError` when the spool is closed or the write fails (the journal is left
        as it was: no partial line).
        """
        if b"\n" in line:
            raise ValueError("a spool line cannot contain a newline")
        record = line + b"\n"
        with self._lock:
            if self._fd is None:
                raise SpoolError(f"the {self.name} {self.directory} is not open")
            if os.getpid() != self._owner_pid:
                # A forked child shares the descriptors and the lock: two writers, one journal.
                raise SpoolError(
                    f"the {self.name} {self.directory} belongs to process {self._owner_pid}; "
                    "after a fork, start a client with a spool directory of its own"
                )
            if self._pending_bytes + len(record) > self.max_bytes:
                raise SpoolFullError(
                    f"the {self.name} {self.directory} holds {self._pending_bytes} bytes of "
                    f"unacknowledged lines (max_spool_bytes={self.max_bytes}); "
                    f"is {self._service} reachable?"
                )
            if self._segment_size > 0 and self._segment_size + len(record) > self.segment_bytes:
                self._rotate()
            try:
                _write_all(self._fd, record, truncate_to=self._segment_size)
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as error:
                raise SpoolError(
                    f"cannot write to the {self.name} {self.directory}: {error.strerror}"
                ) from error
            self._segment_size += len(record)
            self._entries.append(_Entry(line, self._segment, self._segment_size))
            self._pending_bytes += len(record)
            self.appended += 1

    def peek(self, max_count: int, max_bytes: int | None = None) -> list[bytes]:
        """The oldest pending lines: at most ``max_count``, and at most ``max_bytes`` in all
        (newlines counted) unless that would be none at all."""
        lines: list[bytes] = []
        size = 0
        with self._lock:
            for entry in self._entries:
                if len(lines) >= max_count:
                    break
                size += len(entry.line) + 1
                if lines and max_bytes is not None and size > max_bytes:
                    break
                lines.append(entry.line)
        return lines

    def acknowledge(self, count: int) -> None:
        """Mark the oldest ``count`` pending lines done, durably; they are never replayed."""
        if count <= 0:
            return
        with self._ack_lock:
            with self._lock:
                if count > len(self._entries):
                    raise ValueError(f"only {len(self._entries)} lines are pending")
                last = self._entries[0]
                for _ in range(count):
                    last = self._entries.popleft()
                    self._pending_bytes -= len(last.line) + 1
                self.acknowledged += count
                done = []
                while self._segments and self._segments[0] < last.segment:
                    done.append(self._segments.popleft())
            # The mark first, then the files: a crash in between leaves files the next open
            # deletes, never a mark pointing into a deleted segment.
            try:
                self._write_mark(last.segment, last.end)
            except OSError as error:
                # The lines are done all the same; only a restart would resend them.
                raise SpoolError(
                    f"cannot write the acknowledged mark of {self.directory}: {error.strerror}"
                ) from error
            for segment in done:
                with contextlib.suppress(FileNotFoundError):
                    self._segment_path(segment).unlink()

    def _segment_path(self, segment: int) -> Path:
        return self.directory / f"segment-{segment:012d}.jsonl"

    def _recover(self) -> int:
        """Queue every line after the mark; delete segments with none. Returns the number of
        the next segment, above every segment this directory ever had."""
        mark = self._read_mark()
        segments = sorted(
            int(match.group(1))
            for path in self.directory.iterdir()
            if (match := _SEGMENT_NAME.match(path.name))
        )
        next_segment = max([*segments, mark[0] if mark is not None else 0]) + 1
        for segment in segments:
            path = self._segment_path(segment)
            if mark is not None and segment < mark[0]:
                path.unlink()
                continue
            data = path.read_bytes()
            complete = data.rfind(b"\n") + 1
            if complete < len(data):
                # A write cut short by a crash: record() never returned for this line.
                self.torn_bytes += len(data) - complete
                os.truncate(path, complete)
            position = mark[1] if mark is not None and segment == mark[0] else 0
            position = min(position, complete)
            queued = len(self._entries)
            for line in data[position:complete].split(b"\n")[:-1]:
                position += len(line) + 1
                if not _is_json_object(line):
                    self.damaged_lines += 1
                    self._logger.warning(
                        "skipping a damaged line of the %s",
                        self.name,
                        extra={"spool_segment": path.name, "spool_offset": position},
                    )
                    continue
                self._entries.append(_Entry(line, segment, position))
                self._pending_bytes += len(line) + 1
            if len(self._entries) > queued:
                self._segments.append(segment)
            else:
                # Nothing left to send in it. New segments are numbered above it, so the
                # mark never points below a segment with pending lines.
                path.unlink()
        self.recovered = len(self._entries)
        return next_segment

    def _read_mark(self) -> tuple[int, int] | None:
        path = self.directory / ACK_FILE
        try:
            mark = json.loads(path.read_bytes())
            segment, offset = mark["segment"], mark["offset"]
            if isinstance(segment, int) and isinstance(offset, int):
                return segment, offset
            raise ValueError("not integers")
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            # Replaying everything is safe: every line carries its own idempotency.
            self._logger.warning(
                "the %s's acknowledged mark is unreadable; replaying all", self.name
            )
            return None

    def _write_mark(self, segment: int, offset: int) -> None:
        temporary = self.directory / (ACK_FILE + ".tmp")
        body = json.dumps({"segment": segment, "offset": offset}).encode()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, body, truncate_to=0)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.directory / ACK_FILE)
        if self.fsync:
            _fsync_directory(self.directory)

    def _start_segment(self, segment: int) -> None:
        path = self._segment_path(segment)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o600)
        self._segment = segment
        self._segment_size = os.fstat(self._fd).st_size
        self._segments.append(segment)
        if self.fsync:
            _fsync_directory(self.directory)

    def _rotate(self) -> None:
        assert self._fd is not None
        if self.fsync:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        self._start_segment(self._segment + 1)

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock


def _lock_directory(directory: Path, name: str) -> int:
    import fcntl  # POSIX only; imported here so the importers of this module import anywhere

    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise SpoolLockedError(
            f"the {name} {directory} is in use by another client{by}; "
            "give each process a spool directory of its own"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _write_all(fd: int, data: bytes, *, truncate_to: int) -> None:
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError:
        # A partial line would glue itself to the next one: cut the file back first.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, truncate_to)
        raise


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
