"""Verify Keel tokens locally and check permissions: ``keel_client.auth``.

Example::

    from keel_client.auth import TokenVerifier

    verifier = TokenVerifier.from_url("https://keel.internal")
    principal = await verifier.verify(token)
    principal.has_permission("billing:invoice:read")
"""

from keel_client.auth._permissions import has_permission, is_valid_permission, permission_matches
from keel_client.auth._principal import Principal
from keel_client.auth._verifier import (
    DEFAULT_ALGORITHMS,
    InvalidToken,
    TokenVerifier,
)

__all__ = [
    "DEFAULT_ALGORITHMS",
    "InvalidToken",
    "Principal",
    "TokenVerifier",
    "has_permission",
    "is_valid_permission",
    "permission_matches",
]
