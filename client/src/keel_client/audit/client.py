"""Record audit events without losing one: ``AuditClient``, its spool, and ``AuditAPI``.

``AuditClient.record()`` writes the event to a local write-ahead journal (the spool) and
returns; a background task sends the journal to Keel in batches and marks what Keel
acknowledged::

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

The spool directory::

    spool.lock                    flock-ed by the process that owns the spool; holds its pid
    acknowledged.json             {"segment": 7, "offset": 52311}: everything before is done
    segment-000000000007.jsonl    one event per line, append-only, exactly the wire JSON
    segment-000000000008.jsonl    a new segment per start and every ``segment_bytes``
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import random as _random
import re
import secrets
import threading
import time
import types
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, NotRequired, Protocol, Self, TypedDict, TypeVar, Unpack

import httpx
import pydantic
from pydantic import SecretStr

from keel_client._env import as_auth, env_settings
from keel_client.audit._vocabulary import (
    ACTION_PATTERN,
    EVENT_ID_PATTERN,
    FIELD_LIMITS,
    MAX_BATCH_SIZE,
    MAX_DATA_DEPTH,
    MAX_SAFE_INTEGER,
    Outcome,
    Sensitivity,
)
from keel_client.audit.heads import TreeHead
from keel_client.audit.transactions import (
    CURRENCY_PATTERN,
    check_amount,
    check_authorising_chain,
    check_transaction_id,
    check_transaction_text,
    currency_minor_units,
)
from keel_client.http import (
    BaseAPIClient,
    CircuitOpenError,
    HTTPStatusError,
    KeelHTTPError,
    backoff,
    parse_retry_after,
)

__all__ = [
    "AuditAPI",
    "AuditClient",
    "AuditClientStats",
    "AuditRecorder",
    "AuditSpool",
    "BatchReceipts",
    "EventActor",
    "EventFields",
    "EventPage",
    "EventReceipt",
    "EventTarget",
    "FailureStep",
    "Outcome",
    "RejectedEvent",
    "Sensitivity",
    "SpoolError",
    "SpoolFullError",
    "SpoolLockedError",
    "SyncAuditClient",
    "TransactionFields",
    "TransactionReceipt",
    "build_event",
    "build_transaction",
    "check_amount",
    "currency_minor_units",
    "encode_event",
    "failure_step",
    "new_event_id",
    "retry_delay",
]

logger = logging.getLogger("keel_client.audit")

BATCH_PATH = "/audit/v1/events/batch"
EVENTS_PATH = "/audit/v1/events"
ACTIONS_PATH = "/audit/v1/actions"

DEFAULT_BATCH_SIZE = 500
#: Keel refuses bodies over 1 MiB; half of it leaves room for any proxy in between.
DEFAULT_MAX_BATCH_BYTES = 512 * 1024
DEFAULT_MAX_SPOOL_BYTES = 64 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024

LOCK_FILE = "spool.lock"
ACK_FILE = "acknowledged.json"
_SEGMENT_NAME = re.compile(r"^segment-(\d{12})\.jsonl$")


# --- errors -------------------------------------------------------------------------------


class SpoolError(Exception):
    """The audit spool cannot take the event: not open, full, locked or not writable.

    Example::

        try:
            audit.record("billing.invoice.refund", target=EventTarget("invoice", "42"))
        except SpoolError as error:
            raise ServiceUnavailable("audit trail unavailable") from error
    """


class SpoolLockedError(SpoolError):
    """Another client (in this process or another) holds the spool directory.

    Each process needs a spool directory of its own: two writers on one journal would
    interleave and acknowledge each other's events.
    """


class SpoolFullError(SpoolError):
    """Unacknowledged events reached ``max_spool_bytes``: Keel has been unreachable too long.

    Nothing is dropped silently; the caller decides (refuse the operation, alert, wait).
    """


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventActor:
    """Who performed the operation; every field is optional.

    Example::

        EventActor("user", "u_42", display="Alice", ip="203.0.113.7", user_agent="curl/8")
    """

    type: str | None = None
    id: str | None = None
    display: str | None = None
    ip: str | None = None
    user_agent: str | None = None

    def to_json(self) -> dict[str, str]:
        return _without_none(
            "actor",
            type=self.type,
            id=self.id,
            display=self.display,
            ip=self.ip,
            user_agent=self.user_agent,
        )


@dataclass(frozen=True, slots=True)
class EventTarget:
    """What the operation was performed on.

    Example::

        EventTarget("invoice", "in_1001")
    """

    type: str | None = None
    id: str | None = None

    def to_json(self) -> dict[str, str]:
        return _without_none("target", type=self.type, id=self.id)


def _without_none(prefix: str, **values: str | None) -> dict[str, str]:
    return {
        name: _text(f"{prefix}.{name}", value)
        for name, value in values.items()
        if value is not None
    }


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    limit = FIELD_LIMITS[name]
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")
    return value


def _check_data(value: object, depth: int = 0) -> None:
    if depth > MAX_DATA_DEPTH:
        raise ValueError(f"data is nested deeper than {MAX_DATA_DEPTH} levels")
    if isinstance(value, Mapping):
        for item in value.values():
            _check_data(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_data(item, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
        raise ValueError("integers beyond 2**53 lose precision in JSON: record them as strings")


class EventFields(TypedDict, total=False):
    """The fields of an event besides its action; every one is optional.

    - ``id``: the event's ID (at most 64 characters); default: a new UUIDv7. Pass your own to
      make recording the same fact twice harmless.
    - ``time``: when it happened (timezone-aware); default: now.
    - ``actor``, ``target``: :class:`EventActor`, :class:`EventTarget`.
    - ``outcome``: :class:`Outcome` or its value; ``sensitivity``: :class:`Sensitivity`.
    - ``reason``, ``request_id``, ``trace_id``: strings.
    - ``data``: a JSON object (a mapping of JSON values).

    Example::

        fields: EventFields = {"outcome": Outcome.DENIED, "reason": "mfa required"}
        audit.record("app.session.login", **fields)
    """

    id: str
    time: datetime
    actor: EventActor
    target: EventTarget
    outcome: Outcome | str
    reason: str
    request_id: str
    trace_id: str
    sensitivity: Sensitivity | str
    data: Mapping[str, Any]


def new_event_id() -> str:
    """A new UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits.

    IDs made later sort later (to the millisecond), so Keel's index stays append-mostly.
    """
    millis = time.time_ns() // 1_000_000
    value = (millis & (2**48 - 1)) << 80 | secrets.randbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant 0b10
    return str(uuid.UUID(int=value))


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds: ``2025-01-31T08:15:00.123456Z``."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("an event time must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_event(action: str, **fields: Unpack[EventFields]) -> dict[str, Any]:
    """The wire form of an event, checked; absent fields are left out.

    ``id`` and ``time`` are set here when not given, so the event keeps them through every
    retry and replay. Raises ``ValueError`` (or ``TypeError``) for a field Keel would refuse,
    so a bad event fails at the call site instead of in the background.
    """
    if not isinstance(action, str) or not ACTION_PATTERN.fullmatch(action):
        raise ValueError(
            f"action {action!r} is not service.resource.verb (lowercase, dot-separated)"
        )
    event_id = fields.get("id")
    if event_id is None:
        event_id = new_event_id()
    elif not isinstance(event_id, str) or not EVENT_ID_PATTERN.fullmatch(event_id):
        raise ValueError("an event id is 1 to 64 of A-Z a-z 0-9 . _ : -")
    moment = fields.get("time")
    event: dict[str, Any] = {
        "id": event_id,
        "time": format_time(moment if moment is not None else datetime.now(UTC)),
        "action": action,
    }
    actor = fields.get("actor")
    if actor is not None:
        if not isinstance(actor, EventActor):
            raise TypeError("actor must be an EventActor")
        event["actor"] = actor.to_json()
    target = fields.get("target")
    if target is not None:
        if not isinstance(target, EventTarget):
            raise TypeError("target must be an EventTarget")
        event["target"] = target.to_json()
    outcome = fields.get("outcome")
    if outcome is not None:
        event["outcome"] = Outcome(outcome).value
    for name, value in (
        ("reason", fields.get("reason")),
        ("request_id", fields.get("request_id")),
        ("trace_id", fields.get("trace_id")),
    ):
        if value is not None:
            event[name] = _text(name, value)
    sensitivity = fields.get("sensitivity")
    if sensitivity is not None:
        event["sensitivity"] = Sensitivity(sensitivity).value
    data = fields.get("data")
    if data is not None:
        if not isinstance(data, Mapping):
            raise TypeError("data must be a mapping (a JSON object)")
        _check_data(data)
        event["data"] = dict(data)
    return event


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The event as one line of compact UTF-8 JSON: its journal line and its wire form.

    Raises ``TypeError`` for a value JSON cannot hold and ``ValueError`` for NaN or infinity.
    """
    # JSON escapes control characters inside strings, so the line never holds a raw newline.
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# --- financial transactions ---------------------------------------------------------------
#
# A transaction is not spooled: ``record_transaction`` posts it to Keel's transactions
# endpoint and returns its receipt, retrying what may be retried. Keel checks its shape
# (amount, currency, accounts, authorising chain) and records it under Keel's own action
# ``finance.transaction.record``, which the events endpoints (and so the spool) refuse.

