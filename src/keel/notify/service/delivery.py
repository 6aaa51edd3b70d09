"""Delivering messages: the ``notify.deliver`` task on the jobs engine.

A job carries up to ``KEEL_NOTIFY__DELIVERY_CHUNK`` message ids. Each message is delivered
in three steps:

1. **Prepare** (one transaction for ``PREPARE_GROUP`` messages of the job): the messages are
   read under a lock (with their recipients and suppressions, one statement each) and only
   a ``queued`` one goes on; the suppression list, the recipient's preferences and quiet
   hours are applied again (they may have changed since the send was accepted); the
   content is rendered; an email gets its unsubscribe token (its keyed hash stored now, before the
   token leaves), tracking, MIME and DKIM signature. The attempt is counted.
2. **Send** through the channel's providers in order (failover), outside any transaction.
3. **Record** (one transaction): ``sent`` with the provider and its message id, or a retry
   with backoff as a new job of this message alone, or ``failed`` / ``bounced`` — the
   address suppressed after a hard bounce. The message's data is dropped once it is final.

The record follows the provider's answer within milliseconds; a process killed in between
leaves a message that the job's next attempt sends again (at least once, as with every
delivery system; the SMTP ``Message-ID`` stays the same, so a receiving system can tell).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.changes import record_change
from keel.core.context import AppContext, TaskRun
from keel.core.db import utcnow
from keel.core.ids import new_id
from keel.core.logging import get_logger
from keel.core.tenancy import bind_tenant
from keel.jobs.service import enqueue_task
from keel.notify import email as mail
from keel.notify import templating
from keel.notify.metrics import NOTIFY_METRICS_RESOURCE
from keel.notify.models import (
    NotifyInboxItem,
    NotifyMessage,
    NotifyMessageEvent,
    NotifyProvider,
    NotifyRecipient,
)
from keel.notify.providers import (
    ChatPayload,
    EmailPayload,
    ErrorKind,
    FcmTarget,
    Provider,
    ProviderConfigError,
    ProviderError,
    PushPayload,
    Sent,
    SmsPayload,
    WebPushTarget,
    build_provider,
    send_with_failover,
)
from keel.notify.service import tracking
from keel.notify.service.policy import quiet_hours_end, recipient_view, render_channel, retry_delay
from keel.notify.service.providers import get_sender, read_secret_fields
from keel.notify.service.recipients import (
    SuppressionReason,
    opted_out,
    suppress,
    suppression_applies,
    suppressions_among,
)
from keel.notify.service.runtime import (
    DEFAULT_SENDER,
    DELIVER,
    INBOX_STREAM,
    NOTIFY_RUNTIME,
    ProviderChain,
    provider_rate_rule,
)
from keel.notify.service.templates import get_version, load_library

if TYPE_CHECKING:
    from sqlalchemy import Table

log = get_logger(__name__)


def public_base_url(context: AppContext) -> str:
    settings = context.settings
    return (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")


async def _close(providers: Sequence[Provider[Any]]) -> None:
    for provider in providers:
        try:
            await provider.aclose()
        except Exception:  # closing must not stop delivery
            log.warning("notify.provider_close_failed", provider=provider.name, exc_info=True)


class NotConfigured(Exception):
    """The tenant's configuration cannot deliver this message yet (no provider, no sender,
    unreadable credentials): retried, so an operator's fix takes effect."""


