"""API keys: long-lived credentials acting as a user or service account, optionally narrowed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import ApiKey, PrincipalType
from keel.auth.service.caches import API_KEYS
from keel.auth.service.credentials import new_api_key, parse_api_key
from keel.auth.service.policy import ensure_may_grant, is_self, validated_permissions
from keel.auth.service.roles import principal_is_active, require_principal, roles_and_permissions
from keel.core.audit import SYSTEM, Actor, record_event
from keel.core.cache import invalidate_after_commit
from keel.core.crypto import Keyring
from keel.core.db import utcnow
from keel.core.errors import NotFound, ValidationFailed
from keel.core.logging import get_logger
from keel.core.tenancy import bind_tenant
from keel_client.auth import Principal, narrow_permissions

log = get_logger(__name__)

#: Last-used times of API keys are written at most this often, not on every request.
LAST_USED_GRANULARITY = timedelta(minutes=1)
#: A key's read writes its last-used time once it is this old: half the granularity, so a
#: key in use, read again ahead of each cache expiry (:meth:`ApiKeys.principal_for_api_key`),
#: has it written before a hit finds it older than the granularity and must read itself.
_WRITE_LAST_USED_AFTER = LAST_USED_GRANULARITY / 2


class ApiKeys:
    """Mint, list and revoke API keys, and resolve a presented key to its principal."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._sessions: Callable[[], AbstractAsyncContextManager[AsyncSession]] | None = None
        self._refreshes: set[asyncio.Task[None]] = set()

    def use_database(
        self, sessions: Callable[[], AbstractAsyncContextManager[AsyncSession]]
    ) -> None:
        """Give cache hits a way to read their key again in the background (units of work of
        their own), ahead of the entry's expiry: a key in use then never waits on its read."""
        self._sessions = sessions

    async def aclose(self) -> None:
        """Wait for the background reads under way (at shutdown)."""
        if self._refreshes:
            await asyncio.gather(*self._refreshes, return_exceptions=True)

    async def create_api_key(
        self,
        session: AsyncSession,
        tenant_id: str,
        *,
        name: str,
        principal_type: PrincipalType,
        principal_id: str,
        scopes: Iterable[str] = (),
        expires_at: datetime | None = None,
        actor: Actor = SYSTEM,
        grantor: Principal | None = None,
    ) -> tuple[ApiKey, str]:
        """A key acting as the principal; ``grantor`` (when not that principal itself) must
        hold every permission the key would carry, or minting one would be an escalation."""
        bind_tenant(session, tenant_id)
        await require_principal(session, principal_type, principal_id)
        if expires_at is not None and expires_at <= utcnow():
            raise ValidationFailed("expires_at must be in the future.")
        scopes = validated_permissions(scopes)
        if grantor is not None and not is_self(grantor, principal_type, principal_id):
            _, held = await roles_and_permissions(session, principal_type, principal_id)
            ensure_may_grant(grantor, narrow_permissions(held, scopes) if scopes else held)
        token, lookup = new_api_key()
        key = ApiKey(
            lookup=lookup,
            secret_hash=self.keyring.token_hash(token),
            name=name,
            principal_type=principal_type,
            principal_id=principal_id,
            scopes=scopes,
            expires_at=expires_at,
        )
        session.add(key)
        await session.flush()
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.api_key.create",
            actor=actor,
            target_type="api_key",
            target_id=key.id,
            data={
                "name": name,
                "principal_type": str(principal_type),
                "principal_id": principal_id,
                "scopes": key.scopes,
            },
        )
        return key, token

    async def list_api_keys(self, session: AsyncSession, tenant_id: str) -> list[ApiKey]:
        bind_tenant(session, tenant_id)
        return list(await session.scalars(select(ApiKey).order_by(ApiKey.created_at)))

    async def revoke_api_key(
        self, session: AsyncSession, tenant_id: str, key_id: str, actor: Actor = SYSTEM
    ) -> None:
        bind_tenant(session, tenant_id)
        key = await session.scalar(select(ApiKey).where(ApiKey.id == key_id))
        if key is None:
            raise NotFound("No such API key.")
        key.revoked_at = key.revoked_at or utcnow()
        invalidate_after_commit(session, API_KEYS, key.lookup)
        record_event(
            session,
            tenant_id=tenant_id,
            action="auth.api_key.revoke",
            actor=actor,
            target_type="api_key",
            target_id=key.id,
        )

    async def principal_for_api_key(self, session: AsyncSession, token: str) -> Principal | None:
        """The principal a valid, unexpired, unrevoked key acts as (narrowed to its scopes)."""
        lookup = parse_api_key(token)
        if lookup is None:
            return None
        principal = self.cached_principal(token, lookup)
        if principal is not None:
            bind_tenant(session, principal.tenant_id)
            return principal
        return await self._read(session, token, lookup, utcnow())

    def cached_principal(self, token: str, lookup: str | None = None) -> Principal | None:
        """The principal of a key this process read lately and that is still valid (the
        secret matches, unexpired, its last use written lately), from the cache: no unit of
        work. None when the key must be read (:meth:`principal_for_api_key`). A hit in the
        second half of the entry's life reads the key again in the background."""
        lookup = lookup or parse_api_key(token)
        cached = API_KEYS.get(lookup) if lookup is not None else None
        if lookup is None or cached is None:
            return None
        secret_hash, principal, expires_at, last_used_at = cached
        now = utcnow()
        if (
            (expires_at is not None and expires_at <= now)
            or now - last_used_at > LAST_USED_GRANULARITY
            or not self.keyring.token_matches(token, secret_hash)
        ):
            return None
        if API_KEYS.refresh_due(lookup):
            self._refresh_soon(token, lookup)
        return principal

    def _refresh_soon(self, token: str, lookup: str) -> None:
        """Read the key again in the background and cache what it says (or forget it)."""
        if self._sessions is None:
            return
        task = asyncio.get_running_loop().create_task(self._refresh(token, lookup))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def _refresh(self, token: str, lookup: str) -> None:
        assert self._sessions is not None
        try:
            async with self._sessions() as session:
                principal = await self._read(session, token, lookup, utcnow())
        except Exception as error:  # the entry expires as it would have; a request reads it
            log.warning("auth.api_key.refresh_failed", error=type(error).__name__)
            return
        if principal is None:  # revoked, expired or deactivated meanwhile
            API_KEYS.drop(lookup)

    async def _read(
        self, session: AsyncSession, token: str, lookup: str, now: datetime
    ) -> Principal | None:
        """The principal of the key, read from the database and cached."""
        stamp = API_KEYS.stamp()
        key = await session.scalar(
            select(ApiKey).where(ApiKey.lookup == lookup).execution_options(all_tenants=True)
        )
        if key is None or not self.keyring.token_matches(token, key.secret_hash):
            return None
        if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
            return None
        bind_tenant(session, key.tenant_id)
        if not await principal_is_active(session, key.principal_type, key.principal_id):
            return None
        roles, permissions = await roles_and_permissions(
            session, key.principal_type, key.principal_id
        )
        if key.scopes:
            permissions = narrow_permissions(permissions, key.scopes)
        if key.last_used_at is None or now - key.last_used_at > _WRITE_LAST_USED_AFTER:
            key.last_used_at = now
        principal = Principal(
            subject=key.principal_id,
            tenant_id=key.tenant_id,
            principal_type=key.principal_type,
            roles=frozenset(roles),
            permissions=frozenset(permissions),
            credential="api_key",
            claims={"api_key_id": key.id},
        )
        API_KEYS.put(lookup, (key.secret_hash, principal, key.expires_at, key.last_used_at), stamp)
        return principal