TRANSACTIONS_PATH = "/audit/v1/transactions"


class TransactionFields(TypedDict):
    """A financial transaction, for :meth:`AuditClient.record_transaction`.

    - ``transaction_id``: your id of the transaction (1 to 60 of ``A-Z a-z 0-9 . _ : -``);
      recording it again with the same fields is harmless.
    - ``amount``: a :class:`~decimal.Decimal` (never a float), negative for a reversal;
      stored as its exact text, at most the currency's decimal places.
    - ``currency``: an ISO 4217 code in capitals (``"EUR"``).
    - ``from_account``, ``to_account``: the accounts debited and credited.
    - ``reason``: why (an invoice number, a refund ticket).
    - ``user``: who made it, a user id or an :class:`EventActor` with an id.
    - ``authorising_chain``: who approved it, in order (``[]`` when no one had to).
    - ``time``: when it happened (timezone-aware); default: now.
    - ``actor``: who performed it, when not the user (a scheduler, a service account).

    Example::

        fields: TransactionFields = {
            "transaction_id": "tx-2026-0042",
            "amount": Decimal("1234.50"),
            "currency": "EUR",
            "from_account": "ops-eur",
            "to_account": "supplier-981",
            "reason": "invoice INV-118",
            "user": "u-42",
            "authorising_chain": ["u-7", "u-9"],
        }
        receipt = await audit.record_transaction(**fields)
    """

    transaction_id: str
    amount: Decimal
    currency: str
    from_account: str
    to_account: str
    reason: str
    user: EventActor | str
    authorising_chain: Sequence[str]
    time: NotRequired[datetime]
    actor: NotRequired[EventActor]


