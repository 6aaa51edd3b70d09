"""Dynamic database credentials: Vault's database secrets engine with its PostgreSQL plugin.

A ``database`` mount holds connections (``config/<name>``: where to connect and as whom, the
administrative password sealed) and roles (``roles/<name>``: the SQL that creates, renews and
revokes a user). Each ``creds/<role>`` call creates a real PostgreSQL role with a random
password and a lease; the password is answered once and never stored. A lease is renewed up
to its maximum TTL and revoked on request, or by the sweeper once it has expired, whichever
process runs it and however often it was restarted meanwhile: the leases are in the database.

Statement templates take Vault's placeholders, ``{{name}}`` (also ``{{username}}``),
``{{password}}`` and ``{{expiration}}``. Each statement is sent as it is (simple query
protocol), so a statement may hold several SQL commands and ``DO $$ … $$`` blocks; the
statements of one operation run in one transaction.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import string
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import SYSTEM, Outcome, record_event
from keel.core.context import ResourceKey
from keel.core.crypto import DecryptionError, Keyring
from keel.core.db import utcnow
from keel.core.errors import BadRequest, NotFound
from keel.core.logging import get_logger
from keel.core.sealed import register_sealed_column
from keel.core.tenancy import bind_tenant
from keel.secrets.engines.kv import parse_duration
from keel.secrets.models import DatabaseConnection, DatabaseRole, Lease, SecretMount

log = get_logger(__name__)

DATABASE_RESOURCE: ResourceKey[DatabaseEngine] = ResourceKey("secrets.database")
POSTGRES_PLUGIN = "postgresql-database-plugin"
#: A role's ``default_ttl`` / ``max_ttl`` of 0 means these (Vault's system defaults are
#: longer; an hour and a day keep forgotten credentials short-lived).
DEFAULT_TTL_SECONDS = 3600
DEFAULT_MAX_TTL_SECONDS = 86_400
CONNECT_TIMEOUT_SECONDS = 10.0
STATEMENT_TIMEOUT_SECONDS = 30.0
#: How often the sweeper looks for expired leases, and how many it revokes a round at most.
SWEEP_INTERVAL_SECONDS = 2.0
SWEEP_BATCH = 100
#: After the n-th failed revocation the next attempt waits min(5 s * 2^(n-1), 10 min).
RETRY_BASE_SECONDS = 5
RETRY_MAX_SECONDS = 600

#: Vault's PostgreSQL plugin renews with this when a role names no renew statements.
DEFAULT_RENEW_STATEMENTS = ["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}';"]
#: Revocation when a role names none: end the user's sessions, drop what it owns and the
#: privileges it holds in the connection's database, then the role. Harmless when the role is
#: already gone, so a retried revocation succeeds.
DEFAULT_REVOCATION_STATEMENTS = [
    """DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{{name}}') THEN
    PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';
    EXECUTE 'DROP OWNED BY "{{name}}"';
    EXECUTE 'DROP ROLE "{{name}}"';
  END IF;
END
$$;"""
]
#: The creation statement the documentation suggests: the role itself expires with its
#: lease, so it stops logging in even while no sweeper runs.
EXAMPLE_CREATION_STATEMENTS = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";',
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PLACEHOLDER = re.compile(r"\{\{\s*(name|username|password|expiration)\s*\}\}")
_USERNAME_PART = re.compile(r"[^a-z0-9_]")
_BASE62 = string.ascii_letters + string.digits
MAX_USERNAME_LENGTH = 63  # PostgreSQL's NAMEDATALEN - 1
MAX_STATEMENTS = 50
MAX_STATEMENT_LENGTH = 16 * 1024

SessionFactory = Callable[[], AbstractAsyncContextManager[AsyncSession]]


class TargetDatabaseError(BadRequest):
    """The target database refused or could not be reached; the message holds no password."""


class InvalidLease(BadRequest):
    """No live lease of that ID in the caller's tenant (Vault answers 400)."""


@dataclass(frozen=True)
class IssuedCredentials:
    lease: Lease
    username: str
    password: str = field(repr=False)
    ttl_seconds: int


@dataclass(frozen=True)
class Renewal:
    lease: Lease
    ttl_seconds: int
    #: The requested TTL went past the lease's maximum and was cut to it.
    capped: bool


# -- pure helpers ----------------------------------------------------------------------------


