"""Wire models of the audit API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keel.core.audit import ACTION_PATTERN, Outcome, Sensitivity
from keel.core.timestamps import to_utc

_ID = r"^[A-Za-z0-9._:-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActorIn(_Strict):
    type: str | None = Field(None, max_length=40)
    id: str | None = Field(None, max_length=200)
    display: str | None = Field(None, max_length=200)
    ip: str | None = Field(None, max_length=64)
    user_agent: str | None = Field(None, max_length=400)


class TargetIn(_Strict):
    type: str | None = Field(None, max_length=60)
    id: str | None = Field(None, max_length=200)


class EventIn(_Strict):
    """An event to append. ``id`` makes appends idempotent: send the same id on a retry."""

    id: str | None = Field(None, pattern=_ID)
    time: datetime | None = None
    action: str = Field(max_length=128)
    actor: ActorIn | None = None
    target: TargetIn | None = None
    outcome: Outcome = Outcome.success
    reason: str | None = Field(None, max_length=500)
    request_id: str | None = Field(None, max_length=128)
    trace_id: str | None = Field(None, max_length=128)
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
    if depth > 32:
        raise ValueError("data is nested too deeply (32 levels at most)")
    if isinstance(value, dict):
        for item in value.values():
            _refuse_unsafe_numbers(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _refuse_unsafe_numbers(item, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
        raise ValueError("integers of 2**53 or more lose precision in JSON: send them as strings")


class EventBatch(_Strict):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


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
    sensitivity: Sensitivity = Sensitivity.internal
    sensitive_fields: list[str] = Field(default_factory=list, max_length=100)


class ActionOut(ActionIn):
    name: str
    builtin: bool = False
