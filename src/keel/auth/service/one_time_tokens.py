"""Single-use tokens sent to a user: e-mail verification (48 h) and password reset (1 h).

This module is what is sent and how; issuing and redeeming the tokens is the auth service's
(:mod:`keel.auth.service.account_tokens`). Delivery is a hook on the ``AuthService``
(``auth.deliver_account_token``): the default only logs that a token was requested — never
the token — until a mail service is plugged in; tests register their own to capture it.

Asking for a password reset answers the same whether or not the address belongs to anyone,
and the hook runs after the response, so neither the answer nor its timing tells.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import AuthorizationCode, OneTimeToken, OneTimeTokenPurpose
from keel.core.db import utcnow
from keel.core.logging import get_logger

log = get_logger(__name__)

TOKEN_LIFETIMES = {
    OneTimeTokenPurpose.email_verification: timedelta(hours=48),
    OneTimeTokenPurpose.password_reset: timedelta(hours=1),
}
#: Spent and expired rows are kept this long (for support questions), then deleted.
RETENTION = timedelta(days=7)
TOKEN_PREFIX = "kot_"  # noqa: S105 - the public prefix of every token


@dataclass(frozen=True)
class AccountTokenMessage:
    """What a delivery hook sends to the user: the token and whom it is for."""

    purpose: OneTimeTokenPurpose
    tenant_id: str
    user_id: str
    email: str
    expires_at: datetime
    token: str = field(repr=False)


AccountTokenDelivery = Callable[[AccountTokenMessage], Awaitable[None] | None]


def log_account_token_request(message: AccountTokenMessage) -> None:
    """The default delivery: record that a token was asked for, without the token."""
    log.info(
        "auth.account_token.requested",
        purpose=str(message.purpose),
        tenant=message.tenant_id,
        user_id=message.user_id,
        hint="no delivery hook is registered; the user receives nothing",
    )


async def deliver(hook: AccountTokenDelivery, message: AccountTokenMessage) -> None:
    """Run ``hook``; a failing hook is logged (without the token), never raised."""
    try:
        result = hook(message)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("auth.account_token.delivery_failed", purpose=str(message.purpose))


async def purge_spent_one_time_rows(session: AsyncSession) -> None:
    """Delete one-time tokens and authorization codes that expired over a week ago."""
    cutoff = utcnow() - RETENTION
    for model in (OneTimeToken, AuthorizationCode):
        await session.execute(
            delete(model).where(model.expires_at < cutoff).execution_options(all_tenants=True)
        )
