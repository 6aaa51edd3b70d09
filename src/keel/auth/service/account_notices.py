"""Notices told to a user about their account: a lockout, a login from a new device.

A notice carries no token and no secret: what happened, to which account, and until when.
Delivery is a hook on the ``AuthService`` (``auth.deliver_account_notice``), like the
account tokens' (:mod:`keel.auth.service.one_time_tokens`): the default logs that a notice
would have gone out, and the notification service replaces it with an e-mail when it runs
in the process.

The hook runs after the answer, in a task of its own (:func:`deliver_later`): a login that
locks an account answers as soon, and the same 401, as any other failed one, so neither the
answer nor its timing tells that the account exists.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from keel.core.logging import get_logger

log = get_logger(__name__)


class AccountNoticeKind(StrEnum):
    #: Failed logins (wrong passwords or second-factor codes) locked the account. Sent once
    #: per run of failures: when the lockout threshold is reached, not for the longer
    #: lockouts that further failures bring before a successful login resets the count.
    lockout = "lockout"
    #: A successful login from a device the user had not logged in from
    #: (:mod:`keel.auth.service.devices`).
    new_device = "new_device"


@dataclass(frozen=True)
class AccountNotice:
    """What a notice hook tells the user (never a token or a password)."""

    kind: AccountNoticeKind
    tenant_id: str
    user_id: str
    email: str
    #: When it happened, and (a lockout) until when the account is locked, both UTC.
    at: datetime
    until: datetime | None = None
    #: A new device's user agent (at most 200 characters) and address, for the user to
    #: recognise; kept nowhere else (the notify message's data is dropped once it is sent).
    device: str | None = None
    ip_address: str | None = None


AccountNoticeDelivery = Callable[[AccountNotice], Awaitable[None] | None]


def log_account_notice(notice: AccountNotice) -> None:
    """The default delivery: record that a notice would have been sent."""
    log.info(
        "auth.account_notice",
        kind=str(notice.kind),
        tenant=notice.tenant_id,
        user_id=notice.user_id,
        hint="no delivery hook is registered; the user receives nothing",
    )


_delivering: set[asyncio.Task[None]] = set()


async def deliver_notice(hook: AccountNoticeDelivery, notice: AccountNotice) -> None:
    """Run ``hook``; a failing hook is logged, never raised."""
    try:
        result = hook(notice)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("auth.account_notice.delivery_failed", kind=str(notice.kind))


def deliver_later(hook: AccountNoticeDelivery, notice: AccountNotice | None) -> None:
    """Run ``hook`` for ``notice`` in a task of its own, after the caller's commit (the
    caller answers an error, so a response's background task would not run)."""
    if notice is None:
        return
    task = asyncio.get_running_loop().create_task(deliver_notice(hook, notice))
    _delivering.add(task)  # a strong reference until it ends
    task.add_done_callback(_delivering.discard)
