"""The config service's logic: applications, environments, revisions, promotion, secret
references. Plain arguments in, plain objects out: the router, the CLI and the tests call
the same functions.

Every change is a new immutable revision, written in the caller's unit of work together
with its audit event and its change event (stream ``config``, subject ``<app>/<env>``,
data ``{"revision": n, "keys": [...]}``: key names, never values).

Concurrency: a write reads the environment's current revision, computes the new snapshot and
moves the revision on with a compare-and-set (``UPDATE ... WHERE revision = :read``). A write
that loses the race either fails with 412 (it named the revision it saw in ``If-Match``) or
starts again from the newer snapshot, so a change set never overwrites keys it did not name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.config import audit_actions  # noqa: F401  (registers the catalogue entries)
from keel.config.models import ConfigApplication, ConfigEnvironment, ConfigRevision
from keel.config.validation import (
    Diff,
    SecretReference,
    apply_change_set,
    check_against_schema,
    check_json_schema,
    check_key,
    check_message,
    check_name,
    check_snapshot_size,
    diff_values,
    replace_secret_references,
    schema_violations,
    secret_references,
)
from keel.core.audit import Actor, Outcome, record_event, record_event_now
from keel.core.changes import record_change
from keel.core.db import utcnow
from keel.core.errors import (
    Conflict,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    ServiceUnavailable,
    ValidationFailed,
)
from keel.core.http import PageRequest, check_if_match, etag_for, paginate
from keel.core.input_rules import InputRefused, check_json_value
from keel.core.tenancy import bind_tenant
from keel.core.versioned import update_versioned_row
from keel.secrets import audit_actions as secrets_audit_actions  # noqa: F401  (secrets.kv.read)
from keel.secrets.kv import KvEngine, SecretUnreadable
from keel.secrets.policies import ROOT_PERMISSION, allowed, held_policy_names, rules_of
from keel_client.auth import Principal

#: The change stream of config revisions.
CONFIG_STREAM = "config"
#: Attempts of a write that keeps losing the compare-and-set to concurrent writers.
_WRITE_ATTEMPTS = 5


def change_subject(application: str, environment: str) -> str:
    return f"{application}/{environment}"


@dataclass(frozen=True)
class EnvironmentState:
    """Where an environment stands: what a read or a write starts from."""

    application: str
    environment: str
    environment_id: str
    revision: int
    json_schema: dict[str, Any] | None = None
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    application: str
    environment: str
    revision: int
    values: dict[str, Any]


@dataclass(frozen=True)
class WriteOutcome:
    """The environment after a write: ``created`` is False when the write changed nothing
    (no revision was made; ``revision`` is the current one)."""

    revision: ConfigRevision
    created: bool


@dataclass(frozen=True)
class Promotion:
    """A promotion's preview, or its result when ``applied``."""

    source: str
    source_revision: int
    target: str
    target_revision: int
    diff: Diff
    applied: bool
    #: The target's new revision when applied (None for a preview or an empty diff).
    revision: ConfigRevision | None = None


# -- applications ---------------------------------------------------------------------------


async def create_application(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    description: str = "",
    json_schema: dict[str, Any] | None = None,
    actor: Actor,
) -> ConfigApplication:
    bind_tenant(session, tenant_id)
    check_name("application", name)
    if json_schema is not None:
        check_json_schema(json_schema)
    if await session.scalar(select(ConfigApplication.id).where(ConfigApplication.name == name)):
        raise Conflict(f"The config application {name!r} exists already.")
    application = ConfigApplication(
        tenant_id=tenant_id, name=name, description=description, json_schema=json_schema
    )
    session.add(application)
    await _flush_unique(session, f"The config application {name!r} exists already.")
    record_event(
        session,
        tenant_id=tenant_id,
        action="config.app.create",
        actor=actor,
        target_type="config_application",
        target_id=name,
        data={"has_schema": json_schema is not None},
    )
    return application


