"""The KV version 2 engine: versioned secrets, sealed at rest, with Vault's semantics.

Every rule follows Vault's KV v2: versions count from 1; ``cas`` 0 writes only a new secret,
``cas`` n only over version n; ``max_versions`` (the secret's, else the mount's, else 10)
keeps the newest versions and forgets older ones; a deleted version can be undeleted, a
destroyed one cannot; ``delete_version_after`` schedules the deletion of each new version.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, Row, Select, bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.cache import SharedCache, invalidate_after_commit
from keel.core.changes import record_change
from keel.core.context import ResourceKey
from keel.core.crypto import DecryptionError, Keyring
from keel.core.db import utcnow
from keel.core.errors import BadRequest, NotFound
from keel.core.sealed import register_sealed_column
from keel.core.sqlite import hold_write_lock
from keel.core.tenancy import bind_tenant
from keel.secrets.models import Secret, SecretMount, SecretVersion

DEFAULT_MOUNT = "secret"
DEFAULT_MAX_VERSIONS = 10
MAX_PATH_LENGTH = 512
#: A secret's data, as JSON: the largest Vault accepts by default is 512 KiB a request.
MAX_DATA_BYTES = 512 * 1024
_SEGMENT = re.compile(r"^[A-Za-z0-9_.@=+-][A-Za-z0-9_.@=+ -]*$")
_MOUNT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class CheckAndSetFailed(BadRequest):
    """Vault answers a failed check-and-set with 400."""


class SecretUnreadable(Exception):
    """A stored value does not open: tampered with, or sealed under a key no longer held."""


def check_mount_path(path: str) -> str:
    path = path.strip("/")
    if not _MOUNT.fullmatch(path):
        raise BadRequest(f"invalid mount path {path!r}: lowercase letters, digits, - and _")
    return path


def check_secret_path(path: str) -> str:
    """``path`` without surrounding slashes; refuses empty, relative and odd segments."""
    path = path.strip("/")
    if not path or len(path) > MAX_PATH_LENGTH:
        raise BadRequest("a secret path is 1 to 512 characters")
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise BadRequest(f"invalid path segment {segment!r}")
    return path


def parse_duration(value: Any) -> int:
    """Seconds of a Vault duration: an integer of seconds, or ``"1h30m"``, ``"45s"``..."""
    if isinstance(value, bool):
        raise BadRequest("a duration is a number of seconds or a string like '1h30m'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and value.isdigit():
        seconds = int(value)
    elif isinstance(value, str) and value and (match := _DURATION.fullmatch(value)):
        hours, minutes, secs = (int(part or 0) for part in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    else:
        raise BadRequest(f"invalid duration {value!r}: use seconds or a string like '1h30m'")
    if not 0 <= seconds <= 100 * 365 * 86_400:
        raise BadRequest("a duration is between 0 and 100 years")
    return seconds


def format_duration(seconds: int) -> str:
    """Vault's form: ``0s``, ``45s``, ``1h30m0s``."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def vault_time(moment: datetime | None) -> str:
    """RFC 3339 with nanoseconds, as Vault writes times; ``""`` for none."""
    if moment is None:
        return ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


@dataclass(frozen=True)
class Location:
    """Where a secret lives: its tenant, mount and path."""

    tenant_id: str
    mount: str
    path: str

    def associated_data(self, version: int) -> bytes:
        return f"secrets.kv:{self.tenant_id}:{self.mount}:{self.path}:{version}".encode()


register_sealed_column(
    SecretVersion.sealed,
    lambda row: Location(row.tenant_id, row.mount_path, row.path).associated_data(row.version),
    context=(
        SecretVersion.tenant_id,
        SecretVersion.version,
        SecretMount.path.label("mount_path"),
        Secret.path,
    ),
    joins=(
        (Secret, Secret.id == SecretVersion.secret_id),
        (SecretMount, SecretMount.id == Secret.mount_id),
    ),
)


@dataclass(frozen=True)
class ReadResult:
    data: dict[str, Any] | None
    metadata: dict[str, Any]