async def providers_for(
    session: AsyncSession, context: AppContext, tenant_id: str, channel: str
) -> ProviderChain:
    """The tenant's enabled providers of ``channel``, in order, built with their credentials
    (kept ``credentials_ttl_seconds``; a changed configuration is read at once), and their
    rate limits."""
    runtime = context.resources[NOTIFY_RUNTIME]
    rows = list(
        await session.scalars(
            select(NotifyProvider)
            .where(NotifyProvider.channel == channel, NotifyProvider.enabled.is_(True))
            .order_by(NotifyProvider.position, NotifyProvider.name)
        )
    )
    if not rows:
        raise NotConfigured(f"no {channel} provider is configured")
    signature = tuple((row.id, row.version) for row in rows)
    key = (tenant_id, channel)
    cached = runtime.chains.get(key)
    ttl = context.settings.notify.credentials_ttl_seconds
    if cached and cached.signature == signature and time.monotonic() - cached.read_at < ttl:
        return cached
    providers: list[Provider[Any]] = []
    for row in rows:
        credentials: dict[str, str] = {}
        if row.credentials_secret:
            try:
                credentials = await read_secret_fields(
                    session, context, tenant_id, row.credentials_secret, f"provider {row.name}"
                )
            except LookupError as exc:
                raise NotConfigured(f"provider {row.name}: {exc}") from None
        try:
            providers.append(
                build_provider(
                    row.kind, row.settings, credentials, http=runtime.http, name=row.name
                )
            )
        except ProviderConfigError as exc:
            raise NotConfigured(f"provider {row.name}: {exc}") from None
    if cached:
        await _close(cached.providers)
    rates = {
        row.name: int(row.settings["rate_per_second"])
        for row in rows
        if row.settings.get("rate_per_second") is not None
    }
    chain = ProviderChain(signature, time.monotonic(), providers, rates)
    runtime.chains[key] = chain
    return chain


async def provider_wait(context: AppContext, tenant_id: str, provider: str, rate: int) -> int:
    """Count one message against provider ``provider``'s ``rate_per_second``: 0 while under
    it, else the whole seconds (at least 1) until the provider's share has room again. Every
    replica counts together when Keel has Redis; while Redis is unreachable the limit is
    not enforced (fails open: the provider's own 429 answers still defer)."""
    limiter = context.resources[NOTIFY_RUNTIME].limiter
    if limiter is None:
        return 0
    decision = await limiter.hit(provider_rate_rule(rate), f"{tenant_id}:{provider}")
    return 0 if decision.allowed else max(1, decision.retry_after or 1)


async def _dkim_key(
    session: AsyncSession, context: AppContext, tenant_id: str, sender: Any
) -> mail.DkimKey | None:
    if not sender.dkim_secret:
        return None
    runtime = context.resources[NOTIFY_RUNTIME]
    key = (tenant_id, sender.dkim_secret)
    cached = runtime.dkim_keys.get(key)
    ttl = context.settings.notify.credentials_ttl_seconds
    if cached is None or time.monotonic() - cached[0] >= ttl:
        try:
            fields = await read_secret_fields(
                session, context, tenant_id, sender.dkim_secret, f"dkim {sender.name}"
            )
        except LookupError as exc:
            raise NotConfigured(f"sender {sender.name}: {exc}") from None
        if "private_key" not in fields:
            raise NotConfigured(f"sender {sender.name}: the DKIM secret has no private_key")
        cached = (time.monotonic(), fields["private_key"].encode())
        runtime.dkim_keys[key] = cached
    return mail.DkimKey(
        selector=sender.dkim_selector, domain=sender.dkim_domain, private_key_pem=cached[1]
    )


# -- one message ------------------------------------------------------------------------------


@dataclass
class _ChunkCache:
    """What the messages of one delivery job share, read once for the job: the tenant's
    layouts and partials, template versions, providers per channel and the email sender."""

    library: templating.Library
    contents: dict[tuple[str, int | None], templating.TemplateContent] = field(default_factory=dict)
    providers: dict[str, ProviderChain] = field(default_factory=dict)
    sender: Any = None

    async def content(
        self, session: AsyncSession, tenant_id: str, message: NotifyMessage
    ) -> templating.TemplateContent:
        key = (message.template, message.template_version)
        found = self.contents.get(key)
        if found is None:
            _, version = await get_version(
                session, tenant_id, message.template, message.template_version
            )
            found = templating.TemplateContent.model_validate(version.content)
            self.contents[key] = found
        return found

    async def providers_of(
        self, session: AsyncSession, context: AppContext, tenant_id: str, channel: str
    ) -> ProviderChain:
        found = self.providers.get(channel)
        if found is None:
            found = await providers_for(session, context, tenant_id, channel)
            self.providers[channel] = found
        return found