async def list_applications(session: AsyncSession, tenant_id: str) -> list[ConfigApplication]:
    bind_tenant(session, tenant_id)
    return list(await session.scalars(select(ConfigApplication).order_by(ConfigApplication.name)))


async def get_application(session: AsyncSession, tenant_id: str, name: str) -> ConfigApplication:
    bind_tenant(session, tenant_id)
    application = await session.scalar(
        select(ConfigApplication).where(ConfigApplication.name == name)
    )
    if application is None:
        raise NotFound(f"No config application {name!r}.")
    return application


async def update_application(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    json_schema: dict[str, Any] | None,
    description: str | None = None,
    if_match: str | None,
    actor: Actor,
) -> ConfigApplication:
    """Replace the application's JSON Schema (``None`` removes it). A schema that a current
    environment's values fail is refused, listing the environments and their errors."""
    application = await get_application(session, tenant_id, name)
    check_if_match(if_match, application.version, required=False)
    if json_schema is not None:
        check_json_schema(json_schema)
        failing = []
        for state in await _environment_states(session, application):
            violations = schema_violations(json_schema, state.values)
            if violations:
                failing.append(
                    {
                        "environment": state.environment,
                        "revision": state.revision,
                        "errors": [violation.as_dict() for violation in violations[:20]],
                    }
                )
        if failing:
            raise ValidationFailed(
                "Current values of some environments do not satisfy this JSON Schema.",
                environments=failing,
            )
    version = await update_versioned_row(
        session,
        application,
        {
            "json_schema": json_schema,
            "description": application.description if description is None else description,
        },
        changed_message="The application changed since it was read.",
    )
    record_event(
        session,
        tenant_id=tenant_id,
        action="config.app.update",
        actor=actor,
        target_type="config_application",
        target_id=name,
        data={"version": version, "has_schema": json_schema is not None},
    )
    await session.refresh(application)
    return application


# -- environments ---------------------------------------------------------------------------


async def create_environment(
    session: AsyncSession, tenant_id: str, application_name: str, name: str, *, actor: Actor
) -> ConfigEnvironment:
    """A new environment at revision 1, holding no values."""
    application = await get_application(session, tenant_id, application_name)
    check_name("environment", name)
    exists = await session.scalar(
        select(ConfigEnvironment.id).where(
            ConfigEnvironment.application_id == application.id, ConfigEnvironment.name == name
        )
    )
    message = f"The environment {name!r} of {application_name!r} exists already."
    if exists:
        raise Conflict(message)
    environment = ConfigEnvironment(
        tenant_id=tenant_id, application_id=application.id, name=name, revision=1
    )
    session.add(environment)
    await _flush_unique(session, message)
    session.add(
        ConfigRevision(
            tenant_id=tenant_id,
            environment_id=environment.id,
            number=1,
            values={},
            changes={"set": [], "unset": []},
            operation="create",
            message="environment created",
            author_type=actor.type,
            author_id=actor.id,
        )
    )
    record_event(
        session,
        tenant_id=tenant_id,
        action="config.env.create",
        actor=actor,
        target_type="config_environment",
        target_id=change_subject(application_name, name),
        data={"revision": 1},
    )
    record_change(
        session,
        tenant_id,
        CONFIG_STREAM,
        change_subject(application_name, name),
        {"revision": 1, "keys": []},
    )
    return environment


async def list_environments(
    session: AsyncSession, tenant_id: str, application_name: str
) -> list[ConfigEnvironment]:
    application = await get_application(session, tenant_id, application_name)
    return list(
        await session.scalars(
            select(ConfigEnvironment)
            .where(ConfigEnvironment.application_id == application.id)
            .order_by(ConfigEnvironment.name)
        )
    )


async def environment_revision(
    session: AsyncSession, tenant_id: str, application: str, environment: str
) -> tuple[str, int]:
    """The environment's id and current revision number: one small query, the ETag of
    every read."""
    bind_tenant(session, tenant_id)
    row = (
        await session.execute(
            select(ConfigEnvironment.id, ConfigEnvironment.revision)
            .join(ConfigApplication, ConfigApplication.id == ConfigEnvironment.application_id)
            .where(ConfigApplication.name == application, ConfigEnvironment.name == environment)
        )
    ).first()
    if row is None:
        raise NotFound(f"No environment {environment!r} of config application {application!r}.")
    return str(row[0]), int(row[1])


