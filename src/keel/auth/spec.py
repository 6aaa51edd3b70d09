"""The auth service as Keel mounts and runs it."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select

from keel.auth.dependencies import AUTH_RESOURCE, LOGIN_LIMITER_RESOURCE
from keel.auth.models import SigningKey, SigningKeyStatus
from keel.auth.service import AuthService
from keel.auth.service.one_time_tokens import purge_spent_one_time_rows
from keel.core.context import AppContext
from keel.core.logging import get_logger
from keel.core.ratelimit import create_rate_limiter
from keel.core.services import ServiceSpec
from keel.settings import Settings

log = get_logger(__name__)


def issuer_for(settings: Settings) -> str:
    issuer = settings.auth.issuer or settings.public_url
    return (issuer or f"http://{settings.host}:{settings.port}").rstrip("/")


async def start_auth(context: AppContext, *, ensure_signing_keys: bool = True) -> None:
    """Build the :class:`AuthService` into ``context.resources`` and make sure the signing
    keys exist; without ``ensure_signing_keys`` it reads nothing from the database (a gateway
    replica started without it, whose callers are checked once it answers)."""
    settings = context.settings
    auth = AuthService(settings.auth, context.keyring, issuer=issuer_for(settings))
    auth.use_database(context.database.session)
    if ensure_signing_keys:
        async with context.database.session() as session:
            await auth.keys.ensure_keys(session)
    context.resources[AUTH_RESOURCE] = auth
    context.resources[LOGIN_LIMITER_RESOURCE] = create_rate_limiter(
        settings.redis_url.get_secret_value() if settings.redis_url else None,
        limit=settings.auth.login_rate_per_ip_per_minute,
        window_seconds=60,
        prefix="auth-login-ip",
    )


async def stop_auth(context: AppContext) -> None:
    auth = context.resources.get(AUTH_RESOURCE)
    if isinstance(auth, AuthService):
        await auth.aclose()


async def auth_ready(context: AppContext) -> None:
    async with context.database.session() as session:
        active = await session.scalar(
            select(SigningKey.kid).where(SigningKey.status == SigningKeyStatus.active)
        )
    if active is None:
        raise RuntimeError("no active signing key")


async def rotate_signing_keys_on_schedule(context: AppContext) -> None:
    """Rotate when the active key is older than the configured interval; purge expired rows."""
    auth = context.resources[AUTH_RESOURCE]
    assert isinstance(auth, AuthService)
    interval_days = context.settings.auth.signing_key_rotation_days
    while True:
        try:
            async with context.database.session() as session:
                if interval_days and await auth.keys.is_rotation_due(
                    session, timedelta(days=interval_days)
                ):
                    kid = await auth.rotate_signing_key(session)
                    log.info("auth.signing_key.rotated", kid=kid)
                await auth.purge_expired(session)
                await purge_spent_one_time_rows(session)
        except Exception:  # a failed round must not end the loop
            log.exception("auth.maintenance.failed")
        await asyncio.sleep(300)


service = ServiceSpec(
    name="auth",
    router="keel.auth.router:build_router",
    root_router="keel.auth.router:build_well_known_router",
    root_prefix="/.well-known/",
    ready_check=auth_ready,
    startup=start_auth,
    shutdown=stop_auth,
    background=(rotate_signing_keys_on_schedule,),
    model_modules=("keel.auth.models",),
)
