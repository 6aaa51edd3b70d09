"""The audit event vocabulary Keel and its SDK share: outcomes, sensitivities, the shape of
an action's name and event id, and the limits Keel puts on an event's fields.

Defined once, here: the SDK checks an event against it when the event is recorded (so a bad
one fails at the call site, not later in the background), and the Keel server validates
what it receives and records with the same definitions. Nothing here does I/O or imports an
HTTP stack, so the server (and anything else) imports it at no cost.

Example::

    from keel_client.audit import ACTION_PATTERN, FIELD_LIMITS, Outcome

    assert ACTION_PATTERN.fullmatch("billing.invoice.refund")
    assert Outcome("denied") is Outcome.DENIED
    assert FIELD_LIMITS["reason"] == 500
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "ACTION_PATTERN",
    "EVENT_ID_PATTERN",
    "FIELD_LIMITS",
    "MAX_BATCH_SIZE",
    "MAX_DATA_DEPTH",
    "MAX_SAFE_INTEGER",
    "Outcome",
    "Sensitivity",
]


class Outcome(enum.StrEnum):
    """How the audited operation ended."""

    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


class Sensitivity(enum.StrEnum):
    """Who may read an event, least to most restricted."""

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    RESTRICTED = "restricted"


#: An action's name, ``service.resource.verb``: three dot-separated lowercase names.
ACTION_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}(\.[a-z][a-z0-9_]{0,39}){2}$")
#: An event's id: what makes appending it again harmless.
EVENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: Longest text Keel stores per field (``actor.id`` is the ``id`` of the event's ``actor``).
FIELD_LIMITS = {
    "actor.type": 40,
    "actor.id": 200,
    "actor.display": 200,
    "actor.ip": 64,
    "actor.user_agent": 400,
    "target.type": 60,
    "target.id": 200,
    "reason": 500,
    "request_id": 128,
    "trace_id": 128,
}
#: JSON numbers survive canonicalisation (RFC 8785) exactly up to 2**53 - 1; an event's
#: ``data`` holds no integer beyond.
MAX_SAFE_INTEGER = 2**53 - 1
#: How deeply an event's ``data`` may nest.
MAX_DATA_DEPTH = 32
#: The most events Keel takes in one batch.
MAX_BATCH_SIZE = 1000