def build_transaction(**fields: Unpack[TransactionFields]) -> dict[str, Any]:
    """The wire form of a transaction (``POST /audit/v1/transactions``), checked.

    Raises ``TypeError`` for a float amount (or any other wrong type) and ``ValueError`` for
    what Keel would refuse, except an unknown currency code, which only Keel knows (it
    answers 422). ``time`` is set here when absent, so a retry sends the same transaction.
    """
    currency = fields["currency"]
    if not isinstance(currency, str) or not CURRENCY_PATTERN.fullmatch(currency):
        raise ValueError(f"currency {currency!r} is not an ISO 4217 code such as 'EUR'")
    user = fields["user"]
    if isinstance(user, EventActor):
        if not user.id:
            raise ValueError("the transaction's user needs an id")
        user_json: str | dict[str, str] = user.to_json()
    else:
        user_json = check_transaction_text("user", user)
    moment = fields.get("time")
    body: dict[str, Any] = {
        "transaction_id": check_transaction_id(fields["transaction_id"]),
        "amount": check_amount(fields["amount"], currency),
        "currency": currency,
        "from_account": check_transaction_text("from_account", fields["from_account"]),
        "to_account": check_transaction_text("to_account", fields["to_account"]),
        "reason": check_transaction_text("reason", fields["reason"]),
        "user": user_json,
        "authorising_chain": check_authorising_chain(fields["authorising_chain"]),
        "time": format_time(moment if moment is not None else datetime.now(UTC)),
    }
    actor = fields.get("actor")
    if actor is not None:
        if not isinstance(actor, EventActor):
            raise TypeError("actor must be an EventActor")
        body["actor"] = actor.to_json()
    return body


