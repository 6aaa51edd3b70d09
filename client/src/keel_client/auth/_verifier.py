"""Local JWT verification against published keys: no network hop per request.

:class:`TokenVerifier` keeps the JWKS in memory, refetches it when a token names an unknown
``kid`` (at most once per ``min_refresh_interval``), accepts only an allow-list of
asymmetric algorithms, checks ``iss``/``aud``/``exp``/``nbf`` with a small leeway, and caches
verified tokens (bounded, never past their ``exp``) so a token seen again costs a dictionary
lookup.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from keel_client.auth._principal import Principal

#: Asymmetric algorithms only: an HMAC algorithm would let a public key forge tokens.
DEFAULT_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"}
)

JWKSFetcher = Callable[[], Awaitable[Mapping[str, Any]]]
SignatureCheck = Callable[[bytes, bytes], bool]

_RSA_PKCS1_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "RS256": hashes.SHA256,
    "RS384": hashes.SHA384,
    "RS512": hashes.SHA512,
}
#: Distinct token headers remembered (a signing key's tokens all share one header).
_HEADER_CACHE_SIZE = 256
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


class InvalidToken(Exception):
    """The token is not acceptable; ``code`` says why (never echo the token itself)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _Key:
    kid: str
    algorithm: str
    jwk: PyJWK
    #: ``(signing input, signature) -> bool``, bound once per key.
    verify_signature: SignatureCheck


def _signature_check(algorithm: str, jwk: PyJWK) -> SignatureCheck:
    public_key = jwk.key
    hash_class = _RSA_PKCS1_HASHES.get(algorithm)
    if hash_class is not None and isinstance(public_key, rsa.RSAPublicKey):
        # Measured: calling cryptography directly with the padding and hash built once takes
        # a few microseconds off every first-seen RS* token (benchmarks/bench_auth.py).
        pkcs1, hash_algorithm = padding.PKCS1v15(), hash_class()

        def verify_rsa(signing_input: bytes, signature: bytes) -> bool:
            try:
                public_key.verify(signature, signing_input, pkcs1, hash_algorithm)
            except InvalidSignature:
                return False
            return True

        return verify_rsa
    algorithm_object = jwk.Algorithm

    def verify_other(signing_input: bytes, signature: bytes) -> bool:
        return bool(algorithm_object.verify(signing_input, public_key, signature))

    return verify_other


@dataclass(frozen=True)
class _CachedToken:
    principal: Principal
    kid: str
    not_before: float
    expires: float


def _b64decode(segment: str) -> bytes:
    # base64.urlsafe_b64decode's semantics without its per-call argument normalisation.
    data = segment.encode("ascii").translate(_URLSAFE_TO_STANDARD)
    return binascii.a2b_base64(data + b"=" * (-len(data) % 4))


#: The JWT ``typ`` header of an access token (RFC 9068), which Keel sets and checks.
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret


def _media_type(value: object) -> str | None:
    """A ``typ`` header compared as RFC 7515 says: case-insensitive, ``application/`` implied."""
    if not isinstance(value, str):
        return None
    value = value.lower()
    return value.removeprefix("application/")