@dataclass
class _Prepared:
    """What step 1 hands to step 2: the message's payloads and the providers to use."""

    message_id: str
    channel: str
    payloads: list[Any]
    providers: list[Provider[Any]]
    attempts: int
    #: In-app messages need no provider: step 3 writes the inbox item.
    inbox: dict[str, Any] | None = None
    #: When its preparing began (``time.perf_counter``), for the delivery time metric.
    started: float = 0.0


def _quiet_until(message: NotifyMessage, recipient: NotifyRecipient | None) -> Any:
    if recipient is None or message.critical:
        return None
    return quiet_hours_end(utcnow(), recipient.quiet_hours, recipient.timezone)


#: The outcome of the message being delivered in this task, for the metrics:
#: ``(channel, provider, outcome)``.
_OUTCOME: ContextVar[tuple[str, str, str] | None] = ContextVar("notify_outcome", default=None)


def _note_outcome(message: NotifyMessage, outcome: str) -> None:
    _OUTCOME.set((message.channel, message.provider or "none", outcome))


async def _finish(
    session: AsyncSession, message: NotifyMessage, status: str, detail: dict[str, Any]
) -> None:
    message.data = None
    tracking.record_status(session, message, status, detail)
    _note_outcome(message, status)
    await session.flush()


#: Messages prepared together in one transaction (step 1 for a group of a job's messages):
#: their rows, recipients and suppressions read in one statement each, their attempts and
#: unsubscribe tokens written in one commit. Sends and records stay one per message, so a
#: killed process still sends again at most the one message it was sending; a group
#: prepared but not yet sent only counts an attempt more for each of its messages.
PREPARE_GROUP = 10


@dataclass
class _GroupReads:
    """What :func:`_prepare_group` read for its messages in one statement each."""

    messages: dict[str, NotifyMessage]
    recipients: dict[str, NotifyRecipient]
    #: Suppressed addresses by channel, with the category each is suppressed for.
    suppressions: dict[str, dict[str, str | None]]


async def _read_group(session: AsyncSession, message_ids: Sequence[str]) -> _GroupReads:
    messages = {
        message.id: message
        for message in await session.scalars(
            select(NotifyMessage)
            .where(NotifyMessage.id.in_(list(message_ids)))
            .order_by(NotifyMessage.id)  # rows locked in one order by every job
            .with_for_update()
        )
    }
    queued = [message for message in messages.values() if message.status == "queued"]
    recipient_ids = sorted({m.recipient_id for m in queued if m.recipient_id})
    recipients: dict[str, NotifyRecipient] = {}
    if recipient_ids:
        recipients = {
            recipient.id: recipient
            for recipient in await session.scalars(
                select(NotifyRecipient).where(NotifyRecipient.id.in_(recipient_ids))
            )
        }
    addresses: dict[str, list[str]] = {}
    for message in queued:
        if not message.critical and message.address:
            addresses.setdefault(message.channel, []).append(message.address)
    suppressions = {
        channel: await suppressions_among(session, channel, found)
        for channel, found in addresses.items()
    }
    return _GroupReads(messages, recipients, suppressions)


