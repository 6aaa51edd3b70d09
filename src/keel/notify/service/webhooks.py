"""Delivery status from the providers' webhooks: ``delivered``, ``opened``, ``clicked``,
``bounced``, ``complained`` and ``failed`` as the provider saw them, after ``sent``.

A provider calls ``/notify/v1/webhooks/{tenant_slug}/{provider_name}``; the provider row
(found by tenant and name) says the kind, and the kind says how the call proves it comes
from the provider and what it means:

=========  ===========================================================================
kind       proof
=========  ===========================================================================
twilio     ``X-Twilio-Signature``: base64 HMAC-SHA1, keyed with the account's auth
           token, of the URL Twilio called followed by every POST parameter sorted by
           name, each name then value
postmark   HTTP basic credentials set on Postmark's webhook, checked against the
           ``webhook_username`` and ``webhook_password`` fields of the credentials secret
=========  ===========================================================================

Amazon SES reports through SNS, whose signatures need the signing certificate fetched from
AWS at verification time; that kind has no webhook yet.

Every refusal is the same 401 — an unknown tenant, an unknown provider, a kind without a
webhook, unreadable credentials or a wrong signature — so the endpoint tells a caller
without the provider's secret nothing about which tenants and providers exist. A verified
call about a message Keel does not know is answered 200 and ignored: providers retry
anything else, for days. Each status goes through :func:`tracking.record_status` (kept in
the history; the message's status only moves forward and never leaves a final one), and a
hard bounce or a complaint puts the address on the suppression list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.context import AppContext, ResourceKey
from keel.core.errors import BadRequest, Unauthorized, ValidationFailed
from keel.core.logging import get_logger
from keel.core.tenancy import Tenant, bind_tenant
from keel.notify.models import NotifyMessage, NotifyProvider
from keel.notify.service import experiments, tracking
from keel.notify.service.providers import read_secret_fields
from keel.notify.service.recipients import SuppressionReason, suppress

log = get_logger(__name__)

#: The one answer to a webhook Keel cannot trust, whatever the reason (see the module's text).
REFUSAL = "The webhook's signature or credentials are not valid."
#: Sent with every refusal: Postmark's webhooks authenticate with HTTP basic credentials,
#: and a 401 names a scheme (RFC 9110 §11.6.1). The same for every kind, to tell nothing.
_CHALLENGE = {"WWW-Authenticate": 'Basic realm="keel-notify-webhooks"'}
#: A provider's message id: Twilio's ``SM…`` sid, Postmark's UUID; visible ASCII, at most
#: as long as ``notify_messages.provider_message_id``.
_PROVIDER_MESSAGE_ID = re.compile(r"[\x21-\x7e]{1,256}")
#: Names as the tenants and providers are named; anything else cannot be one.
_TENANT_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class WebhookRefused(Unauthorized):
    """A webhook that does not prove it comes from the provider: 401, nothing changed."""

    def __init__(self) -> None:
        super().__init__(REFUSAL, headers=_CHALLENGE)


@dataclass(frozen=True)
class WebhookRequest:
    """What a provider sent, as plain values: the URL it called (as it signed it), the
    headers (lower-case names) and the raw body."""

    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class ProviderEvent:
    """What a webhook reports about one message: a status for its history, and the reason
    its address is suppressed, if it must be."""

    provider_message_id: str
    status: str
    detail: dict[str, Any] = field(default_factory=dict)
    suppress: str | None = None


@dataclass(frozen=True)
class Suppressed:
    """The suppression a webhook caused (``is_new``: the address was not suppressed)."""

    suppression_id: str
    channel: str
    reason: str
    is_new: bool


@dataclass(frozen=True)
class WebhookOutcome:
    """What a verified webhook changed: nothing (``message_id`` ``None``: an event Keel does
    not track, or a message it does not know), or a message's history (``status``, the step
    recorded) and perhaps the suppression list."""

    tenant_id: str
    provider: str
    message_id: str | None = None
    status: str | None = None
    suppressed: Suppressed | None = None


# -- Twilio ----------------------------------------------------------------------------------

#: Twilio's ``MessageStatus`` values that Keel records (the others — queued, sending, sent,
#: accepted, scheduled — happen before or at ``sent``, which delivery recorded).
_TWILIO_STATUSES = {
    "delivered": "delivered",
    "undelivered": "failed",
    "failed": "failed",
    "read": "opened",  # WhatsApp and RCS read receipts
}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def twilio_signature(auth_token: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """The ``X-Twilio-Signature`` of a form POST to ``url``: base64(HMAC-SHA1(auth token,
    URL + each parameter's name and value, sorted by name))."""
    signed = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _url_variants(url: str) -> list[str]:
    """``url`` as Keel sees it, and with its default port written out or left out: Twilio
    signs the URL as configured, and a proxy may add or drop ``:443``."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    variants = [url]
    if default is not None and parts.port in (None, default):
        netloc = host if parts.port else f"{host}:{default}"
        variants.append(urlunsplit(parts._replace(netloc=netloc)))
    return variants


def parse_form(body: bytes) -> list[tuple[str, str]] | None:
    """The name-value pairs of a ``application/x-www-form-urlencoded`` body, or ``None``."""
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None


def verify_twilio(request: WebhookRequest, credentials: Mapping[str, str]) -> bool:
    auth_token = credentials.get("auth_token")
    given = request.headers.get("x-twilio-signature", "")
    params = parse_form(request.body)
    if not auth_token or not given or params is None:
        return False
    return any(
        hmac.compare_digest(twilio_signature(auth_token, url, params).encode(), given.encode())
        for url in _url_variants(request.url)
    )


def parse_twilio(request: WebhookRequest) -> ProviderEvent | None:
    """A Twilio message status callback: ``MessageSid`` and ``MessageStatus``, and
    ``ErrorCode`` when it failed."""
    params = dict(parse_form(request.body) or [])
    sid, status = params.get("MessageSid", ""), params.get("MessageStatus", "")
    if not _PROVIDER_MESSAGE_ID.fullmatch(sid) or not status:
        raise ValidationFailed("A Twilio status callback carries MessageSid and MessageStatus.")
    recorded = _TWILIO_STATUSES.get(status)
    if recorded is None:
        return None
    detail: dict[str, Any] = {"provider_status": status}
    if params.get("ErrorCode"):
        detail["error_code"] = params["ErrorCode"][:16]
    return ProviderEvent(sid, recorded, detail)


# -- Postmark --------------------------------------------------------------------------------

#: Bounce ``Type`` values that mean the address will never take mail (Postmark also marks
#: such an address ``Inactive``); other bounces (transient, soft, auto-reply) are history.
_POSTMARK_HARD_BOUNCES = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None


def verify_postmark(request: WebhookRequest, credentials: Mapping[str, str]) -> bool:
    expected_username = credentials.get("webhook_username")
    expected_password = credentials.get("webhook_password")
    given = _basic_credentials(request.headers.get("authorization", ""))
    if not expected_username or not expected_password or given is None:
        return False
    # Both compared whatever the first gives: the time taken tells nothing about either.
    username_matches = hmac.compare_digest(given[0].encode(), expected_username.encode())
    password_matches = hmac.compare_digest(given[1].encode(), expected_password.encode())
    return username_matches & password_matches


def parse_postmark(request: WebhookRequest) -> ProviderEvent | None:
    """A Postmark webhook: ``RecordType`` Delivery, Bounce, SpamComplaint, Open or Click
    about ``MessageID``; other record types are not tracked."""
    try:
        document = json.loads(request.body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(document, dict):
        raise ValidationFailed("A Postmark webhook is a JSON object.")
    record_type, message_id = document.get("RecordType"), document.get("MessageID")
    if not isinstance(record_type, str) or not isinstance(message_id, str):
        raise ValidationFailed("A Postmark webhook carries RecordType and MessageID.")
    if not _PROVIDER_MESSAGE_ID.fullmatch(message_id):
        raise ValidationFailed("MessageID is 1 to 256 visible ASCII characters.")
    kind = document.get("Type")
    if record_type == "Delivery":
        return ProviderEvent(message_id, "delivered")
    if record_type == "SpamComplaint" or (record_type == "Bounce" and kind == "SpamComplaint"):
        return ProviderEvent(message_id, "complained", {}, SuppressionReason.complaint)
    if record_type == "Bounce":
        detail = {"type": str(kind)[:64]}
        if kind in _POSTMARK_HARD_BOUNCES or document.get("Inactive") is True:
            return ProviderEvent(message_id, "bounced", detail, SuppressionReason.bounce)
        return ProviderEvent(message_id, "soft_bounced", detail)
    if record_type == "Open":
        return ProviderEvent(message_id, "opened", {"via": "postmark"})
    if record_type == "Click":
        link = document.get("OriginalLink")
        detail = {"via": "postmark", **({"url": link[:500]} if isinstance(link, str) else {})}
        return ProviderEvent(message_id, "clicked", detail)
    return None


# -- every kind ------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookKind:
    """How one kind of provider proves a webhook is its own, and what the webhook says."""

    verify: Callable[[WebhookRequest, Mapping[str, str]], bool]
    parse: Callable[[WebhookRequest], ProviderEvent | None]


WEBHOOK_KINDS: Mapping[str, WebhookKind] = {
    "twilio": WebhookKind(verify_twilio, parse_twilio),
    "postmark": WebhookKind(verify_postmark, parse_postmark),
}


@dataclass
class _CredentialCache:
    """Each provider's credentials for ``credentials_ttl_seconds``, as delivery keeps them:
    a provider sends several webhooks a message, and every read of a secret is audited."""

    entries: dict[tuple[str, int], tuple[float, dict[str, str]]] = field(default_factory=dict)


_CREDENTIALS: ResourceKey[_CredentialCache] = ResourceKey("notify.webhook_credentials")


async def _credentials(
    session: AsyncSession, context: AppContext, provider: NotifyProvider
) -> dict[str, str] | None:
    if provider.credentials_secret is None:
        return None
    cache = context.resources.get(_CREDENTIALS)
    if cache is None:
        cache = _CredentialCache()
        context.resources[_CREDENTIALS] = cache
    key = (provider.id, provider.version)
    found = cache.entries.get(key)
    ttl = context.settings.notify.credentials_ttl_seconds
    if found is not None and time.monotonic() - found[0] < ttl:
        return found[1]
    try:
        fields = await read_secret_fields(
            session,
            context,
            provider.tenant_id,
            provider.credentials_secret,
            f"webhook of provider {provider.name}",
        )
    except LookupError as exc:
        log.warning("notify.webhook_credentials_unreadable", provider=provider.name, error=str(exc))
        return None
    cache.entries[key] = (time.monotonic(), fields)
    return fields


async def _provider(
    session: AsyncSession, tenant_slug: str, provider_name: str
) -> NotifyProvider | None:
    if not (_TENANT_SLUG.fullmatch(tenant_slug) and _PROVIDER_NAME.fullmatch(provider_name)):
        return None
    tenant_id = await session.scalar(select(Tenant.id).where(Tenant.slug == tenant_slug))
    if tenant_id is None:
        return None
    bind_tenant(session, tenant_id)
    return await session.scalar(select(NotifyProvider).where(NotifyProvider.name == provider_name))


async def receive_webhook(
    session: AsyncSession,
    context: AppContext,
    tenant_slug: str,
    provider_name: str,
    request: WebhookRequest,
) -> WebhookOutcome:
    """Verify a provider's webhook and apply what it reports (see the module's text).

    Raises :class:`WebhookRefused` (401) for anything unverified, before the body is read
    for its meaning; :class:`BadRequest` or :class:`ValidationFailed` for a verified body
    that does not parse.
    """
    provider = await _provider(session, tenant_slug, provider_name)
    kind = WEBHOOK_KINDS.get(provider.kind) if provider is not None else None
    if provider is None or kind is None:
        raise WebhookRefused()
    credentials = await _credentials(session, context, provider)
    if credentials is None or not kind.verify(request, credentials):
        log.info("notify.webhook_refused", tenant=tenant_slug, provider=provider.name)
        raise WebhookRefused()
    outcome = WebhookOutcome(provider.tenant_id, provider.name)
    event = kind.parse(request)
    if event is None:
        return outcome
    return await apply_event(session, provider, event, hash_context_key=context.keyring.token_hash)


async def apply_event(
    session: AsyncSession,
    provider: NotifyProvider,
    event: ProviderEvent,
    *,
    hash_context_key: experiments.ContextKeyHasher,
) -> WebhookOutcome:
    """Record ``event`` on the message ``provider`` sent as ``event.provider_message_id``,
    and suppress its address when the event says so. A message Keel does not know (or one
    another provider sent) changes nothing. An open or click the provider tracked counts
    for the template's A/B experiment as Keel's own pixel and links do (the first of each)."""
    bind_tenant(session, provider.tenant_id)
    message = (
        await session.scalars(
            select(NotifyMessage)
            .where(
                NotifyMessage.provider == provider.name,
                NotifyMessage.provider_message_id == event.provider_message_id,
            )
            .limit(1)
            .with_for_update()
        )
    ).first()
    if message is None:
        log.info("notify.webhook_unknown_message", provider=provider.name)
        return WebhookOutcome(provider.tenant_id, provider.name)
    await experiments.record_conversion(
        session, message, event.status, hash_context_key=hash_context_key
    )
    tracking.record_status(
        session, message, event.status, {"provider": provider.name, **event.detail}
    )
    suppressed = None
    if event.suppress is not None and message.address is not None:  # None: erased since
        row, is_new = await suppress(
            session, provider.tenant_id, message.channel, message.address, event.suppress
        )
        suppressed = Suppressed(row.id, message.channel, event.suppress, is_new)
    await session.flush()
    return WebhookOutcome(provider.tenant_id, provider.name, message.id, event.status, suppressed)