# --- the spool ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """A pending journal line and where it ends: acknowledging it moves the mark there."""

    line: bytes
    segment: int
    end: int


class AuditSpool:
    """A durable FIFO of event lines: an append-only journal plus an acknowledged mark.

    ``append`` writes the line to the active segment file (and to disk with ``fsync=True``)
    before it returns; ``peek`` hands out the oldest pending lines; ``acknowledge(n)``
    moves the mark past the oldest ``n`` (renaming a small file into place) and deletes the
    segments wholly before it. ``open`` takes an exclusive ``flock`` on the directory, drops a
    torn last line left by a crash, and queues every line after the mark, in order. Lines
    append from any thread; one consumer peeks and acknowledges.

    Example::

        with AuditSpool("/var/spool/myapp-audit") as spool:
            spool.append(encode_event(build_event("app.session.login")))
            lines = spool.peek(100)
            ...  # send them
            spool.acknowledge(len(lines))

    Without ``fsync`` a line survives the process's crash (it is in the OS), not a power
    loss. The mark is written after the events reached Keel, so at worst a crash resends
    events Keel already has, which it answers with their original receipts.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_SPOOL_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = False,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.directory = Path(directory)
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
            raise SpoolError(f"the audit spool {self.directory} is already open")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd = _lock_directory(self.directory)
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
        """Write one event line to the journal; it is pending until acknowledged.

        Raises :class:`SpoolFullError` past ``max_bytes`` of pending lines, and
        :class:`SpoolError` when the spool is closed or the write fails (the journal is left
        as it was: no partial line).
        """
        if b"\n" in line:
            raise ValueError("a spool line cannot contain a newline")
        record = line + b"\n"
        with self._lock:
            if self._fd is None:
                raise SpoolError(f"the audit spool {self.directory} is not open")
            if os.getpid() != self._owner_pid:
                # A forked child shares the descriptors and the lock: two writers, one journal.
                raise SpoolError(
                    f"the audit spool {self.directory} belongs to process {self._owner_pid}; "
                    "after a fork, start a client with a spool directory of its own"
                )
            if self._pending_bytes + len(record) > self.max_bytes:
                raise SpoolFullError(
                    f"the audit spool {self.directory} holds {self._pending_bytes} bytes of "
                    f"unacknowledged events (max_spool_bytes={self.max_bytes}); "
                    "is the audit service reachable?"
                )
            if self._segment_size > 0 and self._segment_size + len(record) > self.segment_bytes:
                self._rotate()
            try:
                _write_all(self._fd, record, truncate_to=self._segment_size)
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as error:
                raise SpoolError(
                    f"cannot write to the audit spool {self.directory}: {error.strerror}"
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
                    logger.warning(
                        "skipping a damaged line of the audit spool",
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
            # Replaying everything is safe: Keel answers known event ids with their receipts.
            logger.warning("the audit spool's acknowledged mark is unreadable; replaying all")
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


def _lock_directory(directory: Path) -> int:
    import fcntl  # POSIX only; imported here so the rest of keel_client.audit imports anywhere

    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise SpoolLockedError(
            f"the audit spool {directory} is in use by another client{by}; "
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


# --- the API ------------------------------------------------------------------------------


class EventReceipt(pydantic.BaseModel):
    """Keel's acknowledgement of one event: its place in the tenant's Merkle tree."""

    id: str
    leaf_index: int
    leaf_hash: str


class BatchReceipts(pydantic.BaseModel):
    """The answer to a batch: one receipt per event, in request order, and the signed tree
    head that includes them (verify it with ``keel_client.audit.verify_tree_head``)."""

    receipts: list[EventReceipt]
    tree_head: dict[str, Any] = {}

    def signed_head(self) -> TreeHead:
        """``tree_head`` parsed; raises ``ProofError`` when it is not a signed tree head."""
        return TreeHead.from_json(self.tree_head)


class TransactionReceipt(EventReceipt):
    """Keel's acknowledgement of a transaction: its event's id (``txn:<transaction id>``),
    leaf index and hash, and the signed tree head that includes it."""

    tree_head: dict[str, Any] = {}

    def signed_head(self) -> TreeHead:
        """``tree_head`` parsed; raises ``ProofError`` when it is not a signed tree head."""
        return TreeHead.from_json(self.tree_head)


class EventPage(pydantic.BaseModel):
    """One page of stored events; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: list[dict[str, Any]]
    next_cursor: str | None = None


