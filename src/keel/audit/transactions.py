"""Financial transactions over the audit API: ``POST /audit/v1/transactions``.

The typed way for the fleet's services to record a transaction: the body is checked as
:class:`keel.core.audit.Transaction` (a ``Decimal`` amount sent as a JSON *string*, an ISO 4217
currency, at most the currency's decimal places) and appended at once as Keel's own action
``finance.transaction.record``, which the events endpoints refuse, so every event of that
action has this shape. The event id is ``txn:<transaction id>``: a resent transaction answers
its first receipt, the same id with other fields is a conflict.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Self

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keel.audit import schemas
from keel.audit.router import WRITE, _audit, _head, _receipt, _request_hashes
from keel.auth.dependencies import CurrentPrincipal, require_permission
from keel.core.audit import Actor, Transaction, check_currency, transaction_document
from keel.core.deps import DbSession
from keel.core.timestamps import to_utc
from keel_client.audit import (
    AMOUNT_PATTERN,
    MAX_AMOUNT_DIGITS,
    MAX_AUTHORISERS,
    TRANSACTION_FIELD_LIMITS,
)

_ID = r"^[A-Za-z0-9._:-]{1,60}$"
#: An amount's text at most: its digits, a sign and a point.
_AMOUNT_LENGTH = MAX_AMOUNT_DIGITS + 2
_NOT_A_STRING = (
    'send the amount as a JSON string of its decimal digits, e.g. "1234.50": a JSON number '
    "is read as a binary float by many parsers and may not keep the exact amount"
)

UserId = Annotated[str, Field(min_length=1, max_length=TRANSACTION_FIELD_LIMITS["user"])]
Authoriser = Annotated[str, Field(min_length=1, max_length=TRANSACTION_FIELD_LIMITS["authoriser"])]


class TransactionIn(BaseModel):
    """A financial transaction to record; send it again unchanged to retry."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(pattern=_ID, description="Your id; the event's is txn:<id>.")
    amount: str = Field(
        description="The exact decimal amount as a JSON string (never a number), negative "
        "for a reversal, at most the currency's decimal places.",
        examples=["1234.50"],
    )
    currency: str = Field(description="ISO 4217 code, in capitals.", examples=["EUR"])
    from_account: str = Field(min_length=1, max_length=TRANSACTION_FIELD_LIMITS["from_account"])
    to_account: str = Field(min_length=1, max_length=TRANSACTION_FIELD_LIMITS["to_account"])
    reason: str = Field(min_length=1, max_length=TRANSACTION_FIELD_LIMITS["reason"])
    user: UserId | schemas.ActorIn = Field(
        description="Who made it: a user id, or an actor with an id."
    )
    authorising_chain: list[Authoriser] = Field(
        max_length=MAX_AUTHORISERS, description="Who approved it, in order; [] if no one had to."
    )
    time: datetime = Field(description="When it happened, RFC 3339 with its offset.")
    actor: schemas.ActorIn | None = Field(
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
                self.user if isinstance(self.user, str) else _actor(self.user),
                self.authorising_chain,
                self.time,
            )
        except TypeError as error:  # pydantic answers ValueError only with a 422
            raise ValueError(str(error)) from error

    def recording_actor(self) -> Actor | None:
        return None if self.actor is None else _actor(self.actor)


def _actor(actor: schemas.ActorIn) -> Actor:
    return Actor(actor.type, actor.id, actor.ip, actor.user_agent, actor.display)


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["audit"])

    @router.post(
        "/transactions",
        status_code=status.HTTP_201_CREATED,
        response_model=schemas.ReceiptOut,
        dependencies=[require_permission(WRITE)],
    )
    async def record_transaction(
        body: TransactionIn, request: Request, principal: CurrentPrincipal, session: DbSession
    ) -> schemas.ReceiptOut:
        """Record a financial transaction in the log now; the answer is its receipt (event id
        ``txn:<transaction_id>``, leaf index) and the signed head.

        The amount is a JSON string (``"1234.50"``), stored exactly as sent; a JSON number is
        refused. Sending the same transaction again answers its first receipt; the same
        ``transaction_id`` with other fields is a conflict (409).
        """
        audit = _audit(request)
        document = transaction_document(
            tenant_id=principal.tenant_id,
            transaction=body.transaction(),
            actor=body.recording_actor(),
        )
        await session.commit()  # a request holds one connection at a time; the log takes its own
        (receipt,) = await audit.append(principal.tenant_id, [document], _request_hashes([body]))
        head = await audit.latest_head(session, principal.tenant_id)
        assert head is not None
        return schemas.ReceiptOut(**_receipt(receipt).model_dump(), tree_head=_head(head))

    return router
