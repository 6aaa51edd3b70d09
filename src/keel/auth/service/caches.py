"""The auth service's shared caches: what every authenticated request would otherwise query.

Each entry lives a moment (the TTL) and is dropped at once, here and on other replicas through
the broadcast, when the unit of work that changes what it caches commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.cache import SharedCache, invalidate_after_commit
from keel_client.auth import Principal

#: Whether an access token (by ``jti``) was revoked. A revocation reaches this process at
#: once, other replicas through the broadcast, and at worst after the TTL.
REVOCATIONS = SharedCache[str, bool]("auth.revoked_access_tokens", ttl=2.0, max_entries=100_000)

#: The rows of a client credentials grant by client id (the client, its service account and
#: that account's roles): a token request costs no query. A change of roles or assignments
#: drops them all; a client revoked elsewhere is refused within the TTL.
CLIENT_GRANTS = SharedCache[str, tuple[Any, ...]]("auth.client_grants", ttl=2.0)

#: The client of a service account's secret, by the account id and the secret's keyed hash
#: (an AppRole login's lookup): found clients only. What it saves is a query, not a check: the
#: grant that follows still compares the secret with the client's stored hash in constant time
#: and refuses a revoked client (:data:`CLIENT_GRANTS`), so an entry never lets more through.
CLIENTS_BY_SECRET = SharedCache[tuple[str, str], str]("auth.clients_by_secret", ttl=2.0)

#: The principal of an API key by its lookup part, with what a hit must still check: the
#: secret's keyed hash, the expiry, and when ``last_used_at`` was last written (a hit older
#: than ``api_keys.LAST_USED_GRANULARITY`` takes the slow path, which writes it again).
API_KEYS = SharedCache[str, tuple[str, Principal, datetime | None, datetime]](
    "auth.api_keys", ttl=2.0
)


def forget_grants(session: AsyncSession) -> None:
    """Roles or assignments changed: every cached client grant and API key principal."""
    invalidate_after_commit(session, CLIENT_GRANTS, None)
    invalidate_after_commit(session, API_KEYS, None)