class AuditAPI(BaseAPIClient):
    """Keel's audit endpoints, one HTTP call each, on the resilient base client.

    ``AuditClient`` sends through one of these; use it directly to register actions, read
    events, or send a batch and wait for its receipts.

    Example::

        async with AuditAPI("https://keel.internal", auth=BearerToken(api_key)) as api:
            await api.register_action(
                "billing.invoice.refund", description="Refund issued", category="billing"
            )
            receipts = await api.send_events([build_event("billing.invoice.refund")])
            async for event in api.iter_events(action="billing."):
                ...

    Errors are ``keel_client.http`` errors: a refused event is a ``ClientError`` with status
    422 (validation) or 409 (the id was stored with other content).
    """

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Self:
        """A client for ``KEEL_URL`` authenticated with ``KEEL_TOKEN`` (an API key or token);
        ``options`` are ``BaseAPIClient``'s."""
        url, token = env_settings(environ)
        options.setdefault("auth", as_auth(token))
        return cls(url, **options)

    async def send_events(self, events: Sequence[Mapping[str, Any]]) -> BatchReceipts:
        """Store events atomically (1 to 1000, built by :func:`build_event`); receipts in
        order. An event sent again with the same id and content gets its original receipt."""
        return await self.send_lines([encode_event(event) for event in events])

    async def send_lines(self, lines: Sequence[bytes]) -> BatchReceipts:
        """:meth:`send_events` for events already encoded by :func:`encode_event`."""
        if not 0 < len(lines) <= MAX_BATCH_SIZE:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH_SIZE} events")
        body = b'{"events":[' + b",".join(lines) + b"]}"
        return await self.post(
            BATCH_PATH,
            content=body,
            headers={"Content-Type": "application/json"},
            response_model=BatchReceipts,
            # Keel keys events by id, so sending a batch again is harmless: retryable.
            idempotent=True,
        )

    async def record_transaction(self, **fields: Unpack[TransactionFields]) -> TransactionReceipt:
        """Record a financial transaction now (see :class:`TransactionFields`); its receipt.

        Checked first (:func:`build_transaction`: a float amount is a ``TypeError``), then
        sent, retried on connection errors, timeouts and 429/502/503/504: Keel keys the event
        by the transaction id, so a resend answers the first receipt. The same id with other
        fields is a ``ClientError`` with status 409; an unknown currency one with status 422.
        """
        return await self.post(
            TRANSACTIONS_PATH,
            json=build_transaction(**fields),
            response_model=TransactionReceipt,
            idempotent=True,
        )

    async def register_action(
        self,
        action: str,
        *,
        description: str,
        category: str = "change",
        sensitivity: Sensitivity | str = Sensitivity.INTERNAL,
        sensitive_fields: Sequence[str] = (),
    ) -> None:
        """Register (or update) an action for the caller's tenant; events need it first."""
        if not ACTION_PATTERN.fullmatch(action):
            raise ValueError(f"action {action!r} is not of the form service.resource.verb")
        await self.put(
            f"{ACTIONS_PATH}/{action}",
            json={
                "description": description,
                "category": category,
                "sensitivity": Sensitivity(sensitivity).value,
                "sensitive_fields": list(sensitive_fields),
            },
        )

    async def list_events(
        self, *, action: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> EventPage:
        """One page of stored events, ``action`` a prefix (``"billing."``), limit 1 to 500."""
        params: dict[str, str | int] = {"limit": limit}
        if action is not None:
            params["action"] = action
        if cursor is not None:
            params["cursor"] = cursor
        return await self.get(EVENTS_PATH, params=params, response_model=EventPage)

    async def iter_events(
        self, *, action: str | None = None, page_size: int = 500
    ) -> AsyncIterator[dict[str, Any]]:
        """Every stored event (of an ``action`` prefix), page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_events(action=action, limit=page_size, cursor=cursor)
            for item in page.items:
                yield item
            if page.next_cursor is None or not page.items:
                return
            cursor = page.next_cursor


# --- sending policy -----------------------------------------------------------------------


class FailureStep(enum.StrEnum):
    """What the sender does after a batch failed."""

    #: Keep the events, back off, send them again: Keel is unreachable or unwilling now.
    RETRY = "retry"
    #: Send the batch's events one at a time to find the ones Keel refuses.
    ISOLATE = "isolate"
    #: Report and drop this one event: Keel refused it and always will.
    REJECT = "reject"


#: Answers that refuse the events themselves (malformed, unregistered action, id reused with
#: other content, too large): sending them again cannot succeed. Every other failure,
#: 401/403/404 included, is a deployment problem that a fix on Keel's side ends, so the
#: events wait for it.
REJECTION_STATUSES = frozenset({400, 409, 413, 422})


def failure_step(status: int | None, batch_size: int) -> FailureStep:
    """The next step after a batch of ``batch_size`` events failed with ``status`` (``None``:
    no answer at all)."""
    if status not in REJECTION_STATUSES:
        return FailureStep.RETRY
    return FailureStep.ISOLATE if batch_size > 1 else FailureStep.REJECT


def retry_delay(
    failures: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    random: Callable[[], float] = _random.random,
) -> float:
    """Seconds before sending again after ``failures`` failures in a row (at least 1).

    Full-jitter backoff, so the clients of a fleet that lost Keel together come back spread
    out; never sooner than the ``Retry-After`` Keel or the circuit breaker asked for (capped).
    """
    delay = backoff(max(failures - 1, 0), base=base, cap=cap, random=random)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


@dataclass(frozen=True, slots=True)
class RejectedEvent:
    """An event Keel refused for good; handed to ``on_rejected`` and then dropped.

    ``event`` is the event as recorded (for a dead-letter store of the application's own);
    the rest says why. Logs carry only the id, action, status and code.
    """

    event: dict[str, Any]
    status: int | None
    code: str
    detail: str | None
    request_id: str | None

    @property
    def id(self) -> str | None:
        value = self.event.get("id")
        return value if isinstance(value, str) else None

    @property
    def action(self) -> str | None:
        value = self.event.get("action")
        return value if isinstance(value, str) else None


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


# --- the client ---------------------------------------------------------------------------


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
