"""Wire documents of the secrets API: what Vault's clients read in ``data`` (or ``auth``).

Field names and order are Vault's own, so ``hvac`` and the ``vault`` CLI read them
unchanged. Request bodies are parsed by hand in the routers: Vault takes loose input
(``token_policies`` as a list or a comma-separated string, durations as seconds or
``"1h30m"``) and answers its own error texts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class VaultHealth(BaseModel):
    """``sys/health``: initialised, unsealed, active (Keel has no seal)."""

    initialized: bool = True
    sealed: bool = False
    standby: bool = False
    performance_standby: bool = False
    replication_performance_mode: str = "disabled"
    replication_dr_mode: str = "disabled"
    server_time_utc: int
    version: str
    cluster_name: str = "keel"


class TokenLookup(BaseModel):
    """``auth/token/lookup-self``: the caller's credential as a Vault token."""

    accessor: str = ""
    creation_time: Any
    creation_ttl: int
    display_name: str
    entity_id: str
    expire_time: str | None = None
    explicit_max_ttl: int = 0
    id: str = ""
    meta: dict[str, str]
    num_uses: int = 0
    orphan: bool = True
    path: str = "auth/keel/login"
    policies: list[str]
    renewable: bool = False
    ttl: int
    type: str = "service"


class MountInfo(BaseModel):
    """One entry of ``sys/mounts``: a KV version 2 or a database engine."""

    type: str
    description: str
    options: dict[str, str] | None
    config: dict[str, int]


class KvConfig(BaseModel):
    """``<mount>/config`` of a KV mount."""

    max_versions: int
    cas_required: bool
    delete_version_after: str


class PolicyDocument(BaseModel):
    """``sys/policy/<name>`` (``rules``) and ``sys/policies/acl/<name>`` (``policy``)."""

    name: str
    rules: str
    policy: str


class AppRoleLogin(BaseModel):
    """The ``auth`` of ``auth/approle/login``: a Keel access token as Vault's client token."""

    client_token: str
    accessor: str = ""
    policies: list[str]
    token_policies: list[str]
    metadata: dict[str, str]
    lease_duration: int
    renewable: bool = False
    entity_id: str
    token_type: str = "service"  # noqa: S105  (Vault's token type, not a secret)
    orphan: bool = True


class LeaseLookup(BaseModel):
    """``sys/leases/lookup``: a lease of dynamic database credentials."""

    id: str
    issue_time: str
    expire_time: str
    last_renewal: str | None = None
    renewable: bool
    ttl: int
