"""Rotation: a policy per secret that renews one field of its data on a schedule.

A policy names the field, the interval and where new values come from: the generator
(``length`` characters of an alphabet, drawn with :func:`secrets.choice`) or a rotation hook
registered in this process (:func:`register_rotation_hook`). A rotation writes a new version
through :meth:`KvEngine.write`: the other fields are copied from the current version, the
previous version stays readable, and the change is audited (``secrets.kv.rotate``) and
published on the ``secrets`` change stream. Neither ever carries the value.

The schedule lives in the database (``secrets_rotations.next_rotation_at``), so it survives
restarts; the background task :func:`rotate_secrets_on_schedule` rotates what is due, one
secret a transaction, and on PostgreSQL several workers share the work (``FOR UPDATE SKIP
LOCKED``). A failed rotation is recorded on the policy (``last_error``, never a value) and as
an audit event with outcome ``failure``; it is tried again ``RETRY_SECONDS`` later.

Example of a hook::

    async def new_api_token(context: RotationContext) -> str:
        return await issuer.create_token(name=context.path)

    register_rotation_hook("issuer-token", new_api_token)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import secrets
import string
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import SYSTEM, Actor, Outcome, record_event
from keel.core.db import Database, utcnow
from keel.core.errors import BadRequest, NotFound
from keel.core.logging import get_logger
from keel.core.tenancy import bind_tenant
from keel.secrets.engines.kv import (
    SECRETS_RESOURCE,
    KvEngine,
    format_duration,
    parse_duration,
    vault_time,
)
from keel.secrets.models import Secret, SecretMount, SecretRotation, SecretVersion

if TYPE_CHECKING:
    from keel.core.context import AppContext

log = get_logger(__name__)

#: The named alphabets; any other value of ``alphabet`` is the characters themselves.
ALPHABETS = {
    "alphanumeric": string.ascii_letters + string.digits,
    "hex": string.hexdigits[:16],
    "base64url": string.ascii_letters + string.digits + "-_",
    "printable": string.ascii_letters + string.digits + string.punctuation,
}
MIN_LENGTH, MAX_LENGTH = 8, 1024
MIN_CUSTOM_ALPHABET, MAX_CUSTOM_ALPHABET = 10, 256
#: Shorter intervals would pile up versions faster than anyone reads them.
MIN_INTERVAL_SECONDS = 60
#: How often the background task looks for due rotations.
ROTATION_TICK_SECONDS = 5.0
#: A failed rotation is tried again this much later (or at its interval, if shorter).
RETRY_SECONDS = 60
#: A hook that takes longer has failed.
HOOK_TIMEOUT_SECONDS = 30.0
#: Due rotations one round of the background task handles at most.
ROUND_LIMIT = 100
MAX_FIELD_LENGTH = 128
_HOOK_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class RotationContext:
    """What a rotation hook is told about the secret it renews a field of."""

    tenant_id: str
    mount: str
    path: str
    field: str
    #: The field's current value (None when the field is new): a hook that changes a
    #: credential elsewhere may need it to log in. Never log it.
    current_value: str | None = dataclasses.field(repr=False)


RotationHook = Callable[[RotationContext], Awaitable[str]]
_HOOKS: dict[str, RotationHook] = {}


def register_rotation_hook(name: str, hook: RotationHook) -> Callable[[], None]:
    """Make ``hook`` available to rotation policies as ``name``; returns an undo.

    Register hooks at import or start-up in every process that serves the secrets API or
    runs its background work (``keel serve``, ``keel worker``).
    """
    if not _HOOK_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a hook name: lowercase letters, digits, . _ -")
    _HOOKS[name] = hook

    def undo() -> None:
        if _HOOKS.get(name) is hook:
            del _HOOKS[name]

    return undo


def rotation_hooks() -> list[str]:
    return sorted(_HOOKS)


async def new_uuid4(context: RotationContext) -> str:
    """The built-in hook ``uuid4``: a random UUID (an identifier that must not be guessed,
    such as a webhook path or a shared token in a format that checks UUIDs)."""
    return str(uuid.uuid4())


register_rotation_hook("uuid4", new_uuid4)


def generate_value(length: int, alphabet: str) -> str:
    """``length`` characters of ``alphabet`` (a name of :data:`ALPHABETS` or the characters),
    each drawn from the operating system's CSPRNG."""
    characters = ALPHABETS.get(alphabet, alphabet)
    return "".join(secrets.choice(characters) for _ in range(length))