async def read_snapshot(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    revision: int | None = None,
) -> Snapshot:
    """The values of ``revision`` (default: the current one)."""
    environment_id, current = await environment_revision(
        session, tenant_id, application, environment
    )
    number = current if revision is None else revision
    values = await session.scalar(
        select(ConfigRevision.values).where(
            ConfigRevision.environment_id == environment_id, ConfigRevision.number == number
        )
    )
    if values is None:
        raise NotFound(f"No revision {number} of {change_subject(application, environment)}.")
    return Snapshot(application, environment, number, dict(values))


async def values_of_revision(
    session: AsyncSession, environment_id: str, number: int
) -> dict[str, Any]:
    """The values of a revision the caller found with :func:`environment_revision`."""
    values = await session.scalar(
        select(ConfigRevision.values).where(
            ConfigRevision.environment_id == environment_id, ConfigRevision.number == number
        )
    )
    return dict(values or {})


# -- revisions ------------------------------------------------------------------------------


async def get_revision(
    session: AsyncSession, tenant_id: str, application: str, environment: str, number: int
) -> ConfigRevision:
    environment_id, _ = await environment_revision(session, tenant_id, application, environment)
    row = await session.scalar(
        select(ConfigRevision).where(
            ConfigRevision.environment_id == environment_id, ConfigRevision.number == number
        )
    )
    if row is None:
        raise NotFound(f"No revision {number} of {change_subject(application, environment)}.")
    return row


async def history(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    page: PageRequest,
) -> tuple[list[ConfigRevision], str | None]:
    """The environment's revisions, oldest first, one page at a time."""
    environment_id, _ = await environment_revision(session, tenant_id, application, environment)
    return await paginate(
        session,
        select(ConfigRevision).where(ConfigRevision.environment_id == environment_id),
        page,
        order_by=[ConfigRevision.number],
        cursor_of=lambda row: [row.number],
    )


async def diff_revisions(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    from_revision: int,
    to_revision: int,
) -> Diff:
    """What changed from one revision to another (either order)."""
    before = await read_snapshot(session, tenant_id, application, environment, from_revision)
    after = await read_snapshot(session, tenant_id, application, environment, to_revision)
    return diff_values(before.values, after.values)


# -- writes ---------------------------------------------------------------------------------


async def write_values(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    *,
    set_values: Mapping[str, Any] | None = None,
    unset: Sequence[str] = (),
    message: str = "",
    if_match: str | None = None,
    actor: Actor,
) -> WriteOutcome:
    """One atomic change set: every key set and unset in one new revision, or none."""
    set_values = dict(set_values or {})
    unset = list(dict.fromkeys(unset))
    if not set_values and not unset:
        raise ValidationFailed("A change set sets or unsets at least one key.")
    try:
        check_json_value(set_values)  # what the API's edge refused, from the CLI too
    except InputRefused as refused:
        raise ValidationFailed(str(refused)) from None
    apply_change_set({}, set_values, unset)  # names and references, before any query
    return await _write_change_set(
        session,
        tenant_id,
        application,
        environment,
        set_values,
        unset,
        message=message,
        if_match=if_match,
        actor=actor,
    )


async def delete_key(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    key: str,
    *,
    message: str = "",
    if_match: str | None = None,
    actor: Actor,
) -> WriteOutcome:
    """Remove one key (404 when the environment does not hold it)."""
    check_key(key)
    return await _write_change_set(
        session,
        tenant_id,
        application,
        environment,
        {},
        [key],
        message=message,
        if_match=if_match,
        actor=actor,
        must_hold=key,
    )


