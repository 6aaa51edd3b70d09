"""Keel's own account e-mails — e-mail verification, password reset, the lockout and
new-device notices — sent through the notification service (issue 19, point 7).

The auth service sits below every other service and cannot import this one, so the wiring
runs the other way: :func:`use_notify_for_account_mail`, called at the notification
service's start-up, replaces the auth service's delivery hooks
(``AuthService.deliver_account_token`` and ``deliver_account_notice``) with
:class:`AccountMail` and :class:`AccountNoticeMail`.

For each token or notice the auth service hands over (after its response, in a task):

1. **Ready the tenant** (one unit of work): the critical category ``account`` is created if
   the tenant has none, and the built-in template of the purpose (``account.verify-email``,
   ``account.password-reset``, ``account.lockout``, ``account.new-device``) is published in
   it if the tenant has not published one of that name. A tenant overrides a built-in by
   publishing its own template of the same name (in the category ``account``, or another
   critical one: a template without a category is not critical, so its mail would carry an
   unsubscribe link and respect suppressions).
2. **Accept the send** (its own unit of work) through :func:`.messages.accept`, to the
   user's address, audited as ``notify.message.send`` without its data. Delivery is the
   ``notify.deliver`` task, as for every other message: it drops the message's data (the
   token) once the message is final, and a critical message carries no unsubscribe link
   and no tracked links.

A tenant without an email provider or without the ``default`` sender gets the old
behaviour: the hook notify replaced runs (by default it logs that a token was requested,
never the token), so a fresh ``keel serve`` keeps working before anyone configures mail.
A send that fails (a tenant's override that does not render with the token's data, say) is
logged by its error's class and safe detail and falls back the same way; the token is never
logged.

A notice carries no token. The lockout notice: the address, when the account was locked
and until when (its template's variables: ``email``, ``locked_at``, ``locked_until``,
``minutes``). The new-device notice: ``email``, ``at`` (the login's time), ``device`` (its
user agent) and ``ip_address``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.dependencies import AUTH_RESOURCE
from keel.auth.service import (
    AccountNotice,
    AccountNoticeDelivery,
    AccountTokenDelivery,
    AccountTokenMessage,
)
from keel.core.audit import SYSTEM, record_event
from keel.core.context import AppContext
from keel.core.db import utcnow
from keel.core.errors import Conflict, KeelError, NotFound
from keel.core.lazy import lazy_module
from keel.core.logging import get_logger
from keel.notify.channels import Channel
from keel.notify.service.providers import get_sender, list_providers
from keel.notify.service.runtime import DEFAULT_SENDER

if TYPE_CHECKING:
    from keel.notify.service import messages, recipients, templates
else:
    # Imported at the first account e-mail: accepting a send pulls in the jobs engine's
    # service, the flags engine (experiments) and the templates' checks, none of which the
    # start-up hook that installs this module's deliveries needs (issue 15).
    messages = lazy_module("keel.notify.service.messages")
    recipients = lazy_module("keel.notify.service.recipients")
    templates = lazy_module("keel.notify.service.templates")

log = get_logger(__name__)

#: The critical category of account mail: no preference, quiet hours or unsubscribe stops it.
ACCOUNT_CATEGORY = "account"

#: The template each token purpose is sent with (``OneTimeTokenPurpose`` values).
TEMPLATE_FOR_PURPOSE = {
    "email_verification": "account.verify-email",
    "password_reset": "account.password-reset",
}
#: The template each account notice is sent with (``AccountNoticeKind`` values).
TEMPLATE_FOR_NOTICE = {"lockout": "account.lockout", "new_device": "account.new-device"}

#: What a sample render of a built-in sees (a publish renders it): never a real token.
_SAMPLE = {
    "token": "kot_sample-token",
    "email": "ada@example.com",
    "expires_at": "2030-01-01T12:00:00+00:00",
    "valid_hours": 1,
}


_SAMPLE_LOCKOUT = {
    "email": "ada@example.com",
    "locked_at": "2030-01-01T12:00:00+00:00",
    "locked_until": "2030-01-01T12:00:30+00:00",
    "minutes": 1,
}

_SAMPLE_NEW_DEVICE = {
    "email": "ada@example.com",
    "at": "2030-01-01T12:00:00+00:00",
    "device": "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
    "ip_address": "192.0.2.10",
}


def _message_template(
    subject: str, html: str, text: str, sample: dict[str, Any] = _SAMPLE
) -> dict[str, Any]:
    return {
        "default_locale": "en",
        "locales": {"en": {"subject": subject, "html": html, "text": text}},
        "sample_data": sample,
    }


#: The built-in templates, published for a tenant on first use. Their variables: ``token``,
#: ``email`` (the address it goes to), ``expires_at`` (ISO 8601, UTC) and ``valid_hours``.
BUILT_IN_TEMPLATES: dict[str, dict[str, Any]] = {
    "account.verify-email": _message_template(
        "Confirm your e-mail address",
        "<html><body>"
        "<p>Confirm that {{ email }} is your address with this code:</p>"
        "<p><code>{{ token }}</code></p>"
        "<p>It is valid for {{ valid_hours }} hours, until {{ expires_at }} (UTC), and works"
        " once.</p>"
        "<p>If you did not ask for this, ignore this e-mail.</p>"
        "</body></html>",
        "Confirm that {{ email }} is your address with this code:\n\n"
        "{{ token }}\n\n"
        "It is valid for {{ valid_hours }} hours, until {{ expires_at }} (UTC), and works once.\n"
        "If you did not ask for this, ignore this e-mail.\n",
    ),
    "account.password-reset": _message_template(
        "Reset your password",
        "<html><body>"
        "<p>Someone asked to reset the password of the account of {{ email }}."
        " Set a new one with this code:</p>"
        "<p><code>{{ token }}</code></p>"
        "<p>It is valid for {{ valid_hours }} hour(s), until {{ expires_at }} (UTC), and works"
        " once.</p>"
        "<p>If it was not you, ignore this e-mail: your password stays as it is.</p>"
        "</body></html>",
        "Someone asked to reset the password of the account of {{ email }}."
        " Set a new one with this code:\n\n"
        "{{ token }}\n\n"
        "It is valid for {{ valid_hours }} hour(s), until {{ expires_at }} (UTC), and works once.\n"
        "If it was not you, ignore this e-mail: your password stays as it is.\n",
    ),
    "account.lockout": _message_template(
        "Your account was locked after failed sign-ins",
        "<html><body>"
        "<p>Several sign-ins to the account of {{ email }} failed (a wrong password or"
        " code), so it is locked for about {{ minutes }} minute(s), until {{ locked_until }}"
        " (UTC).</p>"
        "<p>If it was you, wait and try again, or reset your password. If it was not, someone"
        " may be guessing your password: choose a new, stronger one once you can.</p>"
        "</body></html>",
        "Several sign-ins to the account of {{ email }} failed (a wrong password or code),"
        " so it is locked for about {{ minutes }} minute(s), until {{ locked_until }} (UTC).\n\n"
        "If it was you, wait and try again, or reset your password. If it was not, someone"
        " may be guessing your password: choose a new, stronger one once you can.\n",
        _SAMPLE_LOCKOUT,
    ),
    "account.new-device": _message_template(
        "A sign-in from a new device",
        "<html><body>"
        "<p>The account of {{ email }} was signed in to at {{ at }} (UTC) from a device or"
        " place it had not been used from:</p>"
        "<p>{{ device or 'an unknown browser' }}, address {{ ip_address or 'unknown' }}</p>"
        "<p>If it was you, there is nothing to do. If it was not, reset your password and end"
        " your other sessions.</p>"
        "</body></html>",
        "The account of {{ email }} was signed in to at {{ at }} (UTC) from a device or place"
        " it had not been used from:\n\n"
        "{{ device or 'an unknown browser' }}, address {{ ip_address or 'unknown' }}\n\n"
        "If it was you, there is nothing to do. If it was not, reset your password and end"
        " your other sessions.\n",
        _SAMPLE_NEW_DEVICE,
    ),
}


def template_data(message: AccountTokenMessage) -> dict[str, Any]:
    """What the templates see of a token message (the user's id and tenant stay out)."""
    seconds = (message.expires_at - utcnow()).total_seconds()
    return {
        "token": message.token,
        "email": message.email,
        "expires_at": message.expires_at.isoformat(timespec="seconds"),
        "valid_hours": max(1, round(seconds / 3600)),
    }


def notice_data(notice: AccountNotice) -> dict[str, Any]:
    """What the templates see of a notice (the user's id and tenant stay out)."""
    if str(notice.kind) == "new_device":
        return {
            "email": notice.email,
            "at": notice.at.isoformat(timespec="seconds"),
            "device": notice.device,
            "ip_address": notice.ip_address,
        }
    until = notice.until or notice.at
    return {
        "email": notice.email,
        "locked_at": notice.at.isoformat(timespec="seconds"),
        "locked_until": until.isoformat(timespec="seconds"),
        "minutes": max(1, round((until - notice.at).total_seconds() / 60)),
    }


@dataclass(frozen=True)
class AccountMail:
    """The auth service's delivery hook while the notification service runs in the process:
    each token becomes a message of the tenant's ``account`` templates (see the module's
    text); ``fallback`` is the hook it replaced, run when the tenant cannot send email."""

    context: AppContext
    fallback: AccountTokenDelivery

    async def __call__(self, message: AccountTokenMessage) -> None:
        try:
            sent = await self.send(message)
        except Exception as exc:  # the hook runs after the response: nobody else would see it
            detail = exc.detail if isinstance(exc, KeelError) else None
            log.warning(
                "notify.account_mail.failed",
                purpose=str(message.purpose),
                tenant=message.tenant_id,
                error=type(exc).__name__,
                detail=detail,  # caller-safe: a template error never holds the data
            )
            sent = False
        if not sent:
            result = self.fallback(message)
            if inspect.isawaitable(result):
                await result

    async def send(self, message: AccountTokenMessage) -> bool:
        """Accept the message for delivery; ``False`` when the tenant cannot send email."""
        return await send_account_mail(
            self.context,
            message.tenant_id,
            TEMPLATE_FOR_PURPOSE[str(message.purpose)],
            message.email,
            template_data(message),
            str(message.purpose),
        )


@dataclass(frozen=True)
class AccountNoticeMail:
    """The auth service's notice hook while the notification service runs in the process:
    each notice becomes a critical message of the tenant's ``account`` templates, as
    :class:`AccountMail` sends tokens; ``fallback`` (the hook it replaced) runs when the
    tenant cannot send email or the send fails."""

    context: AppContext
    fallback: AccountNoticeDelivery

    async def __call__(self, notice: AccountNotice) -> None:
        try:
            sent = await send_account_mail(
                self.context,
                notice.tenant_id,
                TEMPLATE_FOR_NOTICE[str(notice.kind)],
                notice.email,
                notice_data(notice),
                str(notice.kind),
            )
        except Exception as exc:  # it runs after the response: nobody else would see it
            log.warning(
                "notify.account_mail.failed",
                purpose=str(notice.kind),
                tenant=notice.tenant_id,
                error=type(exc).__name__,
                detail=exc.detail if isinstance(exc, KeelError) else None,
            )
            sent = False
        if not sent:
            result = self.fallback(notice)
            if inspect.isawaitable(result):
                await result


async def send_account_mail(
    context: AppContext, tenant_id: str, name: str, to: str, data: dict[str, Any], purpose: str
) -> bool:
    """Accept an account e-mail of template ``name`` for delivery, audited without its data;
    ``False`` when the tenant cannot send email (nothing is accepted then)."""
    try:
        async with context.database.session() as session:
            ready = await ready_tenant(session, tenant_id, name)
    except (IntegrityError, Conflict):
        # Two first uses at once both created the category or template: the loser's unit
        # of work failed on a unique key, and a second one finds the winner's.
        async with context.database.session() as session:
            ready = await ready_tenant(session, tenant_id, name)
    if not ready:
        return False
    async with context.database.session() as session:
        accepted = await messages.accept(
            session,
            tenant_id,
            messages.SendRequest(channel=Channel.email.value, template=name, to=to, data=data),
            max_data_bytes=context.settings.notify.max_data_bytes,
        )
        record_event(
            session,
            tenant_id=tenant_id,
            action="notify.message.send",
            actor=SYSTEM,
            target_type="notify_message",
            target_id=accepted.message.id,
            data={
                "template": name,
                "channel": accepted.message.channel,
                "category": accepted.message.category,
                "status": accepted.message.status,
                "account_mail": purpose,
            },
        )
    return True


async def ready_tenant(session: AsyncSession, tenant_id: str, name: str) -> bool:
    """Whether the tenant can send account mail with template ``name``: an enabled email
    provider and the ``default`` sender exist (``False`` otherwise, and nothing changes);
    the ``account`` category and the built-in template are made if missing."""
    providers = await list_providers(session, tenant_id, Channel.email.value)
    if not any(provider.enabled for provider in providers):
        log.info("notify.account_mail.unconfigured", tenant=tenant_id, missing="email provider")
        return False
    if await get_sender(session, tenant_id, DEFAULT_SENDER) is None:
        log.info("notify.account_mail.unconfigured", tenant=tenant_id, missing="sender default")
        return False
    if await recipients.get_category(session, tenant_id, ACCOUNT_CATEGORY) is None:
        description = "Keel's account e-mails: verification, password reset, notices."
        await recipients.put_category(
            session, tenant_id, ACCOUNT_CATEGORY, critical=True, description=description
        )
        record_event(
            session,
            tenant_id=tenant_id,
            action="notify.category.put",
            actor=SYSTEM,
            target_type="notify_category",
            target_id=ACCOUNT_CATEGORY,
            data={"critical": True, "description": description, "built_in": True},
        )
    try:
        await templates.get_template(session, tenant_id, name)
    except NotFound:
        published = await templates.publish(
            session,
            tenant_id,
            name,
            BUILT_IN_TEMPLATES[name],
            category=ACCOUNT_CATEGORY,
            description="Built into Keel; publish a version of your own to replace it.",
            note="built-in",
        )
        record_event(
            session,
            tenant_id=tenant_id,
            action="notify.template.publish",
            actor=SYSTEM,
            target_type="notify_template",
            target_id=name,
            data={"version": published.version.number, "kind": "message", "built_in": True},
        )
    return True


def use_notify_for_account_mail(context: AppContext) -> None:
    """Route the auth service's account tokens and notices through this service (where auth
    runs in the process; a second start-up keeps the hooks it installed first)."""
    auth = context.resources.get(AUTH_RESOURCE)
    if auth is None:
        return
    if not isinstance(auth.deliver_account_token, AccountMail):
        auth.deliver_account_token = AccountMail(context, auth.deliver_account_token)
    if not isinstance(auth.deliver_account_notice, AccountNoticeMail):
        auth.deliver_account_notice = AccountNoticeMail(context, auth.deliver_account_notice)
