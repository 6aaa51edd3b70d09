"""The signed ``Keel-Identity`` header, minted on the server for the caller a request carries.

The gateway's proxy and the authorization endpoints (nginx ``auth_request``, Traefik
``forwardAuth``, Envoy ``ext_authz``) both hand the upstream the caller they verified, in the
form :mod:`keel_client.edge._identity` defines: a JWS typed ``keel-identity+jwt``, signed with
Keel's current signing key, so an upstream trusts it only after checking it against Keel's
JWKS. This module is the one place the server signs it.

Signing costs one asymmetric signature, so tokens are reused through
:class:`~keel_client.edge._identity.IdentityTokenCache` (until 10 s before they expire): one
signature per caller and audience about every 50 s. The active key is the auth service's
(``keys.active_key``, itself cached); a key rotated meanwhile leaves the previous one
published, so a cached token still verifies.
"""

from __future__ import annotations

from keel.auth.dependencies import AUTH_RESOURCE
from keel.auth.spec import issuer_for
from keel.core.context import AppContext, ResourceKey
from keel_client.auth import Principal
from keel_client.edge._identity import IdentityTokenCache, identity_claims, sign_identity
from keel_client.edge._model import Route

#: The process's minter (one token cache for the proxy and the endpoints alike).
IDENTITY_MINTER: ResourceKey[IdentityMinter] = ResourceKey("gateway.identity_minter")


def identity_audience(route: Route) -> str:
    """The ``aud`` of the identity tokens sent with ``route``'s requests: ``gateway:<pool>``
    (the service behind it verifies with that audience), or ``gateway:<route>`` for a route
    without a pool of its own."""
    return f"gateway:{route.upstream or route.name}"


class IdentityMinter:
    """Signs (or reuses) the ``Keel-Identity`` token for a principal and an audience.

    Example::

        minter = identity_minter(context)
        headers.append((b"keel-identity", await minter.header_for(principal, "gateway:orders")))
    """

    def __init__(self, context: AppContext, *, cache: IdentityTokenCache | None = None) -> None:
        self.context = context
        self.issuer = issuer_for(context.settings)
        self.cache = cache or IdentityTokenCache()

    async def header_for(self, principal: Principal, audience: str) -> bytes:
        """The header value (a compact JWS, ASCII) vouching for ``principal`` to ``audience``."""
        token = self.cache.get(principal, audience)
        if token is None:
            token, expires_at = await self._sign(principal, audience)
            self.cache.put(principal, audience, token, expires_at)
        return token.encode("ascii")

    async def _sign(self, principal: Principal, audience: str) -> tuple[str, float]:
        auth = self.context.resources[AUTH_RESOURCE]
        async with self.context.database.session() as session:
            key = await auth.keys.active_key(session)
        claims = identity_claims(principal, issuer=self.issuer, audience=audience)
        token = sign_identity(
            claims, private_key=key.private_key, algorithm=key.algorithm, kid=key.kid
        )
        return token, float(claims["exp"])


def identity_minter(context: AppContext) -> IdentityMinter:
    """The process's :class:`IdentityMinter`, made on first use (the proxy and the endpoints
    then share its cache)."""
    minter = context.resources.get(IDENTITY_MINTER)
    if minter is None:
        minter = IdentityMinter(context)
        context.resources[IDENTITY_MINTER] = minter
    return minter