class KvEngine:
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    # -- mounts ------------------------------------------------------------------------------

    async def mount(self, session: AsyncSession, tenant_id: str, path: str) -> SecretMount:
        """The tenant's mount at ``path``; the default ``secret`` mount exists from first use."""
        bind_tenant(session, tenant_id)
        mount = await session.scalar(select(SecretMount).where(SecretMount.path == path))
        if mount is not None:
            return mount
        if path != DEFAULT_MOUNT:
            raise NotFound(f"no secrets engine is mounted at {path!r}")
        return await self.enable(session, tenant_id, DEFAULT_MOUNT, "key/value secret storage")

    async def enable(
        self,
        session: AsyncSession,
        tenant_id: str,
        path: str,
        description: str = "",
        engine_type: str = "kv",
    ) -> SecretMount:
        """A new mount at ``path`` of ``engine_type``: ``kv`` (this engine) or ``database``
        (:mod:`keel.secrets.engines.database`)."""
        bind_tenant(session, tenant_id)
        path = check_mount_path(path)
        if await session.scalar(select(SecretMount.id).where(SecretMount.path == path)):
            raise BadRequest(f"path is already in use at {path}/")
        mount = SecretMount(
            tenant_id=tenant_id, path=path, description=description, type=engine_type
        )
        session.add(mount)
        await session.flush()
        return mount

    async def mounts(self, session: AsyncSession, tenant_id: str) -> list[SecretMount]:
        bind_tenant(session, tenant_id)
        await self.mount(session, tenant_id, DEFAULT_MOUNT)
        return list(await session.scalars(select(SecretMount).order_by(SecretMount.path)))

    async def configure(
        self, session: AsyncSession, mount: SecretMount, changes: dict[str, Any]
    ) -> None:
        if "max_versions" in changes:
            mount.max_versions = _max_versions(changes["max_versions"])
        if "cas_required" in changes:
            mount.cas_required = _boolean(changes["cas_required"], "cas_required")
        if "delete_version_after" in changes:
            mount.delete_version_after_s = parse_duration(changes["delete_version_after"])

    # -- data --------------------------------------------------------------------------------

    async def read(
        self,
        session: AsyncSession,
        tenant_id: str,
        mount_path: str,
        path: str,
        version: int | None = None,
    ) -> ReadResult:
        """The data of ``version`` (default: the current one) and its metadata; ``data`` is
        None for a deleted or destroyed version (Vault answers those with 404).

        One Core query for mount, secret and version: reads are the hot path, and three ORM
        queries cost three times as much. Tenant-scoped by hand, as Core skips the ORM's
        scoping.
        """
        key = (tenant_id, mount_path, path)
        cached = _ROWS.get(key)
        row = None if cached is None else cached.get(version)
        if row is None:
            row = await self._read_row(session, tenant_id, mount_path, path, version)
        deletion_time = row.deletion_time
        metadata = {
            "created_time": vault_time(row.created_at),
            "custom_metadata": row.custom_metadata or None,
            "deletion_time": vault_time(deletion_time),
            "destroyed": row.destroyed,
            "version": row.version,
        }
        if row.destroyed or row.sealed is None or (deletion_time and deletion_time <= utcnow()):
            return ReadResult(None, metadata)
        location = Location(tenant_id, mount_path, path)
        try:
            plaintext = self.keyring.open(row.sealed, location.associated_data(row.version))
        except DecryptionError as error:
            if cached is not None:  # sealed anew (a master key rotation) since: read again
                _ROWS.drop(key)
                return await self.read(session, tenant_id, mount_path, path, version)
            raise SecretUnreadable(str(error)) from None
        return ReadResult(json.loads(plaintext), metadata)

    async def _read_row(
        self, session: AsyncSession, tenant_id: str, mount_path: str, path: str, version: int | None
    ) -> Row[Any]:
        """The version's row from the database, kept in :data:`_ROWS` for the next read."""
        key = (tenant_id, mount_path, path)
        stamp = _ROWS.stamp()
        query = _READ_CURRENT if version is None else _READ_VERSION
        parameters: dict[str, Any] = {"tenant_id": tenant_id, "mount": mount_path, "path": path}
        if version is not None:
            parameters["version"] = version
        row: Row[Any] | None = (
            await (await session.connection()).execute(query, parameters)
        ).first()
        if row is None:
            raise NotFound()
        _ROWS.put(key, {**(_ROWS.get(key) or {}), version: row}, stamp)
        return row

    async def write(
        self,
        session: AsyncSession,
        mount: SecretMount,
        path: str,
        data: Any,
        cas: int | None = None,
        operation: str = "write",
    ) -> tuple[SecretVersion, Secret]:
        if not isinstance(data, dict):
            raise BadRequest("no data provided")
        plaintext = json.dumps(data, separators=(",", ":")).encode()
        if len(plaintext) > MAX_DATA_BYTES:
            raise BadRequest(f"secret data is at most {MAX_DATA_BYTES} bytes")
        await hold_write_lock(session)  # SQLite: the version read stays current until commit
        secret = await self._secret(session, mount, path, for_update=True)
        current = secret.current_version if secret is not None else 0
        cas_required = mount.cas_required or (secret is not None and secret.cas_required)
        if cas is None and cas_required:
            raise CheckAndSetFailed("check-and-set parameter required for this call")
        if cas is not None and cas != current:
            raise CheckAndSetFailed("check-and-set parameter did not match the current version")
        now = utcnow()
        if secret is None:
            secret = Secret(
                tenant_id=mount.tenant_id, mount_id=mount.id, path=path, custom_metadata={}
            )
            session.add(secret)
            await session.flush()
        version = current + 1
        location = Location(mount.tenant_id, mount.path, path)
        after = secret.delete_version_after_s or mount.delete_version_after_s
        row = SecretVersion(
            tenant_id=mount.tenant_id,
            secret_id=secret.id,
            version=version,
            sealed=self.keyring.seal(plaintext, location.associated_data(version)),
            created_at=now,
            deletion_time=now + timedelta(seconds=after) if after else None,
        )
        session.add(row)
        secret.current_version = version
        secret.oldest_version = secret.oldest_version or version
        secret.updated_at = now
        await self._keep_newest(session, mount, secret)
        await session.flush()
        _record_change(session, mount, path, operation, version=version)
        return row, secret

    async def patch(
        self,
        session: AsyncSession,
        mount: SecretMount,
        path: str,
        changes: Any,
        cas: int | None = None,
    ) -> tuple[SecretVersion, Secret]:
        """RFC 7396 merge patch of the current version into a new one."""
        if not isinstance(changes, dict):
            raise BadRequest("no data provided")
        current = await self.read(session, mount.tenant_id, mount.path, path)
        if current.data is None:
            raise NotFound()
        merged = _merge_patch(current.data, changes)
        version = current.metadata["version"]
        if cas is not None and cas != version:
            raise CheckAndSetFailed("check-and-set parameter did not match the current version")
        return await self.write(session, mount, path, merged, cas=version, operation="patch")

    async def delete_versions(
        self, session: AsyncSession, mount: SecretMount, path: str, versions: Sequence[int] = ()
    ) -> list[int]:
        """Soft-delete ``versions`` (default: the current one); returns those deleted."""
        now = utcnow()

        def delete(row: SecretVersion) -> bool:
            if row.destroyed or _deleted(row):
                return False
            row.deletion_time = now
            return True

        return await self._change(session, mount, path, versions, delete, "delete")

    async def undelete(
        self, session: AsyncSession, mount: SecretMount, path: str, versions: Sequence[int]
    ) -> list[int]:
        def undelete(row: SecretVersion) -> bool:
            if row.destroyed or row.deletion_time is None:
                return False
            row.deletion_time = None
            return True

        return await self._change(session, mount, path, versions, undelete, "undelete")

    async def destroy(
        self, session: AsyncSession, mount: SecretMount, path: str, versions: Sequence[int]
    ) -> list[int]:
        """Erase the sealed values of ``versions`` for good; their metadata stays."""

        def destroy(row: SecretVersion) -> bool:
            if row.destroyed:
                return False
            row.destroyed, row.sealed = True, None
            return True

        return await self._change(session, mount, path, versions, destroy, "destroy")

    async def _change(
        self,
        session: AsyncSession,
        mount: SecretMount,
        path: str,
        versions: Sequence[int],
        change: Callable[[SecretVersion], bool],
        operation: str,
    ) -> list[int]:
        """Apply ``change`` to ``versions`` (default: the current one); the versions changed."""
        secret = await self._secret(session, mount, path)
        if secret is None:
            return []
        rows = await self._versions(session, secret, list(versions) or [secret.current_version])
        changed = [row.version for row in rows if change(row)]
        if changed:
            _record_change(session, mount, path, operation, secret.current_version, changed)
        return changed

    # -- metadata ----------------------------------------------------------------------------

    async def metadata(self, session: AsyncSession, mount: SecretMount, path: str) -> Secret:
        secret = await self._secret(session, mount, path)
        if secret is None:
            raise NotFound()
        return secret

    async def exists(self, session: AsyncSession, mount: SecretMount, path: str) -> bool:
        """Whether a secret is at ``path`` (a write there is Vault's ``update``, else its
        ``create``)."""
        try:
            await self.metadata(session, mount, path)
        except NotFound:
            return False
        return True

    async def metadata_document(
        self, session: AsyncSession, mount: SecretMount, secret: Secret
    ) -> dict[str, Any]:
        rows = await session.scalars(
            select(SecretVersion)
            .where(SecretVersion.secret_id == secret.id)
            .order_by(SecretVersion.version)
        )
        return {
            "cas_required": secret.cas_required,
            "created_time": vault_time(secret.created_at),
            "current_version": secret.current_version,
            "custom_metadata": secret.custom_metadata or None,
            "delete_version_after": format_duration(secret.delete_version_after_s),
            "max_versions": secret.max_versions,
            "oldest_version": secret.oldest_version,
            "updated_time": vault_time(secret.updated_at),
            "versions": {
                str(row.version): {
                    "created_time": vault_time(row.created_at),
                    "deletion_time": vault_time(row.deletion_time),
                    "destroyed": row.destroyed,
                }
                for row in rows
            },
        }

    async def write_metadata(
        self,
        session: AsyncSession,
        mount: SecretMount,
        path: str,
        changes: dict[str, Any],
        *,
        merge: bool = False,
    ) -> Secret:
        """Set what ``changes`` names; with ``merge`` (PATCH), ``custom_metadata`` is merged
        into the current one (a null value removes a key) instead of replacing it."""
        secret = await self._secret(session, mount, path, for_update=True)
        if secret is None:
            secret = Secret(
                tenant_id=mount.tenant_id, mount_id=mount.id, path=path, custom_metadata={}
            )
            session.add(secret)
        if "max_versions" in changes:
            secret.max_versions = _max_versions(changes["max_versions"])
        if "cas_required" in changes:
            secret.cas_required = _boolean(changes["cas_required"], "cas_required")
        if "delete_version_after" in changes:
            secret.delete_version_after_s = parse_duration(changes["delete_version_after"])
        if "custom_metadata" in changes:
            secret.custom_metadata = _custom_metadata(
                changes["custom_metadata"], secret.custom_metadata or {}, merge=merge
            )
        secret.updated_at = utcnow()
        await session.flush()
        await self._keep_newest(session, mount, secret)
        _forget(session, mount, path)
        return secret

    async def delete_metadata(self, session: AsyncSession, mount: SecretMount, path: str) -> bool:
        """Delete the secret with every version and its metadata."""
        secret = await self._secret(session, mount, path)
        if secret is None:
            return False
        await session.execute(delete(SecretVersion).where(SecretVersion.secret_id == secret.id))
        await session.delete(secret)
        await session.flush()
        _record_change(session, mount, path, "delete_metadata", secret.current_version)
        return True

    async def keys(self, session: AsyncSession, mount: SecretMount, prefix: str) -> list[str]:
        """The keys right below ``prefix``: secrets, and folders ending in ``/``."""
        prefix = prefix.strip("/")
        start = f"{prefix}/" if prefix else ""
        query = select(Secret.path).where(Secret.mount_id == mount.id)
        if start:
            query = query.where(Secret.path.startswith(start, autoescape=True))
        keys: set[str] = set()
        for path in await session.scalars(query):
            rest = path[len(start) :]
            head, slash, _ = rest.partition("/")
            keys.add(head + slash)
        return sorted(keys)

    # -- internals ---------------------------------------------------------------------------

    async def _secret(
        self, session: AsyncSession, mount: SecretMount, path: str, *, for_update: bool = False
    ) -> Secret | None:
        bind_tenant(session, mount.tenant_id)
        query = select(Secret).where(Secret.mount_id == mount.id, Secret.path == path)
        if for_update:
            query = query.with_for_update()
        return await session.scalar(query)

    async def _version(
        self, session: AsyncSession, secret: Secret, version: int
    ) -> SecretVersion | None:
        return await session.scalar(
            select(SecretVersion).where(
                SecretVersion.secret_id == secret.id, SecretVersion.version == version
            )
        )

    async def _versions(
        self, session: AsyncSession, secret: Secret, versions: Sequence[int]
    ) -> list[SecretVersion]:
        for version in versions:
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise BadRequest("versions are positive integers")
        return list(
            await session.scalars(
                select(SecretVersion).where(
                    SecretVersion.secret_id == secret.id,
                    SecretVersion.version.in_(set(versions)),
                )
            )
        )

    async def _keep_newest(self, session: AsyncSession, mount: SecretMount, secret: Secret) -> None:
        """Forget versions beyond the newest ``max_versions`` (Vault removes them)."""
        keep = secret.max_versions or mount.max_versions or DEFAULT_MAX_VERSIONS
        oldest = secret.current_version - keep + 1
        if secret.current_version and oldest > secret.oldest_version:
            await session.execute(
                delete(SecretVersion).where(
                    SecretVersion.secret_id == secret.id, SecretVersion.version < oldest
                )
            )
            secret.oldest_version = oldest