def check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise BadRequest(f"invalid {what} name {value!r}: letters, digits, '_', '.' and '-'")
    return value


def generate_username(display_name: str, role_name: str, now: datetime) -> str:
    """Vault's default: ``v-<display name>-<role>-<random>-<unix time>``, at most 63 characters
    of lowercase letters, digits, ``_`` and ``-`` (templates quote it: ``"{{name}}"``)."""
    display = _USERNAME_PART.sub("_", display_name.lower())[:8] or "token"
    role = _USERNAME_PART.sub("_", role_name.lower())[:8]
    random = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(20))
    return f"v-{display}-{role}-{random}-{int(now.timestamp())}"[:MAX_USERNAME_LENGTH]


def generate_password(length: int = 32) -> str:
    """Letters and digits only (safe inside ``'…'`` in SQL), with each kind at least once."""
    while True:
        password = "".join(secrets.choice(_BASE62) for _ in range(length))
        if (
            any(c.islower() for c in password)
            and any(c.isupper() for c in password)
            and any(c.isdigit() for c in password)
        ):
            return password


def postgres_time(moment: datetime) -> str:
    """``{{expiration}}`` as Vault writes it (``2006-01-02 15:04:05-0700``), in UTC."""
    return moment.strftime("%Y-%m-%d %H:%M:%S+0000")


def render_statement(template: str, values: Mapping[str, str]) -> str:
    """``template`` with Vault's ``{{name}}``-style placeholders replaced; others left as is."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def render_connection_url(url: str, username: str, password: str) -> str:
    return url.replace("{{username}}", quote(username, safe="")).replace(
        "{{password}}", quote(password, safe="")
    )


def is_role_allowed(allowed_roles: Sequence[str], role_name: str) -> bool:
    return "*" in allowed_roles or role_name in allowed_roles


def retry_delay(attempts: int) -> timedelta:
    """The wait before the next revocation after ``attempts`` failed ones."""
    exponent = min(max(attempts - 1, 0), 16)
    return timedelta(seconds=min(RETRY_BASE_SECONDS * 2**exponent, RETRY_MAX_SECONDS))


def without_secrets(message: str, *values: str) -> str:
    """``message`` with every secret of ``values`` (and its URL-quoted form) redacted."""
    for value in values:
        if value:
            message = message.replace(value, "[redacted]")
            message = message.replace(quote(value, safe=""), "[redacted]")
    return message


def _statements(value: Any, what: str) -> list[str]:
    """Vault takes a string or a list of strings; empty strings are dropped."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise BadRequest(f"{what} is a string or a list of strings")
    statements = [item for item in items if item.strip()]
    if len(statements) > MAX_STATEMENTS or any(
        len(item) > MAX_STATEMENT_LENGTH for item in statements
    ):
        raise BadRequest(f"{what}: at most {MAX_STATEMENTS} statements of 16 KiB each")
    return statements