async def _prepare_group(
    context: AppContext, tenant_id: str, message_ids: Sequence[str], cache: _ChunkCache
) -> list[_Prepared]:
    """Step 1 for ``message_ids`` in one transaction: the messages to send, in order. Those
    finished here (suppressed, opted out, held, failed) are counted in the metrics."""
    prepared: list[_Prepared] = []
    finished: list[tuple[tuple[str, str, str], float]] = []
    async with context.database.session() as session:
        bind_tenant(session, tenant_id)
        reads = await _read_group(session, message_ids)
        for message_id in message_ids:
            started = time.perf_counter()
            _OUTCOME.set(None)
            message = reads.messages.get(message_id)
            if message is None or message.status != "queued":
                continue  # delivered by an earlier attempt, erased, or cancelled
            try:
                one = await _prepare(session, context, tenant_id, message, reads, cache)
            except templating.TemplateError as exc:  # published content no longer renders
                await _finish(session, message, "failed", {"error": str(exc)})
                one = None
            if one is not None:
                one.started = started
                prepared.append(one)
            elif (outcome := _OUTCOME.get()) is not None:
                finished.append((outcome, started))
    for outcome, started in finished:
        _count_outcome(context, outcome, started)
    return prepared


async def _prepare(
    session: AsyncSession,
    context: AppContext,
    tenant_id: str,
    message: NotifyMessage,
    reads: _GroupReads,
    cache: _ChunkCache,
) -> _Prepared | None:
    """Step 1 for one queued ``message`` of a group, in the group's transaction."""
    recipient = reads.recipients.get(message.recipient_id) if message.recipient_id else None
    if not message.critical:
        suppressions = reads.suppressions.get(message.channel, {})
        if suppression_applies(suppressions, message.channel, message.address, message.category):
            await _finish(session, message, "suppressed", {"at": "delivery"})
            return None
        if recipient is not None and await opted_out(
            session, recipient.id, message.category, message.channel
        ):
            await _finish(session, message, "skipped", {"reason": "opted out"})
            return None
        quiet_end = _quiet_until(message, recipient)
        if quiet_end is not None:
            message.send_at = quiet_end
            tracking.record_status(
                session, message, "queued", {"quiet_hours_until": quiet_end.isoformat()}
            )
            _note_outcome(message, "held")
            await enqueue_task(
                session, tenant_id, DELIVER, {"messages": [message.id]}, run_at=quiet_end
            )
            return None
    if message.data is None:  # erased while waiting
        await _finish(session, message, "failed", {"error": "the message's data was erased"})
        return None
    content = await cache.content(session, tenant_id, message)
    data = {**message.data, "recipient": recipient_view(recipient)}
    rendered = templating.render(
        content,
        locale=message.locale or (recipient.locale if recipient else None),
        data=data,
        library=cache.library,
        channel=render_channel(message.channel),
    )
    message.attempts += 1
    prepared = _Prepared(message.id, message.channel, [], [], message.attempts)
    if message.channel == "in_app":
        prepared.inbox = {
            "recipient_id": message.recipient_id,
            "title": rendered.push_title or "",
            "body": rendered.push_body or "",
            "category": message.category,
        }
        return prepared
    try:
        chain = await cache.providers_of(session, context, tenant_id, message.channel)
        prepared.providers = chain.providers
        if message.channel == "chat" and message.address:  # the named provider, or all
            prepared.providers = [
                p for p in prepared.providers if p.name == message.address
            ] or prepared.providers
        # The provider tried first is the one whose limit counts (a failover provider
        # is reached only when it fails, and its own 429 then defers the message).
        first = prepared.providers[0].name
        rate = chain.rates.get(first)
        wait = await provider_wait(context, tenant_id, first, rate) if rate else 0
        if wait:
            await _defer(session, tenant_id, message, first, wait)
            return None
        if message.channel == "email":
            if cache.sender is None:
                cache.sender = await get_sender(session, tenant_id, DEFAULT_SENDER)
            prepared.payloads = [
                await _email_payload(session, context, tenant_id, message, rendered, cache.sender)
            ]
        elif message.channel == "sms":
            prepared.payloads = [
                SmsPayload(recipient=message.address or "", body=rendered.sms or "")
            ]
        elif message.channel == "push":
            prepared.payloads = [
                PushPayload(
                    target=_push_target(target),
                    title=rendered.push_title or "",
                    body=rendered.push_body or "",
                    data={**(message.push_data or {}), "message_id": message.id},
                )
                for target in (recipient.push_targets if recipient else [])
            ]
        else:  # chat
            prepared.payloads = [ChatPayload(text=rendered.chat or "")]
    except NotConfigured as exc:
        await _retry_or_fail(session, tenant_id, message, context, f"{exc}", None, "config")
        return None
    return prepared