#: The process's KV engine, built at the service's start-up.
SECRETS_RESOURCE: ResourceKey[KvEngine] = ResourceKey("secrets.kv")


def _read_query(current: bool) -> Select[Any]:
    """Mount, secret and a version in one statement, built once (a read only binds values).

    Tenant-scoped by hand: Core skips the ORM's scoping.
    """
    mounts, secrets, versions = SecretMount.__table__, Secret.__table__, SecretVersion.__table__
    tenant: BindParameter[str] = bindparam("tenant_id")
    wanted = secrets.c.current_version if current else bindparam("version")
    return (
        select(
            versions.c.version,
            versions.c.sealed,
            versions.c.created_at,
            versions.c.deletion_time,
            versions.c.destroyed,
            secrets.c.custom_metadata,
        )
        .select_from(
            mounts.join(secrets, secrets.c.mount_id == mounts.c.id).join(
                versions, versions.c.secret_id == secrets.c.id
            )
        )
        .where(
            mounts.c.tenant_id == tenant,
            mounts.c.path == bindparam("mount"),
            secrets.c.tenant_id == tenant,
            secrets.c.path == bindparam("path"),
            versions.c.tenant_id == tenant,
            versions.c.version == wanted,
        )
    )


_READ_CURRENT = _read_query(current=True)
_READ_VERSION = _read_query(current=False)