async def _write_change_set(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    set_values: dict[str, Any],
    unset: list[str],
    *,
    message: str,
    if_match: str | None,
    actor: Actor,
    must_hold: str | None = None,
) -> WriteOutcome:
    """A change set applied to the current values as a new revision (``config.env.write``);
    404 when the environment does not hold ``must_hold``."""

    def build(state: EnvironmentState) -> dict[str, Any]:
        if must_hold is not None and must_hold not in state.values:
            raise NotFound(f"No key {must_hold!r} in {change_subject(application, environment)}.")
        return apply_change_set(state.values, set_values, unset)

    return await _write_revision(
        session,
        tenant_id,
        application,
        environment,
        build,
        operation="write",
        source=None,
        message=message,
        if_match=if_match,
        actor=actor,
        action="config.env.write",
    )


async def rollback(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    to_revision: int,
    *,
    message: str = "",
    if_match: str | None = None,
    actor: Actor,
) -> WriteOutcome:
    """A new revision holding the values of ``to_revision`` (checked against today's schema)."""
    target = await read_snapshot(session, tenant_id, application, environment, to_revision)

    def build(state: EnvironmentState) -> dict[str, Any]:
        return dict(target.values)

    return await _write_revision(
        session,
        tenant_id,
        application,
        environment,
        build,
        operation="rollback",
        source=f"revision {to_revision}",
        message=message or f"rollback to revision {to_revision}",
        if_match=if_match,
        actor=actor,
        action="config.env.rollback",
        extra_audit={"to_revision": to_revision},
    )


async def promote(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    source: str,
    target: str,
    *,
    keys: Sequence[str] | None = None,
    confirm: bool = False,
    if_match: str | None = None,
    source_revision: int | None = None,
    message: str = "",
    actor: Actor,
) -> Promotion:
    """Copy ``source``'s values (all, or only ``keys``) to ``target``.

    Without ``confirm``: the preview, the diff the target would see. With it: applied as a
    new revision of the target, which needs ``if_match`` (the target's ETag the preview
    showed) and, when given, ``source_revision`` still current: what is applied is what was
    previewed.
    """
    if source == target:
        raise ValidationFailed("A promotion copies from one environment to another.")
    if keys is not None:
        if not keys:
            raise ValidationFailed("keys, when given, names at least one key.")
        for key in keys:
            check_key(key)
    origin = await _state(session, tenant_id, application, source)
    destination = await _state(session, tenant_id, application, target)
    if keys is not None:
        unknown = sorted(set(keys) - origin.values.keys() - destination.values.keys())
        if unknown:
            raise ValidationFailed(f"Keys in neither environment: {', '.join(unknown)}.")

    def build(state: EnvironmentState) -> dict[str, Any]:
        return _promoted(origin.values, state.values, keys)

    preview = diff_values(destination.values, build(destination))
    if not confirm:
        return Promotion(
            source, origin.revision, target, destination.revision, preview, applied=False
        )
    if if_match is None:
        raise PreconditionRequired(
            "Applying a promotion needs If-Match with the target's ETag from the preview."
        )
    if source_revision is not None and source_revision != origin.revision:
        raise PreconditionFailed(
            f"{source!r} changed since the preview (now revision {origin.revision}).",
            current_etag=etag_for(origin.revision),
        )
    outcome = await _write_revision(
        session,
        tenant_id,
        application,
        target,
        build,
        operation="promote",
        source=f"{source}@{origin.revision}",
        message=message or f"promoted from {source} revision {origin.revision}",
        if_match=if_match,
        actor=actor,
        action="config.env.promote",
        extra_audit={"from": source, "from_revision": origin.revision},
    )
    return Promotion(
        source,
        origin.revision,
        target,
        outcome.revision.number,
        preview,
        applied=True,
        revision=outcome.revision if outcome.created else None,
    )


def _promoted(
    source: Mapping[str, Any], target: Mapping[str, Any], keys: Sequence[str] | None
) -> dict[str, Any]:
    if keys is None:
        return dict(sorted(source.items()))
    values = dict(target)
    for key in keys:
        if key in source:
            values[key] = source[key]
        else:
            values.pop(key, None)
    return dict(sorted(values.items()))