class TokenVerifier:
    """Verifies Keel access tokens locally.

    Example::

        verifier = TokenVerifier.from_url("https://keel.internal", audience="keel")
        principal = await verifier.verify(token)   # raises InvalidToken

    ``fetch_jwks`` is any coroutine returning a JWKS document; :meth:`from_url` builds one that
    uses OIDC discovery's ``jwks_uri``. Only tokens whose ``typ`` header is ``at+jwt`` are access
    tokens (RFC 9068); ``token_type=None`` turns that check off.
    """

    def __init__(
        self,
        fetch_jwks: JWKSFetcher,
        *,
        issuer: str | None,
        audience: str | Collection[str] | None,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway_seconds: float = 10.0,
        min_refresh_interval: float = 30.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        token_type: str | None = ACCESS_TOKEN_TYPE,
    ) -> None:
        unsupported = set(algorithms) - SUPPORTED_ALGORITHMS
        if unsupported:
            raise ValueError(f"unsupported or unsafe algorithms: {sorted(unsupported)}")
        self._fetch_jwks = fetch_jwks
        self.issuer = issuer
        self.audiences = (
            None
            if audience is None
            else frozenset([audience] if isinstance(audience, str) else audience)
        )
        self.algorithms = frozenset(algorithms)
        self.token_type = token_type
        self.leeway = leeway_seconds
        self.min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._keys: dict[str, _Key] = {}
        self._last_refresh = float("-inf")
        self._refresh_lock = asyncio.Lock()
        self._cache: OrderedDict[str, _CachedToken] = OrderedDict()
        self._cache_size = cache_size
        self._headers: dict[str, tuple[str, str]] = {}

    @classmethod
    def from_url(
        cls,
        base_url: str,
        *,
        audience: str | Collection[str] | None = "keel",
        issuer: str | None = None,
        **kwargs: Any,
    ) -> TokenVerifier:
        """A verifier for the Keel at ``base_url``, finding JWKS through OIDC discovery."""
        import httpx

        base = base_url.rstrip("/")

        async def fetch() -> Mapping[str, Any]:
            async with httpx.AsyncClient(timeout=5.0) as http:
                discovery = await http.get(f"{base}/.well-known/openid-configuration")
                discovery.raise_for_status()
                jwks = await http.get(discovery.json()["jwks_uri"])
                jwks.raise_for_status()
                document: Mapping[str, Any] = jwks.json()
                return document

        return cls(
            fetch, issuer=issuer if issuer is not None else base, audience=audience, **kwargs
        )

    # -- keys ---------------------------------------------------------------------------------

    def load_jwks(self, document: Mapping[str, Any]) -> None:
        """Replace the known keys with those of a JWKS document."""
        keys: dict[str, _Key] = {}
        for entry in document.get("keys", []):
            if not isinstance(entry, Mapping):
                continue
            kid, algorithm = entry.get("kid"), entry.get("alg")
            if not isinstance(kid, str) or algorithm not in self.algorithms:
                continue
            if entry.get("use", "sig") != "sig":
                continue
            try:
                jwk = PyJWK(dict(entry), algorithm=algorithm)
            except PyJWKError:
                continue
            keys[kid] = _Key(kid, str(algorithm), jwk, _signature_check(str(algorithm), jwk))
        self._keys = keys
        # Tokens signed by a key that left the set (a compromised key) stop verifying now.
        for token, cached in list(self._cache.items()):
            if cached.kid not in keys:
                del self._cache[token]

    async def refresh(self, *, force: bool = False) -> bool:
        """Refetch the JWKS unless it was fetched less than ``min_refresh_interval`` ago."""
        async with self._refresh_lock:
            now = self._clock()
            if not force and now - self._last_refresh < self.min_refresh_interval:
                return False
            self._last_refresh = now
            self.load_jwks(await self._fetch_jwks())
            return True

    async def _key_for(self, kid: str) -> _Key:
        key = self._keys.get(kid)
        if key is None:
            await self.refresh()
            key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("unknown_key", "the token is signed by an unknown key")
        return key

    # -- verification -------------------------------------------------------------------------

    async def verify(self, token: str) -> Principal:
        """The caller a token stands for; :class:`InvalidToken` when it must be refused."""
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None:
            if now < cached.expires + self.leeway and now + self.leeway >= cached.not_before:
                return cached.principal
            del self._cache[token]
        algorithm, kid, payload, signing_input, signature = self._split(token)
        key = self._keys.get(kid) or await self._key_for(kid)
        if key.algorithm != algorithm:
            raise InvalidToken("algorithm_not_allowed", "the token's algorithm is not its key's")
        if not key.verify_signature(signing_input, signature):
            raise InvalidToken("bad_signature", "the token's signature does not verify")
        claims = self._parse_claims(payload)
        principal = self._check_claims(claims, now)
        self._remember(token, principal, kid, claims)
        return principal

    def _split(self, token: str) -> tuple[str, str, bytes, bytes, bytes]:
        """``(alg, kid, payload, signing input, signature)`` of a compact JWS."""
        if not isinstance(token, str) or token.count(".") != 2 or len(token) > 16_384:
            raise InvalidToken("malformed", "the token is not a compact JWS")
        header_segment, payload_segment, signature_segment = token.split(".")
        algorithm_and_kid = self._headers.get(header_segment)
        try:
            if algorithm_and_kid is None:
                algorithm_and_kid = self._parse_header(header_segment)
            payload = _b64decode(payload_segment)
            signature = _b64decode(signature_segment)
        except (binascii.Error, ValueError):
            raise InvalidToken("malformed", "the token is not a compact JWS") from None
        signing_input = token[: len(header_segment) + 1 + len(payload_segment)].encode()
        return (*algorithm_and_kid, payload, signing_input, signature)

    def _parse_header(self, segment: str) -> tuple[str, str]:
        header = json.loads(_b64decode(segment))
        if not isinstance(header, dict):
            raise InvalidToken("malformed", "the token header is not an object")
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise InvalidToken("algorithm_not_allowed", "the token's algorithm is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("malformed", "the token names no key")
        if self.token_type is not None and _media_type(header.get("typ")) != self.token_type:
            # RFC 9068 section 4: an ID token or any other JWT signed by the same key is not
            # an access token, however valid its signature.
            raise InvalidToken("bad_type", f"the token is not of type {self.token_type}")
        if len(self._headers) >= _HEADER_CACHE_SIZE:
            self._headers.clear()
        # Only accepted headers are remembered, so a cached one needs no check again.
        self._headers[segment] = (algorithm, kid)
        return algorithm, kid

    @staticmethod
    def _parse_claims(payload: bytes) -> dict[str, Any]:
        try:
            claims = json.loads(payload.decode())
        except ValueError:
            raise InvalidToken("malformed", "the token payload is not JSON") from None
        if not isinstance(claims, dict):
            raise InvalidToken("malformed", "the token payload is not an object")
        return claims

    def _check_claims(self, claims: dict[str, Any], now: float) -> Principal:
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise InvalidToken("malformed", "the token has no expiry")
        if now >= exp + self.leeway:
            raise InvalidToken("expired", "the token has expired")
        nbf = claims.get("nbf", claims.get("iat"))
        if isinstance(nbf, int | float) and now + self.leeway < nbf:
            raise InvalidToken("not_yet_valid", "the token is not valid yet")
        if self.issuer is not None and claims.get("iss") != self.issuer:
            raise InvalidToken("bad_issuer", "the token was issued by someone else")
        if self.audiences is not None:
            audience = claims.get("aud")
            audiences = {audience} if isinstance(audience, str) else set(audience or [])
            if not audiences & self.audiences:
                raise InvalidToken("bad_audience", "the token is meant for someone else")
        if not isinstance(claims.get("sub"), str):
            raise InvalidToken("malformed", "the token has no subject")
        return Principal.from_claims(claims)

    def _remember(self, token: str, principal: Principal, kid: str, claims: dict[str, Any]) -> None:
        nbf = claims.get("nbf", claims.get("iat", 0))
        self._cache[token] = _CachedToken(
            principal,
            kid,
            float(nbf) if isinstance(nbf, int | float) else 0.0,
            float(claims["exp"]),
        )
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def forget(self, token: str) -> None:
        """Drop a token from the verified cache (after learning it was revoked)."""
        self._cache.pop(token, None)
