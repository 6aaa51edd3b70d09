"""Wire models of the gateway API (``/gateway/v1/...``).

The policy itself travels as the JSON of ``keel_client.edge.EdgePolicy`` (a route as
``Route``, a pool as ``UpstreamPool``); the server validates it with those models and answers
a refusal as problem+json whose ``errors`` name each field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from keel.core.input_rules import MAX_STORED_INT
from keel.gateway.service.policy import MAX_COMMENT_LENGTH


class Problem(BaseModel):
    """A problem noticed in a policy: where (``["routes", "2", "path"]``), what, and a code."""

    location: list[str]
    message: str
    code: str


class PolicyOut(BaseModel):
    """The policy at a revision (0 and the empty policy before the first write)."""

    revision: int
    updated_at: datetime | None
    policy: dict[str, Any] = Field(description="An EdgePolicy: upstreams and routes.")
    tenant_id: str | None = Field(
        default=None,
        description="The tenant the policy belongs to: a service enforcing it refuses "
        "callers of any other tenant.",
    )


class PolicyWritten(PolicyOut):
    """The policy after a write: ``created`` is false when the document equalled the current
    policy (no revision made); ``warnings`` were noticed but did not refuse it."""

    created: bool
    warnings: list[Problem] = Field(default_factory=list)


class Validated(BaseModel):
    """A dry run's answer (a refusal is the same 422 as a write's)."""

    valid: bool
    warnings: list[Problem] = Field(default_factory=list)


class RevisionSummary(BaseModel):
    revision: int
    comment: str
    created_by: str
    created_at: datetime


class RevisionOut(RevisionSummary):
    policy: dict[str, Any]


class RevisionList(BaseModel):
    """Newest first; pass ``next_before`` back as ``before`` for the older ones."""

    items: list[RevisionSummary]
    next_before: int | None


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    revision: int = Field(ge=1, le=MAX_STORED_INT)
    comment: str = Field(default="", max_length=MAX_COMMENT_LENGTH)


class PartWritten(BaseModel):
    """A route or pool after its change, and the policy revision that holds it."""

    revision: int
    created: bool
    item: dict[str, Any] | None
    warnings: list[Problem] = Field(default_factory=list)


class PartOut(BaseModel):
    revision: int
    item: dict[str, Any]


class PartList(BaseModel):
    revision: int
    items: list[dict[str, Any]]
