"""The flags service's tables: environments, flag definitions, each flag's state in each
environment, segments, experiment events and evaluation times.

A flag's *definition* (type, variations, salt, experiment) is shared by every environment;
its *state* (on, targets, rules, fallthrough, schedule...) is one row per environment. The
snapshot an SDK loads merges the two into the shared model's flag documents
(:mod:`keel_client.flags`). Every write bumps the environment's ``version``: the snapshot's
version and ETag.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.ids import new_id
from keel.core.tenancy import TenantScoped


class FlagEnvironment(TenantScoped, Base):
    """An environment of a tenant's flags (``production``)."""

    __tablename__ = "flags_environments"
    __table_args__ = (UniqueConstraint("tenant_id", "key", name="uq_flags_environments_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    key: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    #: Bumped by every change of what the environment's snapshot holds: its version and ETag.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Flag(TenantScoped, Base):
    """A flag's definition, the same in every environment."""

    __tablename__ = "flags_flags"
    __table_args__ = (UniqueConstraint("tenant_id", "key", name="uq_flags_flags_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    key: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    owner: Mapped[str] = mapped_column(String(200), default="")
    #: ``boolean``, ``string``, ``number`` or ``json``.
    type: Mapped[str] = mapped_column(String(16))
    #: ``[{"id": ..., "value": ...}]``, in order (the first is an experiment's control).
    variations: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: The bucketing salt (default: the key), fixed so renaming nothing reshuffles users.
    salt: Mapped[str] = mapped_column(String(200))
    #: Whether evaluations send exposure events (an A/B experiment).
    experiment: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Bumped by every change of the definition: its ETag, checked by ``If-Match``.
    version: Mapped[int] = mapped_column(Integer, default=1)
    #: An archived flag is in no snapshot; its states are kept for a restore.
    archived: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FlagState(TenantScoped, Base):
    """A flag's state in one environment (the shared model's per-environment fields)."""

    __tablename__ = "flags_states"
    __table_args__ = (
        UniqueConstraint("flag_id", "environment_id", name="uq_flags_states_flag_environment"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    flag_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("flags_flags.id", ondelete="CASCADE")
    )
    environment_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("flags_environments.id", ondelete="CASCADE"), index=True
    )
    on: Mapped[bool] = mapped_column(Boolean, default=False)
    off_variation: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prerequisites: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    targets: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    rules: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    fallthrough: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    schedule: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    #: Bumped by every change of this state: its ETag, checked by ``If-Match``.
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Segment(TenantScoped, Base):
    """A reusable set of contexts of one environment: lists and rules."""

    __tablename__ = "flags_segments"
    __table_args__ = (
        UniqueConstraint("environment_id", "key", name="uq_flags_segments_environment_key"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    environment_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("flags_environments.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    included: Mapped[list[str]] = mapped_column(JSON, default=list)
    excluded: Mapped[list[str]] = mapped_column(JSON, default=list)
    rules: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ExperimentEvent(TenantScoped, Base):
    """An exposure (a context was served a variation of an experiment flag) or a tracked
    event (a conversion: ``track(event, value)``), as SDKs send them in batches.

    Contexts may hold personal data, so only a keyed hash of the context key is stored.
    """

    __tablename__ = "flags_experiment_events"
    __table_args__ = (
        Index(
            "ix_flags_experiment_events_flag",
            "tenant_id",
            "environment_id",
            "flag_key",
            "kind",
        ),
        Index(
            "ix_flags_experiment_events_track",
            "tenant_id",
            "environment_id",
            "event_name",
            "context_hash",
        ),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    environment_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("flags_environments.id", ondelete="CASCADE")
    )
    #: ``exposure`` or ``track``.
    kind: Mapped[str] = mapped_column(String(16))
    #: The flag of an exposure (``None`` for a tracked event).
    flag_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    variation: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: ``keyring.token_hash(context key)``: the same context gives the same hash.
    context_hash: Mapped[str] = mapped_column(String(128))
    #: The name of a tracked event (``purchase``).
    event_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FlagEvaluation(TenantScoped, Base):
    """When a flag was last evaluated in an environment (for the stale listing), written
    coarsely: at most once a minute per flag and environment by each process."""

    __tablename__ = "flags_evaluations"
    __table_args__ = (
        UniqueConstraint("environment_id", "flag_key", name="uq_flags_evaluations_flag"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    environment_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("flags_environments.id", ondelete="CASCADE"), index=True
    )
    flag_key: Mapped[str] = mapped_column(String(128))
    last_evaluated_at: Mapped[datetime] = mapped_column(UTCDateTime)
