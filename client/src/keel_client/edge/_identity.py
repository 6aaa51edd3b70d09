"""The caller's verified identity, handed to the upstream in a form it can verify.

The gateway authenticates a request (access token, API key...) and passes the caller on in
the ``Keel-Identity`` header: a compact JWS signed with Keel's current signing key, so an
upstream trusts it only after checking the signature against Keel's JWKS — a bare header
anyone could send would be worthless (the proxy also strips any ``Keel-Identity`` a client
sent). The token is deliberately *not* an access token: its JOSE ``typ`` is
``keel-identity+jwt``, so an upstream cannot mistake it for a bearer token to call others with
(``TokenVerifier`` insists on ``at+jwt``), and an access token cannot pose as an identity.

Claims use the access tokens' names, so :meth:`Principal.from_claims` reads both alike:
``iss``, ``aud`` (the route's upstream audience, e.g. ``gateway:<pool>``), ``sub``, ``tid``
(tenant), ``typ`` (principal type: user / service), ``cred`` (how the caller authenticated:
``jwt`` / ``api_key``), ``roles``, ``permissions``, ``scope``, ``client_id`` when known,
``iat``/``nbf``, ``exp`` (60 s, never past the caller's own token) and ``jti``.

Decisions:

- ``permissions`` are always included. The upstream's ``require_permission`` needs them, and
  the caller's access token already carried the same list in a header of the same request.
- Tokens are reused (:class:`IdentityTokenCache`) until 10 s before they expire: one
  signature per caller and audience per ~50 s instead of one per request. So by default the
  token is not bound to one request (``rid``): it binds a caller to an audience for a minute,
  and whoever could replay it within that minute sits between gateway and upstream and sees
  the traffic anyway. :func:`identity_claims` takes ``request_id`` for a route that wants
  the binding, at the cost of a signature per request.
- The signer is the server's (Keel's private keys never leave it); :func:`sign_identity` is
  the one place that sets the header, so the gateway and the tests sign alike.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keel_client.auth import DEFAULT_ALGORITHMS, InvalidToken, Principal, TokenVerifier
from keel_client.auth._verifier import JWKSFetcher

__all__ = [
    "DEFAULT_IDENTITY_TTL",
    "IDENTITY_HEADER",
    "IDENTITY_TOKEN_TYPE",
    "IdentityTokenCache",
    "IdentityVerifier",
    "InvalidIdentity",
    "identity_claims",
    "sign_identity",
]

#: The request header carrying the signed identity (lower case, as ASGI spells names).
IDENTITY_HEADER = "keel-identity"
#: The JOSE ``typ`` of an identity token (RFC 8725 §3.11: explicit typing).
IDENTITY_TOKEN_TYPE = "keel-identity+jwt"  # noqa: S105 - a media type, not a secret
#: Seconds an identity token lives.
DEFAULT_IDENTITY_TTL = 60
#: Seconds of clock skew tolerated between gateway and upstream.
DEFAULT_LEEWAY = 5.0

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
_CREDENTIALS = frozenset({"jwt", "api_key"})


class InvalidIdentity(InvalidToken):
    """The ``Keel-Identity`` header must be refused; ``code`` says why (as ``InvalidToken``'s).

    Codes: ``malformed``, ``algorithm_not_allowed``, ``bad_type``, ``unknown_key``,
    ``bad_signature``, ``expired``, ``not_yet_valid``, ``bad_issuer``, ``bad_audience``.
    """


def identity_claims(
    principal: Principal,
    *,
    issuer: str,
    audience: str,
    now: float | None = None,
    ttl: int = DEFAULT_IDENTITY_TTL,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The claims of an identity token for ``principal``, meant for ``audience``.

    Example::

        claims = identity_claims(principal, issuer=KEEL_URL, audience="gateway:orders")
    """
    issued = int(time.time() if now is None else now)
    expires = issued + ttl
    if principal.expires_at is not None:
        # Never vouch for the caller longer than its own credential does.
        expires = min(expires, principal.expires_at)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": principal.subject,
        "tid": principal.tenant_id,
        "typ": principal.principal_type,
        "cred": principal.credential,
        "roles": sorted(principal.roles),
        "permissions": sorted(principal.permissions),
        "scope": " ".join(sorted(principal.scopes)),
        "iat": issued,
        "nbf": issued,
        "exp": expires,
        "jti": uuid.uuid4().hex,
    }
    client_id = principal.claims.get("client_id")
    if isinstance(client_id, str):
        claims["client_id"] = client_id
    if request_id is not None:
        claims["rid"] = request_id
    return claims


def sign_identity(
    claims: Mapping[str, Any], *, private_key: PrivateKey, algorithm: str, kid: str
) -> str:
    """The compact JWS of ``claims``, typed as an identity token and naming its key."""
    return jwt.encode(
        dict(claims),
        private_key,
        algorithm=algorithm,
        headers={"kid": kid, "typ": IDENTITY_TOKEN_TYPE},
    )