async def _write_revision(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    environment: str,
    build: Callable[[EnvironmentState], dict[str, Any]],
    *,
    operation: str,
    source: str | None,
    message: str,
    if_match: str | None,
    actor: Actor,
    action: str,
    extra_audit: Mapping[str, Any] | None = None,
) -> WriteOutcome:
    check_message(message)
    for _ in range(_WRITE_ATTEMPTS):
        state = await _state(session, tenant_id, application, environment)
        check_if_match(if_match, state.revision, required=False)
        values = build(state)
        check_snapshot_size(values)
        check_against_schema(state.json_schema, values)
        changes = diff_values(state.values, values)
        if changes.is_empty:
            return WriteOutcome(await _revision_row(session, state), created=False)
        number = state.revision + 1
        moved = await session.execute(
            update(ConfigEnvironment)
            .where(
                ConfigEnvironment.id == state.environment_id,
                ConfigEnvironment.revision == state.revision,
            )
            .values(revision=number, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if getattr(moved, "rowcount", 0) == 1:
            break
        # Another writer moved the revision on: read it again (a named revision now fails).
    else:
        raise Conflict("The environment is changing too often; try again.")
    changed = {
        "set": sorted([*changes.added, *changes.changed]),
        "unset": sorted(changes.removed),
    }
    revision = ConfigRevision(
        tenant_id=tenant_id,
        environment_id=state.environment_id,
        number=number,
        values=values,
        changes=changed,
        operation=operation,
        source=source,
        message=message,
        author_type=actor.type,
        author_id=actor.id,
    )
    session.add(revision)
    await _flush_unique(session, "The environment changed since it was read.", PreconditionFailed)
    subject = change_subject(application, environment)
    record_event(
        session,
        tenant_id=tenant_id,
        action=action,
        actor=actor,
        target_type="config_environment",
        target_id=subject,
        data={"revision": number, **changed, **(extra_audit or {})},
        reason=message or None,
    )
    record_change(session, tenant_id, CONFIG_STREAM, subject, _change_event(number, changes))
    return WriteOutcome(revision, created=True)


#: A change set's new values ride in its change event up to this size (JSON bytes), so a
#: watcher applies them without reading the snapshot back; larger ones name the keys only.
MAX_EVENT_VALUES_BYTES = 16 * 1024


def _change_event(number: int, changes: Diff) -> dict[str, Any]:
    event: dict[str, Any] = {"revision": number, "keys": changes.keys()}
    values = {**changes.added, **{key: pair["after"] for key, pair in changes.changed.items()}}
    if len(json.dumps(values, separators=(",", ":"))) <= MAX_EVENT_VALUES_BYTES:
        event["set"] = values
        event["unset"] = sorted(changes.removed)
    return event


async def _state(
    session: AsyncSession, tenant_id: str, application: str, environment: str
) -> EnvironmentState:
    """The environment's current revision, values and schema in one query."""
    bind_tenant(session, tenant_id)
    row = (
        await session.execute(
            select(
                ConfigEnvironment.id,
                ConfigEnvironment.revision,
                ConfigApplication.json_schema,
                ConfigRevision.values,
            )
            .join(ConfigApplication, ConfigApplication.id == ConfigEnvironment.application_id)
            .join(
                ConfigRevision,
                and_(
                    ConfigRevision.environment_id == ConfigEnvironment.id,
                    ConfigRevision.number == ConfigEnvironment.revision,
                ),
            )
            .where(ConfigApplication.name == application, ConfigEnvironment.name == environment)
        )
    ).first()
    if row is None:
        raise NotFound(f"No environment {environment!r} of config application {application!r}.")
    return EnvironmentState(
        application, environment, str(row[0]), int(row[1]), row[2], dict(row[3] or {})
    )


async def _environment_states(
    session: AsyncSession, application: ConfigApplication
) -> list[EnvironmentState]:
    rows = await session.execute(
        select(ConfigEnvironment.id, ConfigEnvironment.name, ConfigEnvironment.revision)
        .where(ConfigEnvironment.application_id == application.id)
        .order_by(ConfigEnvironment.name)
    )
    states = []
    for environment_id, name, revision in rows.all():
        values = await values_of_revision(session, environment_id, revision)
        states.append(
            EnvironmentState(application.name, name, environment_id, revision, None, values)
        )
    return states


async def _revision_row(session: AsyncSession, state: EnvironmentState) -> ConfigRevision:
    row = await session.scalar(
        select(ConfigRevision).where(
            ConfigRevision.environment_id == state.environment_id,
            ConfigRevision.number == state.revision,
        )
    )
    assert row is not None
    return row


async def _flush_unique(
    session: AsyncSession, message: str, error: type[Conflict | PreconditionFailed] = Conflict
) -> None:
    """Flush; a unique constraint lost to a concurrent writer is ``error``, not a 500."""
    try:
        await session.flush()
    except IntegrityError:
        raise error(message) from None


# -- secret references ----------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedReference:
    """What became of one secret reference of a read."""

    path: str
    reference: str
    resolved: bool
    #: Why it was left as a reference: ``denied``, ``not-found`` or ``unreadable``.
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "path": self.path,
            "reference": self.reference,
            "resolved": self.resolved,
        }
        if self.reason:
            document["reason"] = self.reason
        return document


async def resolve_secret_references(
    session: AsyncSession,
    engine: KvEngine,
    principal: Principal,
    values: Mapping[str, Any],
    *,
    actor: Actor,
    subject: str,
) -> tuple[dict[str, Any], list[ResolvedReference]]:
    """``values`` with each secret reference the caller may read replaced by the secret's
    field; the others stay references. Each secret read (or refused) is audited as a
    secrets read would be, before the answer.

    The caller may read ``{mount}/data/{path}`` when it holds ``secrets:root`` or a secrets
    policy granting ``read`` there, exactly as on the secrets API.
    """
    found = secret_references(values)
    if not found:
        return dict(values), []
    tenant_id = principal.tenant_id
    is_root = principal.has_permission(ROOT_PERMISSION)
    rules = [] if is_root else await rules_of(session, tenant_id, held_policy_names(principal))
    resolved: dict[SecretReference, Any] = {}
    reasons: dict[SecretReference, str] = {}
    for reference in dict.fromkeys(reference for _, reference in found):
        event = {
            "tenant_id": tenant_id,
            "action": "secrets.kv.read",
            "actor": actor,
            "target_type": "secret_path",
            "target_id": reference.vault_path,
        }
        if not (is_root or allowed(rules, reference.vault_path, "read")):
            reasons[reference] = "denied"
            await record_event_now(
                session,
                outcome=Outcome.denied,
                data={"capability": "read", "via": "config", "config": subject},
                **event,
            )
            continue
        try:
            result = await engine.read(session, tenant_id, reference.mount, reference.path)
        except NotFound:
            reasons[reference] = "not-found"
            continue
        except SecretUnreadable:
            reasons[reference] = "unreadable"
            continue
        if result.data is None or reference.field not in result.data:
            reasons[reference] = "not-found"
            continue
        resolved[reference] = result.data[reference.field]
        await record_event_now(
            session,
            data={
                "version": result.metadata["version"],
                "field": reference.field,
                "via": "config",
                "config": subject,
            },
            **event,
        )
    report = [
        ResolvedReference(path, str(reference), reference in resolved, reasons.get(reference))
        for path, reference in found
    ]
    return replace_secret_references(dict(values), resolved), report


def secrets_engine(resources: Mapping[str, Any], keyring: Any) -> KvEngine:
    """The secrets service's KV engine of this process, or one of its own where the secrets
    service is not served here (``--services config``)."""
    from keel.secrets.router import SECRETS_RESOURCE

    engine = resources.get(SECRETS_RESOURCE)
    if isinstance(engine, KvEngine):
        return engine
    if keyring is None:
        raise ServiceUnavailable("Secret references cannot be resolved here.")
    return KvEngine(keyring)