async def _defer(
    session: AsyncSession, tenant_id: str, message: NotifyMessage, provider: str, wait: int
) -> None:
    """Hold a message over its provider's ``rate_per_second`` for ``wait`` seconds: neither
    failed nor failed over, and the attempt not counted (it was not tried)."""
    message.attempts -= 1
    run_at = utcnow() + timedelta(seconds=wait)
    message.send_at = run_at
    tracking.record_status(
        session, message, "queued", {"rate_limited_until": run_at.isoformat(), "provider": provider}
    )
    _note_outcome(message, "deferred")
    await enqueue_task(session, tenant_id, DELIVER, {"messages": [message.id]}, run_at=run_at)


def _push_target(target: dict[str, Any]) -> Any:
    if target["kind"] == "fcm":
        return FcmTarget(token=target["token"])
    return WebPushTarget(endpoint=target["endpoint"], p256dh=target["p256dh"], auth=target["auth"])


async def _email_payload(
    session: AsyncSession,
    context: AppContext,
    tenant_id: str,
    message: NotifyMessage,
    rendered: templating.Rendered,
    sender: Any,
) -> EmailPayload:
    if sender is None:
        raise NotConfigured("no email sender 'default' is configured")
    base = public_base_url(context)
    keyring = context.keyring
    html = rendered.html
    unsubscribe = None
    if not message.critical:
        token = tracking.new_unsubscribe_token()
        message.unsubscribe_token_hash = tracking.unsubscribe_token_hash(keyring, token)
        unsubscribe = tracking.unsubscribe_url(base, token)
    settings = context.settings.notify
    # A critical message's links can carry credentials (a password reset link): a tracked
    # link would put them in Keel's click URL, and so in access logs and proxies.
    if html is not None and settings.track_clicks and not message.critical:
        html = mail.rewrite_links(
            html,
            lambda url: tracking.click_url(base, keyring, message.id, url),
            skip=lambda url: url == unsubscribe,
        )
    if html is not None and settings.track_opens:
        html = mail.add_open_pixel(html, tracking.open_pixel_url(base, keyring, message.id))
    domain = sender.dkim_domain or sender.address.rpartition("@")[2].rstrip(">")
    composed = mail.compose(
        templating.Rendered(
            locale=rendered.locale, subject=rendered.subject, html=html, text=rendered.text
        ),
        sender=sender.address,
        recipient=message.address or "",
        message_id=message.id,
        domain=domain,
        unsubscribe_url=unsubscribe,
        reply_to=sender.reply_to,
    )
    raw = composed.as_bytes()
    dkim_key = await _dkim_key(session, context, tenant_id, sender)
    if dkim_key is not None:
        raw = mail.sign(raw, dkim_key)
    headers = {
        name: str(composed[name])
        for name in ("Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post")
        if composed[name] is not None
    }
    return EmailPayload(
        sender=sender.address,
        recipient=message.address or "",
        subject=rendered.subject or "",
        text=rendered.text or "",
        html=html,
        headers=headers,
        raw=raw,
    )


async def _retry_or_fail(
    session: AsyncSession,
    tenant_id: str,
    message: NotifyMessage,
    context: AppContext,
    error: str,
    retry_after: float | None,
    kind: str,
) -> None:
    limit = context.settings.notify.max_attempts
    if message.attempts >= limit:
        message.error = error
        await _finish(session, message, "failed", {"error": error, "kind": kind})
        return
    wait = retry_delay(message.attempts, retry_after)
    run_at = utcnow() + timedelta(seconds=wait)
    message.send_at = run_at
    message.error = error
    tracking.record_status(
        session, message, "queued", {"retry_at": run_at.isoformat(), "error": error, "kind": kind}
    )
    _note_outcome(message, "retried")
    await enqueue_task(session, tenant_id, DELIVER, {"messages": [message.id]}, run_at=run_at)