def version_metadata(row: SecretVersion, secret: Secret) -> dict[str, Any]:
    return {
        "created_time": vault_time(row.created_at),
        "custom_metadata": secret.custom_metadata or None,
        "deletion_time": vault_time(row.deletion_time),
        "destroyed": row.destroyed,
        "version": row.version,
    }


#: The change stream secrets publish on (``GET /secrets/v1/sys/changes``).
SECRETS_STREAM = "secrets"


def _record_change(
    session: AsyncSession,
    mount: SecretMount,
    path: str,
    operation: str,
    version: int,
    versions: list[int] | None = None,
) -> None:
    """Announce a change of ``<mount>/<path>`` on the ``secrets`` stream: versions and the
    operation, never a value."""
    data: dict[str, Any] = {"version": version, "operation": operation}
    if versions is not None:
        data["versions"] = versions
    record_change(session, mount.tenant_id, SECRETS_STREAM, f"{mount.path}/{path}", data)
    _forget(session, mount, path)


#: The rows of recent reads by (tenant, mount, path), then version (None: the current one).
#: They hold sealed values, never plaintext; every change of the secret drops its entry, here
#: when it commits and on other replicas through the broadcast (see keel.core.cache).
_ROWS: SharedCache[tuple[str, str, str], dict[int | None, Row[Any]]] = SharedCache(
    "secrets.kv.rows", ttl=2.0
)


def _forget(session: AsyncSession, mount: SecretMount, path: str) -> None:
    invalidate_after_commit(session, _ROWS, (mount.tenant_id, mount.path, path))


def _deleted(row: SecretVersion) -> bool:
    return row.deletion_time is not None and row.deletion_time <= utcnow()


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _max_versions(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
        raise BadRequest("max_versions is an integer from 0 (the default, 10) to 1000")
    return value


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{name} is true or false")
    return value


def _custom_metadata(value: Any, current: dict[str, Any], *, merge: bool) -> dict[str, Any]:
    if value is None:
        return {} if not merge else current
    if not isinstance(value, dict) or len(value) > 64:
        raise BadRequest("custom_metadata is an object of at most 64 string values")
    result = dict(current) if merge else {}
    for key, item in value.items():
        if item is None and merge:
            result.pop(key, None)
            continue
        if not isinstance(item, str) or len(key) > 128 or len(item) > 512:
            raise BadRequest("custom_metadata keys are up to 128 and values up to 512 characters")
        result[key] = item
    return result
