"""Wire models of the config API (``/config/v1/...``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from keel.config.service.validation import MAX_MESSAGE_LENGTH
from keel.core.input_rules import MAX_STORED_INT


class ApplicationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=63, examples=["billing"])
    description: str = Field(default="", max_length=2000)
    #: A JSON Schema (Draft 2020-12 unless ``$schema`` says otherwise) for every
    #: environment's values, seen as one object of keys.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")


class ApplicationUpdate(BaseModel):
    """``PUT``: the schema given replaces the old one; ``null`` removes it."""

    model_config = ConfigDict(extra="forbid")

    json_schema: dict[str, Any] | None = Field(alias="schema")
    description: str | None = Field(default=None, max_length=2000)


class Application(BaseModel):
    model_config = ConfigDict(from_attributes=True, populate_by_name=True)

    name: str
    description: str
    json_schema: dict[str, Any] | None = Field(serialization_alias="schema")
    version: int
    created_at: datetime
    updated_at: datetime


class EnvironmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=63, examples=["production"])


class Environment(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    revision: int
    created_at: datetime
    updated_at: datetime


class SecretReferenceState(BaseModel):
    path: str
    reference: str
    resolved: bool
    reason: str | None = None


class SnapshotOut(BaseModel):
    application: str
    environment: str
    revision: int
    values: dict[str, Any]
    #: Present on ``?resolve_secrets=true`` reads: what became of each reference.
    secrets: list[SecretReferenceState] | None = None


class KeyOut(BaseModel):
    key: str
    revision: int
    value: Any
    secrets: list[SecretReferenceState] | None = None


class ChangeSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    set: dict[str, Any] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list, max_length=10_000)
    message: str = Field(default="", max_length=MAX_MESSAGE_LENGTH)


class KeyWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Any
    message: str = Field(default="", max_length=MAX_MESSAGE_LENGTH)


class Author(BaseModel):
    type: str | None
    id: str | None


class RevisionSummary(BaseModel):
    number: int
    operation: str
    source: str | None
    message: str
    changes: dict[str, list[str]]
    author: Author
    created_at: datetime


class Revision(RevisionSummary):
    values: dict[str, Any]


class WriteResult(BaseModel):
    """The environment after a write: ``created`` is false when nothing changed."""

    revision: RevisionSummary
    created: bool


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int = Field(ge=1, le=MAX_STORED_INT)
    message: str = Field(default="", max_length=MAX_MESSAGE_LENGTH)


class ChangedValue(BaseModel):
    before: Any
    after: Any


class DiffOut(BaseModel):
    added: dict[str, Any]
    removed: dict[str, Any]
    changed: dict[str, ChangedValue]


class RevisionDiff(DiffOut):
    from_revision: int = Field(serialization_alias="from")
    to_revision: int = Field(serialization_alias="to")


class PromotionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: str = Field(alias="from", max_length=63)
    target: str = Field(alias="to", max_length=63)
    #: Only these keys (a key absent from the source is removed from the target).
    keys: list[str] | None = Field(default=None, max_length=10_000)
    #: False: the preview. True: apply it (needs ``If-Match`` of the target).
    confirm: bool = False
    #: With ``confirm``: the source revision the preview showed; 412 if it moved on.
    source_revision: int | None = Field(default=None, ge=1, le=MAX_STORED_INT)
    message: str = Field(default="", max_length=MAX_MESSAGE_LENGTH)


class PromotionOut(BaseModel):
    source: str = Field(serialization_alias="from")
    source_revision: int
    target: str = Field(serialization_alias="to")
    #: The target's revision: the one previewed against, or the new one when applied.
    target_revision: int
    diff: DiffOut
    applied: bool