class IdentityVerifier:
    """Checks a ``Keel-Identity`` header on the upstream side and returns the caller.

    Example::

        identities = IdentityVerifier.from_verifier(token_verifier, audience="gateway:orders")
        principal = await identities.verify(request.headers["keel-identity"])

    Signature (against Keel's JWKS, asymmetric algorithms only), ``typ``, ``iss``, ``aud``,
    ``exp`` and ``nbf`` are checked with ``leeway_seconds`` of skew. The JWKS fetching, key
    refresh on an unknown ``kid`` and the verified-token cache are ``TokenVerifier``'s.
    """

    def __init__(
        self,
        fetch_jwks: JWKSFetcher,
        *,
        issuer: str,
        audience: str | Collection[str],
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway_seconds: float = DEFAULT_LEEWAY,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
    ) -> None:
        self._tokens = TokenVerifier(
            fetch_jwks,
            issuer=issuer,
            audience=audience,
            algorithms=algorithms,
            leeway_seconds=leeway_seconds,
            clock=clock,
            cache_size=cache_size,
            token_type=IDENTITY_TOKEN_TYPE,
        )

    @classmethod
    def from_verifier(
        cls, verifier: TokenVerifier, *, audience: str | Collection[str], **kwargs: Any
    ) -> IdentityVerifier:
        """An identity verifier using the JWKS source and issuer of a service's verifier."""
        if verifier.issuer is None:
            raise ValueError("the token verifier checks no issuer; pass issuer= explicitly")
        kwargs.setdefault("algorithms", verifier.algorithms)
        # The same fetcher (OIDC discovery, then jwks_uri), so both follow Keel's keys alike.
        return cls(verifier._fetch_jwks, issuer=verifier.issuer, audience=audience, **kwargs)

    @classmethod
    def from_url(
        cls, base_url: str, *, audience: str | Collection[str], **kwargs: Any
    ) -> IdentityVerifier:
        """An identity verifier for the Keel at ``base_url`` (its issuer), via OIDC discovery."""
        return cls.from_verifier(
            TokenVerifier.from_url(base_url, audience=None), audience=audience, **kwargs
        )

    async def verify(self, header_value: str) -> Principal:
        """The caller the header stands for; :class:`InvalidIdentity` when it must be refused."""
        try:
            principal = await self._tokens.verify(header_value.strip())
        except InvalidIdentity:
            raise
        except InvalidToken as refused:
            raise InvalidIdentity(refused.code, f"Keel-Identity refused: {refused}") from None
        credential = principal.claims.get("cred")
        if credential in _CREDENTIALS and credential != principal.credential:
            principal = dataclasses.replace(principal, credential=str(credential))
        return principal

    def load_jwks(self, document: Mapping[str, Any]) -> None:
        """Replace the known keys (a service that already holds Keel's JWKS)."""
        self._tokens.load_jwks(document)


_CacheKey = tuple[str, str, str, str, str, frozenset[str], frozenset[str], frozenset[str], object]


class IdentityTokenCache:
    """Reuses minted identity tokens until ``reuse_margin`` seconds before they expire.

    Example::

        token = identities.get(principal, audience)
        if token is None:
            claims = identity_claims(principal, issuer=issuer, audience=audience)
            token = sign_identity(claims, private_key=key.private_key, algorithm=key.algorithm,
                                  kid=key.kid)
            identities.put(principal, audience, token, claims["exp"])

    Keyed by the audience and everything the token says about the caller (subject, tenant,
    type, credential, roles, permissions, scopes, client): a role change yields a new token at
    once. Bounded, least recently used first out.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        reuse_margin: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_entries = max_entries
        self.reuse_margin = reuse_margin
        self._clock = clock
        self._tokens: OrderedDict[_CacheKey, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, principal: Principal, audience: str) -> str | None:
        """A cached token still good for at least ``reuse_margin`` seconds, or ``None``."""
        key = _cache_key(principal, audience)
        cached = self._tokens.get(key)
        if cached is None:
            return None
        token, expires = cached
        if self._clock() >= expires - self.reuse_margin:
            del self._tokens[key]
            return None
        self._tokens.move_to_end(key)
        return token

    def put(self, principal: Principal, audience: str, token: str, expires_at: float) -> None:
        key = _cache_key(principal, audience)
        self._tokens[key] = (token, expires_at)
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.max_entries:
            self._tokens.popitem(last=False)

    def clear(self) -> None:
        """Forget every token (after a signing key was revoked rather than rotated)."""
        self._tokens.clear()


def _cache_key(principal: Principal, audience: str) -> _CacheKey:
    # Frozensets cache their hash, so a hit costs a tuple hash and equality checks.
    return (
        audience,
        principal.subject,
        principal.tenant_id,
        principal.principal_type,
        principal.credential,
        principal.roles,
        principal.permissions,
        principal.scopes,
        principal.claims.get("client_id"),
    )
