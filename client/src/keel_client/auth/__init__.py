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

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from keel_client.auth._client import (
        API_KEY_PREFIX,
        AuthClient,
        Authenticator,
        ServiceCredentials,
        TokenIntrospector,
        TokenSet,
    )

_CLIENT_NAMES = frozenset(
    {
        "API_KEY_PREFIX",
        "AuthClient",
        "Authenticator",
        "ServiceCredentials",
        "TokenIntrospector",
        "TokenSet",
    }
)


def __getattr__(name: str) -> Any:
    # The HTTP clients pull in keel_client.http (httpx, hishel...); code that only verifies
    # tokens -- the Keel server itself, a service's request path -- does not pay for them.
    if name in _CLIENT_NAMES:
        from keel_client.auth import _client

        return getattr(_client, name)
    raise AttributeError(f"module 'keel_client.auth' has no attribute {name!r}")


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
