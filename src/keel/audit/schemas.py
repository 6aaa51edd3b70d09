"""Wire models of the audit API.

Events follow the vocabulary Keel and its SDK share (``keel_client.audit``: outcomes,
sensitivities, the action pattern, field limits), so the SDK refuses at the call site what
this API would refuse.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keel.core.audit import Actor, Transaction, check_currency
from keel.core.timestamps import to_utc
from keel_client.audit import (
    ACTION_PATTERN,
    AMOUNT_PATTERN,
    EVENT_ID_PATTERN,
    FIELD_LIMITS,
    MAX_AMOUNT_DIGITS,
    MAX_AUTHORISERS,
    MAX_BATCH_SIZE,
    MAX_DATA_DEPTH,
    MAX_SAFE_INTEGER,
    TRANSACTION_FIELD_LIMITS,
    TRANSACTION_ID_PATTERN,
    Outcome,
    Sensitivity,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActorIn(_Strict):
    type: str | None = Field(None, max_length=FIELD_LIMITS["actor.type"])
    id: str | None = Field(None, max_length=FIELD_LIMITS["actor.id"])
    display: str | None = Field(None, max_length=FIELD_LIMITS["actor.display"])
    ip: str | None = Field(None, max_length=FIELD_LIMITS["actor.ip"])
    user_agent: str | None = Field(None, max_length=FIELD_LIMITS["actor.user_agent"])

    def actor(self) -> Actor:
        """The actor as the audit recorder names it."""
        return Actor(self.type, self.id, self.ip, self.user_agent, self.display)


class TargetIn(_Strict):
    type: str | None = Field(None, max_length=FIELD_LIMITS["target.type"])
    id: str | None = Field(None, max_length=FIELD_LIMITS["target.id"])


class EventIn(_Strict):
    """An event to append. ``id`` makes appends idempotent: send the same id on a retry."""

    id: str | None = Field(None, pattern=EVENT_ID_PATTERN.pattern)
    time: datetime | None = None
    action: str = Field(max_length=128)
    actor: ActorIn | None = None
    target: TargetIn | None = None
    outcome: Outcome = Outcome.SUCCESS
    reason: str | None = Field(None, max_length=FIELD_LIMITS["reason"])
    request_id: str | None = Field(None, max_length=FIELD_LIMITS["request_id"])
    trace_id: str | None = Field(None, max_length=FIELD_LIMITS["trace_id"])
    sensitivity: Sensitivity | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("action")
    @classmethod
    def _action_shape(cls, value: str) -> str:
        if not ACTION_PATTERN.fullmatch(value):
            raise ValueError("an action is service.resource.verb: lowercase, dot-separated")
        return value

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give the time with its offset (RFC 3339), e.g. ...Z")
        return None if value is None else to_utc(value)

    @field_validator("data")
    @classmethod
    def _no_floats(cls, value: dict[str, Any]) -> dict[str, Any]:
        _refuse_unsafe_numbers(value)
        return value


def _refuse_unsafe_numbers(value: Any, depth: int = 0) -> None:
    """Canonical JSON (RFC 8785) keeps IEEE doubles and integers below 2**53 exactly; refuse
    what it would change, so the stored event is exactly what was sent."""
    if depth > MAX_DATA_DEPTH:
        raise ValueError(f"data is nested too deeply ({MAX_DATA_DEPTH} levels at most)")
    if isinstance(value, dict):
        for item in value.values():
            _refuse_unsafe_numbers(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _refuse_unsafe_numbers(item, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
        raise ValueError("integers of 2**53 or more lose precision in JSON: send them as strings")


class EventBatch(_Strict):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH_SIZE)


class Receipt(BaseModel):
    id: str
    leaf_index: int
    leaf_hash: str


class TreeHeadOut(BaseModel):
    tenant: str
    tree_size: int
    root_hash: str
    timestamp: int
    key_id: str
    signature: str


class ReceiptOut(Receipt):
    tree_head: TreeHeadOut


class BatchReceipts(BaseModel):
    receipts: list[Receipt]
    tree_head: TreeHeadOut


class Proof(BaseModel):
    leaf_index: int | None = None
    tree_size: int | None = None
    first: int | None = None
    second: int | None = None
    proof: list[str]
    tree_head: TreeHeadOut | None = None


class ActionIn(_Strict):
    description: str = Field(max_length=500)
    category: str = Field("change", pattern=r"^[a-z][a-z0-9_]{0,39}$")
    sensitivity: Sensitivity = Sensitivity.INTERNAL
    sensitive_fields: list[str] = Field(default_factory=list, max_length=100)


class ActionOut(ActionIn):
    name: str
    builtin: bool = False


# -- financial transactions ----------------------------------------------------------------------

#: The transaction id as the SDK checks it, anchored as a JSON Schema pattern.
_TRANSACTION_ID = f"^{TRANSACTION_ID_PATTERN.pattern}$"
#: An amount's text at most: its digits, a sign and a point.
_AMOUNT_LENGTH = MAX_AMOUNT_DIGITS + 2
_NOT_A_STRING = (
    'send the amount as a JSON string of its decimal digits, e.g. "1234.50": a JSON number '
    "is read as a binary float by many parsers and may not keep the exact amount"
)

UserId = Annotated[str, Field(min_length=1, max_length=TRANSACTION_FIELD_LIMITS["user"])]
Authoriser = Annotated[str, Field(min_length=1, max_length=TRANSACTION_FIELD_LIMITS["authoriser"])]


class TransactionIn(_Strict):
    """A financial transaction to record; send it again unchanged to retry.

    Checked as :class:`keel.core.audit.Transaction`: a ``Decimal`` amount sent as a JSON
    *string*, an ISO 4217 currency, at most the currency's decimal places.
    """

    transaction_id: str = Field(
        pattern=_TRANSACTION_ID, description="Your id; the event's is txn:<id>."
    )
    amount: str = Field(
        description="The exact decimal amount as a JSON string (never a number), negative "
        "for a reversal, at most the currency's decimal places.",
        examples=["1234.50"],
    )
    currency: str = Field(description="ISO 4217 code, in capitals.", examples=["EUR"])
    from_account: str = Field(min_length=1, max_length=TRANSACTION_FIELD_LIMITS["from_account"])
    to_account: str = Field(min_length=1, max_length=TRANSACTION_FIELD_LIMITS["to_account"])
    reason: str = Field(min_length=1, max_length=TRANSACTION_FIELD_LIMITS["reason"])
    user: UserId | ActorIn = Field(description="Who made it: a user id, or an actor with an id.")
    authorising_chain: list[Authoriser] = Field(
        max_length=MAX_AUTHORISERS, description="Who approved it, in order; [] if no one had to."
    )
    time: datetime = Field(description="When it happened, RFC 3339 with its offset.")
    actor: ActorIn | None = Field(
        None, description="Who performed it, when not the user (default: the user)."
    )

    @field_validator("amount", mode="before")
    @classmethod
    def _amount_is_a_string(cls, value: object) -> object:
        if isinstance(value, int | float):  # bool is an int
            raise ValueError(_NOT_A_STRING)
        return value

    @field_validator("amount")
    @classmethod
    def _amount_is_decimal_text(cls, value: str) -> str:
        if len(value) > _AMOUNT_LENGTH or not AMOUNT_PATTERN.fullmatch(value):
            raise ValueError(
                'the amount is plain decimal text: digits, an optional "-" and ".", '
                'no exponent or leading zeros, e.g. "1234.50" or "-5.00"'
            )
        return value

    @field_validator("currency")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        return check_currency(value)

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give the time with its offset (RFC 3339), e.g. ...Z")
        return to_utc(value)

    @model_validator(mode="after")
    def _a_transaction(self) -> Self:
        self.transaction()  # decimal places against the currency, and every other rule
        return self

    def transaction(self) -> Transaction:
        try:
            return Transaction(
                self.transaction_id,
                Decimal(self.amount),
                self.currency,
                self.from_account,
                self.to_account,
                self.reason,
                self.user if isinstance(self.user, str) else self.user.actor(),
                self.authorising_chain,
                self.time,
            )
        except TypeError as error:  # pydantic answers ValueError only with a 422
            raise ValueError(str(error)) from error

    def recording_actor(self) -> Actor | None:
        return None if self.actor is None else self.actor.actor()
