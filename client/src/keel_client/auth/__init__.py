"""Verify Keel tokens locally and check permissions: ``keel_client.auth``.

Example::

    from keel_client.auth import TokenVerifier

    verifier = TokenVerifier.from_url("https://keel.internal")
    principal = await verifier.verify(token)
    principal.has_permission("billing:invoice:read")

Also here: ``AuthClient`` (login, refresh, logout, me), ``ServiceCredentials`` (the service's
own client-credentials token as an ``httpx.Auth``), ``TokenIntrospector`` (API keys by cached
introspection) and ``Authenticator`` (API keys to introspection, JWTs to the verifier). The
FastAPI dependencies and middleware are in ``keel_client.fastapi``.
"""

from keel_client.auth._client import (
    API_KEY_PREFIX,
    AuthClient,
    Authenticator,
    ServiceCredentials,
    TokenIntrospector,
    TokenSet,
)
from keel_client.auth._permissions import (
    has_permission,
    is_valid_permission,
    narrow_permissions,
    permission_matches,
)
from keel_client.auth._principal import Principal
from keel_client.auth._verifier import (
    DEFAULT_ALGORITHMS,
    InvalidToken,
    TokenVerifier,
)

__all__ = [
    "API_KEY_PREFIX",
    "DEFAULT_ALGORITHMS",
    "AuthClient",
    "Authenticator",
    "InvalidToken",
    "Principal",
    "ServiceCredentials",
    "TokenIntrospector",
    "TokenSet",
    "TokenVerifier",
    "has_permission",
    "is_valid_permission",
    "narrow_permissions",
    "permission_matches",
]