async def _send(prepared: _Prepared) -> list[Sent | ProviderError]:
    """Each payload's outcome, in order (a push message has a payload per device)."""
    outcomes: list[Sent | ProviderError] = []
    for payload in prepared.payloads:
        try:
            outcomes.append(await send_with_failover(prepared.providers, payload))
        except ProviderError as exc:
            outcomes.append(exc)
    return outcomes


async def _record(
    context: AppContext,
    tenant_id: str,
    prepared: _Prepared,
    outcomes: list[Sent | ProviderError],
) -> None:
    sent = [outcome for outcome in outcomes if isinstance(outcome, Sent)]
    errors = [outcome for outcome in outcomes if isinstance(outcome, ProviderError)]
    gone = {
        _target_key(payload.target)
        for payload, outcome in zip(prepared.payloads, outcomes, strict=True)
        if isinstance(outcome, ProviderError)
        and outcome.kind == ErrorKind.rejected
        and isinstance(payload, PushPayload)
    }
    # The common case (one payload, the first provider took it) in two statements.
    common = len(sent) == 1 and not errors and not sent[0].failures
    if common and await _record_sent(context, tenant_id, prepared, sent[0]):
        return
    async with context.database.session() as session:
        bind_tenant(session, tenant_id)
        message = await session.scalar(
            select(NotifyMessage).where(NotifyMessage.id == prepared.message_id).with_for_update()
        )
        if message is None:
            return
        if prepared.inbox is not None:
            item = NotifyInboxItem(id=new_id(), message_id=message.id, **prepared.inbox)
            session.add(item)
            # The recipient's open inbox streams hear of it (the item's id, never its text).
            record_change(
                session, tenant_id, INBOX_STREAM, str(item.recipient_id), {"item": item.id}
            )
            message.sent_at = utcnow()
            await _finish(session, message, "delivered", {"inbox": True})
            return
        if sent:
            first = sent[0]
            message.provider = first.provider
            message.provider_message_id = first.provider_message_id
            message.sent_at = utcnow()
            message.error = None
            detail: dict[str, Any] = {"provider": first.provider}
            failed_over = [attempt.provider for attempt in first.failures]
            if failed_over:
                detail["failed_over"] = failed_over
                metrics = context.resources.get(NOTIFY_METRICS_RESOURCE)
                if metrics is not None:
                    for provider in failed_over:
                        metrics.failovers.labels(message.channel, provider).inc()
            if message.channel == "push" and errors:
                detail["targets_failed"] = len(errors)
            await _finish(session, message, "sent", detail)
            await _forget_push_targets(session, message, gone)
            return
        if not errors:  # a push message to a recipient without targets
            await _finish(session, message, "failed", {"error": "no push target"})
            return
        error = errors[0]
        if error.kind == ErrorKind.rejected:
            message.error = str(error)
            message.provider = error.provider  # the provider that refused the recipient
            if message.channel == "email" and message.address:
                await suppress(
                    session,
                    tenant_id,
                    "email",
                    message.address,
                    SuppressionReason.bounce,
                )
                await _finish(session, message, "bounced", {"provider": error.provider})
            else:
                await _finish(session, message, "failed", {"error": str(error)})
            await _forget_push_targets(session, message, gone)
            return
        await _retry_or_fail(
            session, tenant_id, message, context, str(error), error.retry_after, error.kind
        )