@dataclass(frozen=True)
class RotationPolicy:
    """A policy as given: generator (``length``, ``alphabet``) or ``hook``."""

    field: str
    interval_s: int
    length: int = 32
    alphabet: str = "alphanumeric"
    hook: str | None = None


def parse_rotation_policy(body: dict[str, Any]) -> RotationPolicy:
    """The policy of a request body; ``BadRequest`` naming what is wrong."""
    unknown = set(body) - {"field", "interval", "length", "alphabet", "hook"}
    if unknown:
        raise BadRequest(f"unknown parameters: {', '.join(sorted(map(str, unknown)))}")
    name = body.get("field")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_FIELD_LENGTH:
        raise BadRequest(f"field is the name of the field to renew, 1 to {MAX_FIELD_LENGTH} chars")
    if "interval" not in body:
        raise BadRequest("interval is required, e.g. '720h'")
    interval = parse_duration(body["interval"])
    if interval < MIN_INTERVAL_SECONDS:
        raise BadRequest(f"interval is at least {MIN_INTERVAL_SECONDS} seconds")
    hook = body.get("hook")
    if hook is not None:
        if "length" in body or "alphabet" in body:
            raise BadRequest("give either a hook or a length and alphabet, not both")
        if not isinstance(hook, str) or hook not in _HOOKS:
            raise BadRequest(
                f"hook is the name of a registered rotation hook: {', '.join(rotation_hooks())}"
            )
        return RotationPolicy(name, interval, hook=hook)
    length = body.get("length", 32)
    if isinstance(length, bool) or not isinstance(length, int):
        raise BadRequest("length is an integer")
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise BadRequest(f"length is from {MIN_LENGTH} to {MAX_LENGTH}")
    return RotationPolicy(name, interval, length, _alphabet(body.get("alphabet", "alphanumeric")))


