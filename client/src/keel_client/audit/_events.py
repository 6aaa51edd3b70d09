"""Audit events and financial transactions as they travel: built and checked on the caller's
side, so a bad one fails at the call site rather than being refused later in the background.

Pure: no I/O, no HTTP stack (``AuditClient.record`` and ``AuditAPI`` send what these build).

Example::

    event = build_event("billing.invoice.refund", target=EventTarget("invoice", "42"))
    line = encode_event(event)          # one compact JSON line: the spool's and the wire's
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NotRequired, TypedDict, Unpack

from keel_client.audit._transactions import (
    CURRENCY_PATTERN,
    check_amount,
    check_authorising_chain,
    check_transaction_id,
    check_transaction_text,
)
from keel_client.audit._vocabulary import (
    ACTION_PATTERN,
    EVENT_ID_PATTERN,
    FIELD_LIMITS,
    MAX_DATA_DEPTH,
    MAX_SAFE_INTEGER,
    Outcome,
    Sensitivity,
)

__all__ = [
    "EventActor",
    "EventFields",
    "EventTarget",
    "TransactionFields",
    "build_event",
    "build_transaction",
    "encode_event",
    "format_time",
    "new_event_id",
]


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
    # os.urandom and plain formatting, not secrets and uuid: those two (random, platform...)
    # would be most of what importing keel_client.audit costs the server.
    value = (millis & (2**48 - 1)) << 80 | int.from_bytes(os.urandom(10))
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant 0b10
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


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