def _allowed_roles(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequest("allowed_roles is a list of role names, or '*'")
    return value


def _boolean(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise BadRequest(f"{name} is true or false")


def _connection_url(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 2048:
        raise BadRequest("connection_url is required: postgresql://{{username}}:{{password}}@…")
    try:
        parts = urlsplit(value)
    except ValueError:
        raise BadRequest("connection_url is not a valid URL") from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise BadRequest("connection_url is a postgresql:// URL")
    # The administrative password is kept sealed, never in the URL (which is answered back).
    if parts.password not in (None, "{{password}}"):
        raise BadRequest(
            "connection_url takes the password as the {{password}} placeholder; "
            "send the password itself in 'password'"
        )
    return value


# -- the engine ------------------------------------------------------------------------------


class DatabaseEngine:
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    # -- mounts ------------------------------------------------------------------------------

    async def mount(self, session: AsyncSession, tenant_id: str, path: str) -> SecretMount:
        """The tenant's ``database`` mount at ``path``."""
        bind_tenant(session, tenant_id)
        mount = await session.scalar(
            select(SecretMount).where(SecretMount.path == path, SecretMount.type == "database")
        )
        if mount is None:
            raise NotFound(f"no database secrets engine is mounted at {path!r}")
        return mount

    # -- connections -------------------------------------------------------------------------

    async def connection(
        self, session: AsyncSession, mount: SecretMount, name: str
    ) -> DatabaseConnection | None:
        return await session.scalar(
            select(DatabaseConnection).where(
                DatabaseConnection.mount_id == mount.id, DatabaseConnection.name == name
            )
        )

    async def connection_names(self, session: AsyncSession, mount: SecretMount) -> list[str]:
        return sorted(
            await session.scalars(
                select(DatabaseConnection.name).where(DatabaseConnection.mount_id == mount.id)
            )
        )

    async def write_connection(
        self, session: AsyncSession, mount: SecretMount, name: str, body: dict[str, Any]
    ) -> DatabaseConnection:
        """Create or update ``config/<name>``; fields left out keep their value. With
        ``verify_connection`` (the default) the database must accept the credentials."""
        check_name(name, "connection")
        connection = await self.connection(session, mount, name)
        plugin = body.get("plugin_name", connection.plugin_name if connection else None)
        if plugin != POSTGRES_PLUGIN:
            raise BadRequest(f"plugin_name must be {POSTGRES_PLUGIN!r} (the one plugin available)")
        url = _connection_url(
            body.get("connection_url", connection.connection_url if connection else None)
        )
        username = body.get("username", connection.username if connection else "")
        if not isinstance(username, str) or len(username) > 128:
            raise BadRequest("username is a string of up to 128 characters")
        password = body.get("password")
        if password is not None and (not isinstance(password, str) or len(password) > 1024):
            raise BadRequest("password is a string of up to 1024 characters")
        if "allowed_roles" in body:
            allowed_roles = _allowed_roles(body["allowed_roles"])
        else:
            allowed_roles = list(connection.allowed_roles) if connection else []
        verify = _boolean(body.get("verify_connection", True), "verify_connection")
        if connection is None:
            connection = DatabaseConnection(
                tenant_id=mount.tenant_id, mount_id=mount.id, name=name, plugin_name=plugin
            )
            session.add(connection)
        connection.plugin_name = plugin
        connection.connection_url = url
        connection.username = username
        connection.allowed_roles = allowed_roles
        connection.updated_at = utcnow()
        if password is not None:
            connection.password_sealed = self.keyring.seal(
                password.encode(), _password_data(mount, name)
            )
        if verify:
            target = await self._connect(mount, connection)
            await _close(target)
        await session.flush()
        return connection

    async def delete_connection(self, session: AsyncSession, mount: SecretMount, name: str) -> bool:
        connection = await self.connection(session, mount, name)
        if connection is None:
            return False
        await session.delete(connection)
        await session.flush()
        return True

    @staticmethod
    def connection_document(connection: DatabaseConnection) -> dict[str, Any]:
        """Vault's answer to ``GET config/<name>``: never the password."""
        return {
            "plugin_name": connection.plugin_name,
            "plugin_version": "",
            "connection_details": {
                "connection_url": connection.connection_url,
                "username": connection.username,
            },
            "allowed_roles": list(connection.allowed_roles),
            "root_credentials_rotate_statements": [],
            "password_policy": "",
            "verify_connection": True,
        }

    # -- roles -------------------------------------------------------------------------------

    async def role(
        self, session: AsyncSession, mount: SecretMount, name: str
    ) -> DatabaseRole | None:
        return await session.scalar(
            select(DatabaseRole).where(DatabaseRole.mount_id == mount.id, DatabaseRole.name == name)
        )

    async def role_names(self, session: AsyncSession, mount: SecretMount) -> list[str]:
        return sorted(
            await session.scalars(
                select(DatabaseRole.name).where(DatabaseRole.mount_id == mount.id)
            )
        )

    async def write_role(
        self, session: AsyncSession, mount: SecretMount, name: str, body: dict[str, Any]
    ) -> DatabaseRole:
        """Create or update ``roles/<name>``; fields left out keep their value."""
        check_name(name, "role")
        role = await self.role(session, mount, name)
        db_name = body.get("db_name", role.db_name if role else None)
        if not isinstance(db_name, str) or not db_name:
            raise BadRequest("db_name is required: the name of a connection of this mount")
        check_name(db_name, "connection")
        creation = (
            _statements(body["creation_statements"], "creation_statements")
            if "creation_statements" in body
            else list(role.creation_statements if role else [])
        )
        if not creation:
            raise BadRequest("creation_statements is required: the SQL that creates the user")
        revocation = (
            _statements(body["revocation_statements"], "revocation_statements")
            if "revocation_statements" in body
            else list(role.revocation_statements if role else [])
        )
        renew = (
            _statements(body["renew_statements"], "renew_statements")
            if "renew_statements" in body
            else list(role.renew_statements if role else [])
        )
        default_ttl = (
            parse_duration(body["default_ttl"])
            if body.get("default_ttl") is not None
            else (role.default_ttl_s if role else 0)
        )
        max_ttl = (
            parse_duration(body["max_ttl"])
            if body.get("max_ttl") is not None
            else (role.max_ttl_s if role else 0)
        )
        if default_ttl and max_ttl and default_ttl > max_ttl:
            raise BadRequest("default_ttl cannot be greater than max_ttl")
        if role is None:
            role = DatabaseRole(tenant_id=mount.tenant_id, mount_id=mount.id, name=name)
            session.add(role)
        role.db_name = db_name
        role.creation_statements = creation
        role.revocation_statements = revocation
        role.renew_statements = renew
        role.default_ttl_s = default_ttl
        role.max_ttl_s = max_ttl
        await session.flush()
        return role

    async def delete_role(self, session: AsyncSession, mount: SecretMount, name: str) -> bool:
        role = await self.role(session, mount, name)
        if role is None:
            return False
        await session.delete(role)
        await session.flush()
        return True

    @staticmethod
    def role_document(role: DatabaseRole) -> dict[str, Any]:
        return {
            "db_name": role.db_name,
            "creation_statements": list(role.creation_statements),
            "revocation_statements": list(role.revocation_statements),
            "renew_statements": list(role.renew_statements),
            "rollback_statements": [],
            "default_ttl": role.default_ttl_s,
            "max_ttl": role.max_ttl_s,
            "credential_type": "password",
            "credential_config": {},
        }

    # -- credentials and leases --------------------------------------------------------------

    async def issue(
        self, session: AsyncSession, mount: SecretMount, role_name: str, display_name: str
    ) -> IssuedCredentials:
        """A new user in the role's database, and its lease (flushed, not committed).

        The lease row is written before the user is created, so a failure to create it leaves
        nothing behind; a failure to commit after it leaves a user that expires by itself
        (``VALID UNTIL``) and that nothing ever answered.
        """
        role = await self.role(session, mount, role_name)
        if role is None:
            raise BadRequest(f"unknown role: {role_name}")
        connection = await self.connection(session, mount, role.db_name)
        if connection is None:
            raise BadRequest(f"unknown database connection {role.db_name!r} of role {role_name!r}")
        if not is_role_allowed(connection.allowed_roles, role.name):
            raise BadRequest(
                f'"{role.name}" is not an allowed role of connection {connection.name!r}'
            )
        now = utcnow().replace(microsecond=0)
        max_ttl = role.max_ttl_s or DEFAULT_MAX_TTL_SECONDS
        ttl = min(role.default_ttl_s or DEFAULT_TTL_SECONDS, max_ttl)
        username = generate_username(display_name, role.name, now)
        password = generate_password()
        expires_at = now + timedelta(seconds=ttl)
        random = "".join(secrets.choice(_BASE62) for _ in range(24))
        lease = Lease(
            tenant_id=mount.tenant_id,
            lease_id=f"{mount.path}/creds/{role.name}/{random}",
            mount_id=mount.id,
            role_name=role.name,
            db_name=connection.name,
            username=username,
            issued_at=now,
            expires_at=expires_at,
            max_expires_at=now + timedelta(seconds=max_ttl),
            revoke_attempts=0,
        )
        session.add(lease)
        await session.flush()
        values = {
            "name": username,
            "username": username,
            "password": password,
            "expiration": postgres_time(expires_at),
        }
        await self._run(mount, connection, role.creation_statements, values, password)
        return IssuedCredentials(lease, username, password, ttl)

    async def lease(self, session: AsyncSession, lease_id: Any) -> Lease:
        """The caller's tenant's lease ``lease_id``, revoked or not; locked for the change."""
        if not isinstance(lease_id, str) or not lease_id or len(lease_id) > 400:
            raise BadRequest("lease_id is required")
        lease = await session.scalar(
            select(Lease).where(Lease.lease_id == lease_id).with_for_update()
        )
        if lease is None:
            raise InvalidLease("invalid lease")
        return lease

    async def renew(
        self, session: AsyncSession, lease_id: Any, increment_seconds: int | None
    ) -> Renewal:
        """Extend a live lease by ``increment_seconds`` from now (default: the role's TTL), never
        past its maximum; the renew statements set the user's new expiry."""
        lease = await self.lease(session, lease_id)
        now = utcnow().replace(microsecond=0)
        if lease.revoked_at is not None:
            raise InvalidLease("lease not found or lease is not renewable: it was revoked")
        if lease.expires_at <= now:
            raise InvalidLease("lease expired")
        mount, connection, role = await self._lease_setting(session, lease)
        if role is None:
            raise BadRequest(f"the role {lease.role_name!r} of this lease no longer exists")
        requested = increment_seconds or role.default_ttl_s or DEFAULT_TTL_SECONDS
        wanted = now + timedelta(seconds=requested)
        expires_at = min(wanted, lease.max_expires_at)
        values = {
            "name": lease.username,
            "username": lease.username,
            "password": "",
            "expiration": postgres_time(expires_at),
        }
        statements = role.renew_statements or DEFAULT_RENEW_STATEMENTS
        await self._run(mount, connection, statements, values)
        lease.expires_at = expires_at
        ttl = int((expires_at - now).total_seconds())
        return Renewal(lease, ttl, capped=wanted > lease.max_expires_at)

    async def revoke(self, session: AsyncSession, lease_id: Any) -> Lease | None:
        """Revoke now: the revocation statements, then the lease is marked. An unknown or
        already revoked lease is left alone (Vault answers both with success)."""
        try:
            lease = await self.lease(session, lease_id)
        except InvalidLease:
            return None
        if lease.revoked_at is None:
            await self._revoke_user(session, lease)
            lease.revoked_at = utcnow()
            lease.retry_at, lease.last_error = None, None
        return lease

    async def revoke_expired(self, sessions: SessionFactory, limit: int = SWEEP_BATCH) -> int:
        """One sweep: revoke leases whose time has passed, each in a transaction of its own;
        returns how many were handled (revoked or failed).

        Each lease is claimed with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so sweepers of
        several processes share the work; SQLite has one process (and no row locks). A failed
        revocation keeps the lease, counts the attempt, keeps the error (without secrets) and
        waits :func:`retry_delay` before the next.
        """
        handled = 0
        while handled < limit:
            async with sessions() as session:
                now = utcnow()
                lease = await session.scalar(
                    select(Lease)
                    .where(
                        Lease.revoked_at.is_(None),
                        Lease.expires_at <= now,
                        or_(Lease.retry_at.is_(None), Lease.retry_at <= now),
                    )
                    .order_by(Lease.expires_at)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                    .execution_options(all_tenants=True)
                )
                if lease is None:
                    return handled
                bind_tenant(session, lease.tenant_id)
                await self._revoke_expired_lease(session, lease, now)
            handled += 1
        return handled

    async def _revoke_expired_lease(
        self, session: AsyncSession, lease: Lease, now: datetime
    ) -> None:
        event: dict[str, Any] = {
            "tenant_id": lease.tenant_id,
            "action": "secrets.lease.revoke",
            "actor": SYSTEM,
            "target_type": "secret_path",
            "target_id": lease.lease_id,
        }
        try:
            await self._revoke_user(session, lease)
        except Exception as error:  # any failure: keep the lease and retry later
            message = str(error) if isinstance(error, BadRequest) else type(error).__name__
            lease.revoke_attempts += 1
            lease.last_error = message[:2000]
            lease.retry_at = now + retry_delay(lease.revoke_attempts)
            log.warning(
                "secrets.lease.revoke_failed",
                lease_id=lease.lease_id,
                attempts=lease.revoke_attempts,
                error=lease.last_error,
            )
            record_event(
                session,
                outcome=Outcome.FAILURE,
                data={"reason": "expired", "attempts": lease.revoke_attempts, "error": message},
                **event,
            )
            return
        lease.revoked_at, lease.retry_at, lease.last_error = utcnow(), None, None
        log.info("secrets.lease.revoked", lease_id=lease.lease_id, reason="expired")
        record_event(
            session,
            data={
                "reason": "expired",
                "username": lease.username,
                "attempts": lease.revoke_attempts,
            },
            **event,
        )

    # -- the target database -----------------------------------------------------------------

    async def _lease_setting(
        self, session: AsyncSession, lease: Lease
    ) -> tuple[SecretMount, DatabaseConnection, DatabaseRole | None]:
        """The mount, connection and (if it still exists) role a lease was issued from."""
        mount = await session.scalar(select(SecretMount).where(SecretMount.id == lease.mount_id))
        if mount is None:  # cascaded away with its leases; cannot happen for a loaded lease
            raise BadRequest("the mount of this lease no longer exists")
        connection = await self.connection(session, mount, lease.db_name)
        if connection is None:
            raise TargetDatabaseError(
                f"the database connection {lease.db_name!r} of this lease no longer exists"
            )
        return mount, connection, await self.role(session, mount, lease.role_name)

    async def _revoke_user(self, session: AsyncSession, lease: Lease) -> None:
        mount, connection, role = await self._lease_setting(session, lease)
        statements = (role.revocation_statements if role else None) or (
            DEFAULT_REVOCATION_STATEMENTS
        )
        values = {
            "name": lease.username,
            "username": lease.username,
            "password": "",
            "expiration": postgres_time(lease.expires_at),
        }
        await self._run(mount, connection, statements, values)

    def _admin_password(self, mount: SecretMount, connection: DatabaseConnection) -> str:
        if connection.password_sealed is None:
            return ""
        try:
            opened = self.keyring.open(
                connection.password_sealed, _password_data(mount, connection.name)
            )
        except DecryptionError:
            raise TargetDatabaseError(
                f"the password of connection {connection.name!r} does not open: altered, or "
                "sealed under a master key this server does not hold"
            ) from None
        return opened.decode()

    async def _connect(self, mount: SecretMount, connection: DatabaseConnection) -> Any:
        password = self._admin_password(mount, connection)
        dsn = render_connection_url(connection.connection_url, connection.username, password)
        import asyncpg  # here, not at start: 14 MB a process that never serves this engine

        try:
            return await asyncpg.connect(
                dsn, timeout=CONNECT_TIMEOUT_SECONDS, command_timeout=STATEMENT_TIMEOUT_SECONDS
            )
        except (
            OSError,
            TimeoutError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            ValueError,
        ) as error:
            detail = without_secrets(str(error) or type(error).__name__, dsn, password)
            raise TargetDatabaseError(
                f"error verifying connection {connection.name!r}: {detail}"
            ) from None

    async def _run(
        self,
        mount: SecretMount,
        connection: DatabaseConnection,
        statements: Sequence[str],
        values: Mapping[str, str],
        *secret_values: str,
    ) -> None:
        """``statements`` rendered with ``values``, in one transaction of the target database."""
        target = await self._connect(mount, connection)
        import asyncpg  # imported by _connect already

        try:
            async with target.transaction():
                for statement in statements:
                    await target.execute(render_statement(statement, values))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            detail = without_secrets(str(error) or type(error).__name__, *secret_values)
            raise TargetDatabaseError(
                f"the database {connection.name!r} refused: {detail}"
            ) from None
        finally:
            await _close(target)


def password_associated_data(tenant_id: str, mount_path: str, name: str) -> bytes:
    """Associated data of a connection's sealed password: its tenant, mount and name."""
    return f"secrets.database:{tenant_id}:{mount_path}:{name}:password".encode()


def _password_data(mount: SecretMount, name: str) -> bytes:
    return password_associated_data(mount.tenant_id, mount.path, name)


register_sealed_column(
    DatabaseConnection.password_sealed,
    lambda row: password_associated_data(row.tenant_id, row.mount_path, row.name),
    context=(
        DatabaseConnection.tenant_id,
        DatabaseConnection.name,
        SecretMount.path.label("mount_path"),
    ),
    joins=((SecretMount, SecretMount.id == DatabaseConnection.mount_id),),
)


async def _close(connection: Any) -> None:
    import asyncpg  # imported by DatabaseEngine._connect already

    try:
        await asyncio.wait_for(connection.close(), timeout=5.0)
    except (OSError, TimeoutError, asyncpg.InterfaceError):
        connection.terminate()


async def sweep_forever(
    engine: DatabaseEngine, sessions: SessionFactory, interval: float = SWEEP_INTERVAL_SECONDS
) -> None:
    """The sweeper loop: revoke expired leases every ``interval`` seconds, for ever."""
    while True:
        try:
            await engine.revoke_expired(sessions)
        except Exception:  # a failed round must not end the loop; the next one retries
            log.exception("secrets.lease.sweep_failed")
        await asyncio.sleep(interval)
