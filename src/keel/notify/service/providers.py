"""A tenant's delivery configuration: providers per channel (tried in ``position`` order for
failover) and email senders (``From`` and DKIM). Credentials and DKIM keys stay in the
secrets service; rows name the KV secret (``mount/path``) that holds them, and delivery reads
it as Keel's own ``notify`` principal, each read audited by the secrets service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.audit import Actor
from keel.core.db import utcnow
from keel.core.errors import NotFound, ValidationFailed
from keel.core.lazy import lazy_module
from keel.core.tenancy import bind_tenant
from keel.notify.models import NotifyProvider, NotifySender
from keel.notify.service.recipients import check_email
from keel.secrets.service import SecretReader, kv_engine_of
from keel_client.auth import Principal

if TYPE_CHECKING:
    from keel.notify import providers as provider_kinds
else:
    provider_kinds = lazy_module("keel.notify.providers")


_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]+/[A-Za-z0-9_./-]{1,400}$")
_ADDRESS = re.compile(r"^(?:(?P<name>[^<>]{1,200}?)\s*)?<(?P<address>[^<>\s]+)>$|^(?P<bare>\S+)$")
#: The principal delivery reads secrets as: Keel's notification service itself.
NOTIFY_SUBJECT = "keel:notify"


def check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValidationFailed(f"A {kind} name is 1-64 lower-case letters, digits, _ and -.")
    return name


def check_secret_ref(reference: str | None) -> str | None:
    """``mount/path`` of a KV secret, or ``None``."""
    if reference is not None and (not _SECRET.fullmatch(reference) or ".." in reference):
        raise ValidationFailed("A secret is named mount/path (e.g. secret/notify/smtp).")
    return reference


def split_secret_ref(reference: str) -> tuple[str, str]:
    mount, _, path = reference.partition("/")
    return mount, path


def check_sender_address(value: str) -> str:
    """``Name <address>`` or a bare address, the address checked."""
    match = _ADDRESS.fullmatch(value.strip())
    if match is None:
        raise ValidationFailed("A sender is 'Name <address@example.com>' or an address.")
    address = check_email(match.group("address") or match.group("bare"))
    name = match.group("name")
    return f"{name} <{address}>" if name else address


# -- providers -------------------------------------------------------------------------------


async def put_provider(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    kind: str,
    settings: Mapping[str, Any],
    credentials_secret: str | None,
    position: int = 0,
    enabled: bool = True,
) -> tuple[NotifyProvider, bool]:
    """Create or replace provider ``name``; settings are checked against the kind (its
    credentials are checked when delivery reads them)."""
    check_name("provider", name)
    provider_kind = provider_kinds.PROVIDER_KINDS.get(kind)
    if provider_kind is None:
        raise ValidationFailed(
            f"Provider kind {kind!r} is not one of {sorted(provider_kinds.PROVIDER_KINDS)}."
        )
    try:
        provider_kind.validate_settings(settings)
    except provider_kinds.ProviderConfigError as exc:
        raise ValidationFailed(str(exc)) from None
    needs_credentials = any(field.required for field in provider_kind.credential_fields)
    if needs_credentials and credentials_secret is None:
        raise ValidationFailed(f"A {kind} provider needs credentials_secret (mount/path).")
    check_secret_ref(credentials_secret)
    if not 0 <= position <= 1000:
        raise ValidationFailed("position is 0 to 1000.")
    bind_tenant(session, tenant_id)
    row = await session.scalar(select(NotifyProvider).where(NotifyProvider.name == name))
    created = row is None
    if row is None:
        row = NotifyProvider(name=name)
        session.add(row)
    else:
        row.version += 1
        row.updated_at = utcnow()
    row.kind = kind
    row.channel = provider_kind.channel.value
    row.settings = dict(settings)
    row.credentials_secret = credentials_secret
    row.position = position
    row.enabled = enabled
    await session.flush()
    return row, created


async def list_providers(
    session: AsyncSession, tenant_id: str, channel: str | None = None
) -> list[NotifyProvider]:
    bind_tenant(session, tenant_id)
    query = select(NotifyProvider).order_by(
        NotifyProvider.channel, NotifyProvider.position, NotifyProvider.name
    )
    if channel is not None:
        query = query.where(NotifyProvider.channel == channel)
    return list(await session.scalars(query))


async def delete_provider(session: AsyncSession, tenant_id: str, name: str) -> NotifyProvider:
    bind_tenant(session, tenant_id)
    row = await session.scalar(select(NotifyProvider).where(NotifyProvider.name == name))
    if row is None:
        raise NotFound(f"No provider {name!r}.")
    await session.delete(row)
    await session.flush()
    return row


# -- senders ---------------------------------------------------------------------------------


async def put_sender(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    *,
    address: str,
    reply_to: str | None = None,
    dkim_domain: str | None = None,
    dkim_selector: str | None = None,
    dkim_secret: str | None = None,
) -> tuple[NotifySender, bool]:
    check_name("sender", name)
    dkim = (dkim_domain, dkim_selector, dkim_secret)
    if any(dkim) and not all(dkim):
        raise ValidationFailed("DKIM needs dkim_domain, dkim_selector and dkim_secret together.")
    bind_tenant(session, tenant_id)
    row = await session.scalar(select(NotifySender).where(NotifySender.name == name))
    created = row is None
    if row is None:
        row = NotifySender(name=name)
        session.add(row)
    else:
        row.version += 1
        row.updated_at = utcnow()
    row.address = check_sender_address(address)
    row.reply_to = check_sender_address(reply_to) if reply_to else None
    row.dkim_domain = dkim_domain.lower() if dkim_domain else None
    row.dkim_selector = dkim_selector
    row.dkim_secret = check_secret_ref(dkim_secret)
    await session.flush()
    return row, created


async def get_sender(session: AsyncSession, tenant_id: str, name: str) -> NotifySender | None:
    bind_tenant(session, tenant_id)
    return await session.scalar(select(NotifySender).where(NotifySender.name == name))


async def list_senders(session: AsyncSession, tenant_id: str) -> list[NotifySender]:
    bind_tenant(session, tenant_id)
    return list(await session.scalars(select(NotifySender).order_by(NotifySender.name)))


# -- reading credentials ---------------------------------------------------------------------


async def read_secret_fields(
    session: AsyncSession, context: Any, tenant_id: str, reference: str, purpose: str
) -> dict[str, str]:
    """Every field of the KV secret ``reference``, read as Keel's notification service (the
    read is audited with ``via``: notify and ``purpose``). Missing or unreadable: 422-free
    ``LookupError`` for the caller to record as a configuration failure."""
    principal = Principal(
        subject=NOTIFY_SUBJECT,
        tenant_id=tenant_id,
        principal_type="service",
        permissions=frozenset({"secrets:root"}),
    )
    reader = SecretReader(
        session,
        kv_engine_of(context),
        principal,
        Actor.of(principal),
        via={"via": "notify", "purpose": purpose},
    )
    mount, path = split_secret_ref(reference)
    found = await reader.read_data(mount, path)
    if not found.is_read:
        raise LookupError(f"the secret {reference} cannot be read ({found.refusal})")
    return {key: str(value) for key, value in found.value.items()}
