"""The devices a user logs in from, for the new-device notice.

A *device* here is the pair of the login's user agent, without its version numbers (so a
browser's update is not a new device), and its IP network (the /24 of an IPv4 address, the
/48 of an IPv6 one: a home's or office's addresses, not one address that changes daily). It
is kept only as a keyed hash (HMAC with the master key's token key) of the user's id and
that pair: the table tells nobody where or with what the user logged in, only whether a
pair was seen before.

A successful login from a pair the user has not used before is told to the user
(:class:`AccountNotice` of kind ``new_device``) — except the user's first recorded login,
which has nothing to compare with. A user keeps at most :data:`MAX_DEVICES` pairs, the least
recently seen dropped. A login without a user agent and an address is not counted.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import KnownDevice, User
from keel.auth.service.account_notices import AccountNotice, AccountNoticeKind
from keel.core.audit import Actor
from keel.core.crypto import Keyring

#: Devices remembered per user; past it the least recently seen is forgotten.
MAX_DEVICES = 20
_VERSIONS = re.compile(r"[\d._]+")
_SPACES = re.compile(r"\s+")


def device_network(ip_address: str | None) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of an address; ``None`` for none or a bad one."""
    if not ip_address:
        return None
    try:
        address = ipaddress.ip_address(ip_address)
    except ValueError:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def user_agent_family(user_agent: str | None) -> str:
    """The user agent without version numbers, lower-cased: ``mozilla/ (x; linux x)…``."""
    if not user_agent:
        return ""
    return _SPACES.sub(" ", _VERSIONS.sub("", user_agent[:512].lower())).strip()


def device_hash(keyring: Keyring, user_id: str, actor: Actor) -> str | None:
    """The keyed hash that stands for the login's device, or ``None`` when the login says
    nothing about its device (no user agent, no address)."""
    family = user_agent_family(actor.user_agent)
    network = device_network(actor.ip_address)
    if not family and network is None:
        return None
    return keyring.token_hash(f"device\x00{user_id}\x00{family}\x00{network or ''}")


async def note_login_device(
    session: AsyncSession, keyring: Keyring, user: User, actor: Actor, now: datetime
) -> AccountNotice | None:
    """Record the device of a successful login; the notice to send when it is new to a user
    who has logged in before (and has an e-mail address to tell)."""
    digest = device_hash(keyring, user.id, actor)
    if digest is None:
        return None
    known = await session.scalar(
        select(KnownDevice).where(KnownDevice.user_id == user.id, KnownDevice.device_hash == digest)
    )
    if known is not None:
        known.last_seen_at = now
        return None
    count = int(
        await session.scalar(
            select(func.count()).select_from(KnownDevice).where(KnownDevice.user_id == user.id)
        )
        or 0
    )
    if count >= MAX_DEVICES:
        oldest = select(KnownDevice.id).where(KnownDevice.user_id == user.id)
        oldest = oldest.order_by(KnownDevice.last_seen_at).limit(count - MAX_DEVICES + 1)
        await session.execute(
            delete(KnownDevice)
            .where(KnownDevice.id.in_(list(await session.scalars(oldest))))
            .execution_options(synchronize_session=False)
        )
    try:
        async with session.begin_nested():
            session.add(
                KnownDevice(
                    tenant_id=user.tenant_id,
                    user_id=user.id,
                    device_hash=digest,
                    first_seen_at=now,
                    last_seen_at=now,
                )
            )
    except IntegrityError:
        return None  # a login from this device at the same moment recorded it (and tells)
    if count == 0 or not user.email:
        return None  # the first login has nothing to compare with
    return AccountNotice(
        AccountNoticeKind.new_device,
        user.tenant_id,
        user.id,
        user.email,
        at=now,
        device=(actor.user_agent or "")[:200] or None,
        ip_address=actor.ip_address,
    )
