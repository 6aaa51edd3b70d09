"""The platform's token signing keys, their rotation, and the local verifier of their tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.service.keys import SigningKeys
from keel.core.audit import SYSTEM, Actor, record_event
from keel.core.crypto import Keyring
from keel.core.errors import Forbidden
from keel.core.tenancy import Tenant
from keel.settings import AuthSettings
from keel_client.auth import TokenVerifier


class Signing:
    """The signing keys (:attr:`keys`) and a :class:`TokenVerifier` reading their JWKS."""

    def __init__(
        self, settings: AuthSettings, keyring: Keyring, *, issuer: str, token_lifetime: timedelta
    ) -> None:
        self.keys = SigningKeys(
            keyring, algorithm=settings.signing_algorithm, token_lifetime=token_lifetime
        )
        self._jwks_document: dict[str, Any] = {"keys": []}
        self.verifier = TokenVerifier(
            self._current_jwks,
            issuer=issuer,
            audience=None,  # every Keel API accepts tokens for any audience Keel issued
            min_refresh_interval=1.0,
        )
        self._session_factory: Any = None

    def use_database(self, session_factory: Any) -> None:
        """Give the verifier a way to reload keys from the database on an unknown ``kid``."""
        self._session_factory = session_factory

    async def _current_jwks(self) -> dict[str, Any]:
        if self._session_factory is not None:
            async with self._session_factory() as session:
                self._jwks_document = await self.keys.published(session)
        return self._jwks_document

    async def rotate_signing_key(
        self, session: AsyncSession, actor: Actor = SYSTEM, *, tenant_id: str | None = None
    ) -> str:
        """Rotate the platform's signing keys; ``tenant_id`` is the caller's tenant, if any.

        The keys sign every tenant's tokens, so only the platform (``default``) tenant may
        rotate them: another tenant's administrator could otherwise churn keys for everyone
        (each rotation publishes one more key to every verifier).
        """
        platform_tenant_id = await _platform_tenant_id(session)
        if tenant_id is not None and tenant_id != platform_tenant_id:
            raise Forbidden("Signing keys belong to the platform: rotate them as its tenant.")
        retired, active = await self.keys.rotate(session)
        record_event(
            session,
            tenant_id=platform_tenant_id,
            action="auth.signing_key.rotate",
            actor=actor,
            target_type="signing_key",
            target_id=active,
            data={"retired": retired, "active": active},
        )
        return active


async def _platform_tenant_id(session: AsyncSession) -> str:
    """Platform-wide events (signing keys) are recorded under the ``default`` tenant."""
    tenant_id = await session.scalar(select(Tenant.id).where(Tenant.slug == "default"))
    if tenant_id is None:
        tenant = Tenant(slug="default", name="default")
        session.add(tenant)
        await session.flush()
        return tenant.id
    return tenant_id