def _alphabet(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest("alphabet is a name or a string of characters")
    if value in ALPHABETS:
        return value
    if not MIN_CUSTOM_ALPHABET <= len(value) <= MAX_CUSTOM_ALPHABET:
        raise BadRequest(
            f"alphabet is one of {', '.join(ALPHABETS)} or {MIN_CUSTOM_ALPHABET} to "
            f"{MAX_CUSTOM_ALPHABET} distinct characters"
        )
    if len(set(value)) != len(value):
        raise BadRequest("a custom alphabet's characters are distinct (a repeat biases values)")
    if not all(character.isprintable() and not character.isspace() for character in value):
        raise BadRequest("a custom alphabet has printable characters only, no spaces")
    return value


def rotation_document(rotation: SecretRotation) -> dict[str, Any]:
    """A policy as ``GET`` answers it (no value, ever)."""
    generated = rotation.hook is None
    return {
        "field": rotation.field,
        "interval": format_duration(rotation.interval_s),
        "length": rotation.length if generated else None,
        "alphabet": rotation.alphabet if generated else None,
        "hook": rotation.hook,
        "next_rotation": vault_time(rotation.next_rotation_at),
        "last_rotated": vault_time(rotation.last_rotated_at),
        "last_error": rotation.last_error,
    }


async def _secret(
    session: AsyncSession, engine: KvEngine, mount: SecretMount, path: str
) -> tuple[Secret, SecretRotation | None]:
    secret = await engine.metadata(session, mount, path)
    rotation = await session.scalar(
        select(SecretRotation).where(SecretRotation.secret_id == secret.id)
    )
    return secret, rotation


async def set_rotation(
    session: AsyncSession,
    engine: KvEngine,
    mount: SecretMount,
    path: str,
    policy: RotationPolicy,
    now: datetime | None = None,
) -> SecretRotation:
    """Set (or replace) the rotation policy of an existing secret; the first rotation is one
    interval from now."""
    now = now or utcnow()
    secret, rotation = await _secret(session, engine, mount, path)
    if rotation is None:
        rotation = SecretRotation(tenant_id=mount.tenant_id, secret_id=secret.id)
        session.add(rotation)
    rotation.field = policy.field
    rotation.interval_s = policy.interval_s
    rotation.length = policy.length
    rotation.alphabet = policy.alphabet
    rotation.hook = policy.hook
    rotation.next_rotation_at = now + timedelta(seconds=policy.interval_s)
    rotation.last_error = None
    await session.flush()
    return rotation


async def get_rotation(
    session: AsyncSession, engine: KvEngine, mount: SecretMount, path: str
) -> SecretRotation:
    """The secret's policy; ``NotFound`` when the secret or its policy does not exist."""
    _, rotation = await _secret(session, engine, mount, path)
    if rotation is None:
        raise NotFound("no rotation policy for this secret")
    return rotation


async def delete_rotation(
    session: AsyncSession, engine: KvEngine, mount: SecretMount, path: str
) -> bool:
    """Remove the secret's policy; whether there was one."""
    try:
        _, rotation = await _secret(session, engine, mount, path)
    except NotFound:
        return False
    if rotation is None:
        return False
    await session.delete(rotation)
    await session.flush()
    return True


class RotationFailed(Exception):
    """A rotation could not happen; ``reason`` is safe to show (never a value)."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


async def rotate_secret(
    session: AsyncSession,
    engine: KvEngine,
    mount: SecretMount,
    path: str,
    rotation: SecretRotation,
    *,
    actor: Actor = SYSTEM,
    now: datetime | None = None,
) -> tuple[SecretVersion, Secret]:
    """Write the next version of the secret with ``rotation.field`` renewed; the schedule
    moves one interval on. On failure the policy and the audit trail record why (with this
    unit of work: commit it) and :class:`RotationFailed` is raised."""
    now = now or utcnow()
    current = await engine.read(session, mount.tenant_id, mount.path, path)
    if current.data is None:
        await _fail(session, mount, path, rotation, actor, now, "the current version is deleted")
    previous = current.data.get(rotation.field) if current.data else None
    try:
        value = await _new_value(
            rotation,
            RotationContext(
                mount.tenant_id,
                mount.path,
                path,
                rotation.field,
                previous if isinstance(previous, str) else None,
            ),
        )
    except RotationFailed as error:
        await _fail(session, mount, path, rotation, actor, now, error.reason, error.status)
    data = {**(current.data or {}), rotation.field: value}
    row, secret = await engine.write(
        session, mount, path, data, cas=current.metadata["version"], operation="rotate"
    )
    rotation.last_rotated_at = now
    rotation.next_rotation_at = now + timedelta(seconds=rotation.interval_s)
    rotation.last_error = None
    record_event(
        session,
        **_event(mount, path, actor),
        data={"version": row.version, "field": rotation.field},
    )
    return row, secret


async def _new_value(rotation: SecretRotation, context: RotationContext) -> str:
    if rotation.hook is None:
        return generate_value(rotation.length, rotation.alphabet)
    hook = _HOOKS.get(rotation.hook)
    if hook is None:
        raise RotationFailed(f"rotation hook {rotation.hook!r} is not registered", 500)
    try:
        async with asyncio.timeout(HOOK_TIMEOUT_SECONDS):
            value = await hook(context)
    except Exception as error:
        # The type only: a hook's message may quote what it was handling.
        log.warning("secrets.rotation.hook_failed", hook=rotation.hook, error=type(error).__name__)
        raise RotationFailed(
            f"rotation hook {rotation.hook!r} failed ({type(error).__name__})", 502
        ) from None
    if not isinstance(value, str) or not value:
        raise RotationFailed(f"rotation hook {rotation.hook!r} returned no string", 502)
    return value


def _event(mount: SecretMount, path: str, actor: Actor) -> dict[str, Any]:
    return {
        "tenant_id": mount.tenant_id,
        "action": "secrets.kv.rotate",
        "actor": actor,
        "target_type": "secret_path",
        "target_id": f"{mount.path}/data/{path}",
    }


async def _fail(
    session: AsyncSession,
    mount: SecretMount,
    path: str,
    rotation: SecretRotation,
    actor: Actor,
    now: datetime,
    reason: str,
    status: int = 400,
) -> NoReturn:
    rotation.last_error = reason
    rotation.next_rotation_at = now + timedelta(seconds=min(RETRY_SECONDS, rotation.interval_s))
    record_event(
        session, **_event(mount, path, actor), outcome=Outcome.FAILURE, data={"error": reason}
    )
    raise RotationFailed(reason, status)


async def rotate_due_secrets(
    database: Database, engine: KvEngine, *, now: datetime | None = None, limit: int = ROUND_LIMIT
) -> int:
    """Rotate the secrets whose rotation is due at ``now`` (default: now), one transaction
    each; returns how many rotated. Safe to run in several processes at once."""
    now = now or utcnow()
    tried: set[str] = set()
    rotated = 0
    while len(tried) < limit:
        rotation_id: str | None = None
        try:
            async with database.session() as session:
                query = select(SecretRotation).where(SecretRotation.next_rotation_at <= now)
                if tried:
                    query = query.where(SecretRotation.id.not_in(tried))
                rotation = await session.scalar(
                    query.order_by(SecretRotation.next_rotation_at)
                    .limit(1)
                    # Another worker's row is skipped, not waited for; SQLite has one writer.
                    .with_for_update(skip_locked=True)
                    .execution_options(all_tenants=True)
                )
                if rotation is None:
                    return rotated
                rotation_id = rotation.id
                tried.add(rotation_id)
                bind_tenant(session, rotation.tenant_id)
                secret, mount = await _location(session, rotation)
                try:
                    await rotate_secret(session, engine, mount, secret.path, rotation, now=now)
                except RotationFailed:
                    pass  # recorded on the policy and in the audit trail, committed with them
                else:
                    rotated += 1
        except Exception as error:
            log.warning("secrets.rotation.failed", error=type(error).__name__)
            if rotation_id is not None:
                await _note_failure(database, rotation_id, now, type(error).__name__)
    return rotated


async def _location(session: AsyncSession, rotation: SecretRotation) -> tuple[Secret, SecretMount]:
    secret = await session.scalar(select(Secret).where(Secret.id == rotation.secret_id))
    if secret is None:
        raise NotFound()
    mount = await session.scalar(select(SecretMount).where(SecretMount.id == secret.mount_id))
    if mount is None:
        raise NotFound()
    return secret, mount


async def _note_failure(database: Database, rotation_id: str, now: datetime, kind: str) -> None:
    """Record an unexpected failure (the rotation's own unit of work was rolled back)."""
    try:
        async with database.session() as session:
            rotation = await session.scalar(
                select(SecretRotation)
                .where(SecretRotation.id == rotation_id)
                .execution_options(all_tenants=True)
            )
            if rotation is None:
                return
            bind_tenant(session, rotation.tenant_id)
            secret, mount = await _location(session, rotation)
            with contextlib.suppress(RotationFailed):  # recorded, and committed on leaving
                await _fail(session, mount, secret.path, rotation, SYSTEM, now, f"failed ({kind})")
    except Exception:
        log.exception("secrets.rotation.note_failed")


async def rotate_secrets_on_schedule(context: AppContext) -> None:
    """Rotate due secrets every ``ROTATION_TICK_SECONDS``."""
    engine = context.resources[SECRETS_RESOURCE]
    assert isinstance(engine, KvEngine)
    while True:
        try:
            rotated = await rotate_due_secrets(context.database, engine)
            if rotated:
                log.info("secrets.rotation.rotated", secrets=rotated)
        except Exception:  # a failed round must not end the loop
            log.exception("secrets.rotation.round_failed")
        await asyncio.sleep(ROTATION_TICK_SECONDS)
