"""The manifest's schemas (pydantic, as in every service's ``schemas.py``): what each table
of ``keel.toml`` may hold (docs/apply.md).

Unknown keys are refused everywhere (a typo must not pass silently). The tables that are a
service's own API body (routes, the upstream pool, bucket policies) are validated by that
service's own models in :mod:`keel.manifest.load` (job schedules and audit actions too).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Names of service accounts and roles (keel.auth's rule).
ACCOUNT_NAME = r"^[a-z0-9][a-z0-9._-]{0,99}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ServiceSection(_Strict):
    name: str = Field(pattern=ACCOUNT_NAME)
    description: str | None = Field(default=None, max_length=2000)
    roles: list[str] = Field(default_factory=list)


class RoleSection(_Strict):
    permissions: list[str]
    description: str | None = Field(default=None, max_length=2000)


class ConfigSection(_Strict):
    app: str | None = None
    description: str = Field(default="", max_length=2000)
    #: A JSON Schema file (relative to the manifest) or an inline table.
    json_schema: str | dict[str, Any] | None = Field(default=None, alias="schema")
    values: dict[str, dict[str, Any]] = Field(default_factory=dict)


class FlagSection(_Strict):
    type: Literal["boolean", "string", "number", "json"] = "boolean"
    variations: list[dict[str, Any]] | None = Field(default=None, max_length=100)
    description: str = Field(default="", max_length=2000)
    tags: list[str] = Field(default_factory=list, max_length=50)
    owner: str = Field(default="", max_length=200)
    salt: str | None = Field(default=None, max_length=200)
    experiment: bool = False


class QueueSection(_Strict):
    concurrency_limit: int | None = Field(default=None, ge=1, le=100_000)
    rate_limit_per_second: float | None = Field(default=None, gt=0, le=100_000)


class TemplateSection(_Strict):
    kind: Literal["message", "layout", "partial"] = "message"
    content: dict[str, Any]
    category: str | None = Field(default=None, max_length=64)
    description: str | None = Field(default=None, max_length=2000)


class AuditSection(_Strict):
    #: Actions of the tenant's catalogue (name -> its entry, as ``PUT /audit/v1/actions``).
    actions: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Manifest(_Strict):
    """A whole ``keel.toml``."""

    flag_environments: list[str] = Field(default_factory=list)
    service: ServiceSection
    roles: dict[str, RoleSection] = Field(default_factory=dict)
    config: ConfigSection | None = None
    flags: dict[str, FlagSection] = Field(default_factory=dict)
    queues: dict[str, QueueSection] = Field(default_factory=dict)
    schedules: dict[str, dict[str, Any]] = Field(default_factory=dict)
    upstream: dict[str, Any] | None = None
    routes: list[dict[str, Any]] = Field(default_factory=list)
    buckets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    templates: dict[str, TemplateSection] = Field(default_factory=dict)
    audit: AuditSection | None = None