_messages = cast("Table", NotifyMessage.__table__)
#: :func:`_record_sent`'s two statements, built once (the values are their parameters: no
#: statement to build, coerce and compute a cache key of for every message sent).
_MARK_SENT = (
    update(_messages)
    .where(
        _messages.c.id == bindparam("message_id"),
        _messages.c.tenant_id == bindparam("tenant"),
        _messages.c.status == "queued",
    )
    .values(
        status="sent",
        provider=bindparam("provider"),
        provider_message_id=bindparam("provider_message_id"),
        sent_at=bindparam("now"),
        updated_at=bindparam("now"),
        error=None,
        data=None,
    )
    .execution_options(all_tenants=True)
)
_INSERT_EVENT = insert(cast("Table", NotifyMessageEvent.__table__))


async def _record_sent(
    context: AppContext, tenant_id: str, prepared: _Prepared, sent: Sent
) -> bool:
    """Record a message sent by the first provider as :func:`_record` would, without loading
    it: one ``UPDATE`` (of a message still ``queued``) and its history's ``INSERT``. False
    when the message is no longer queued (erased, say): :func:`_record` decides then."""
    now = utcnow()
    async with context.database.session() as session:
        bind_tenant(session, tenant_id)
        moved = await session.execute(
            _MARK_SENT,
            {
                "message_id": prepared.message_id,
                "tenant": tenant_id,
                "provider": sent.provider,
                "provider_message_id": sent.provider_message_id,
                "now": now,
            },
        )
        if getattr(moved, "rowcount", 0) != 1:
            return False
        await session.execute(
            _INSERT_EVENT,
            {
                "id": new_id(),
                "tenant_id": tenant_id,
                "message_id": prepared.message_id,
                "status": "sent",
                "detail": {"provider": sent.provider},
                "at": now,
            },
        )
    _OUTCOME.set((prepared.channel, sent.provider, "sent"))
    return True


def _target_key(target: Any) -> str:
    return str(target.token if isinstance(target, FcmTarget) else target.endpoint)


async def _forget_push_targets(
    session: AsyncSession, message: NotifyMessage, gone: set[str]
) -> None:
    """Push targets the provider said are gone (an uninstalled app, an expired Web Push
    subscription) leave the recipient's profile."""
    if not gone or message.recipient_id is None:
        return
    recipient = await session.get(NotifyRecipient, message.recipient_id)
    if recipient is not None:
        recipient.push_targets = [
            target
            for target in recipient.push_targets
            if target.get("token", target.get("endpoint")) not in gone
        ]


def _count_outcome(context: AppContext, outcome: tuple[str, str, str], started: float) -> None:
    metrics = context.resources.get(NOTIFY_METRICS_RESOURCE)
    if metrics is not None:
        metrics.deliveries.labels(*outcome).inc()
        metrics.delivery_seconds.labels(outcome[0]).observe(time.perf_counter() - started)


async def _send_and_record(context: AppContext, tenant_id: str, prepared: _Prepared) -> None:
    """Steps 2 and 3 of a prepared message, counted in the service's metrics."""
    _OUTCOME.set(None)
    try:
        outcomes = [] if prepared.inbox is not None else await _send(prepared)
        await _record(context, tenant_id, prepared, outcomes)
    finally:
        outcome = _OUTCOME.get()
        if outcome is not None:
            _count_outcome(context, outcome, prepared.started)


async def deliver_messages(context: AppContext, run: TaskRun, args: Any) -> dict[str, int]:
    """The ``notify.deliver`` task: deliver each message of ``args["messages"]``, prepared
    ``PREPARE_GROUP`` at a time (see the module's text)."""
    ids: list[str] = list(args["messages"])
    async with context.database.session() as session:
        cache = _ChunkCache(await load_library(session, run.tenant_id))
    for start in range(0, len(ids), PREPARE_GROUP):
        group = ids[start : start + PREPARE_GROUP]
        for prepared in await _prepare_group(context, run.tenant_id, group, cache):
            await _send_and_record(context, run.tenant_id, prepared)
    return {"messages": len(ids)}
