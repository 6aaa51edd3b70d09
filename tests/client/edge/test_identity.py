"""The signed ``Keel-Identity`` header: what the gateway mints, what an upstream accepts, and
the forgeries it refuses.

The keys are generated here and their JWKS is published by a real HTTP server on 127.0.0.1
with OIDC discovery, the way Keel publishes its own, so the verifier fetches keys exactly as
in production.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from keel_client.auth import InvalidToken, Principal, TokenVerifier
from keel_client.edge._identity import (
    IDENTITY_HEADER,
    IDENTITY_TOKEN_TYPE,
    IdentityTokenCache,
    IdentityVerifier,
    InvalidIdentity,
    PrivateKey,
    identity_claims,
    sign_identity,
)

AUDIENCE = "gateway:orders"
NOW = 1_800_000_000.0


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: PrivateKey

    def public_jwk(self) -> dict[str, Any]:
        public_key = self.private_key.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
        else:
            assert isinstance(public_key, ed25519.Ed25519PublicKey)
            jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any]) -> str:
        return sign_identity(
            claims, private_key=self.private_key, algorithm=self.algorithm, kid=self.kid
        )


def new_key(algorithm: str, kid: str) -> SigningKey:
    if algorithm == "EdDSA":
        return SigningKey(kid, algorithm, ed25519.Ed25519PrivateKey.generate())
    return SigningKey(kid, algorithm, ec.generate_private_key(ec.SECP256R1()))


class KeysServer:
    """Keel's key publication, and nothing else: OIDC discovery and a JWKS document."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self.jwks_fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    document: dict[str, Any] = {
                        "issuer": server.url,
                        "jwks_uri": f"{server.url}/.well-known/jwks.json",
                    }
                elif self.path == "/.well-known/jwks.json":
                    server.jwks_fetches += 1
                    document = {"keys": [key.public_jwk() for key in server.keys]}
                else:
                    self.send_error(404)
                    return
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        # A short poll keeps shutdown() (which waits for the next poll) quick per test.
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture(params=["EdDSA", "ES256"])
def key(request: pytest.FixtureRequest) -> SigningKey:
    return new_key(request.param, kid=f"keel-{request.param}")


@pytest.fixture
def keel(key: SigningKey) -> Iterator[KeysServer]:
    server = KeysServer([key])
    yield server
    server.stop()


@pytest.fixture
def clock() -> list[float]:
    return [NOW]


@pytest.fixture
def verifier(keel: KeysServer, clock: list[float]) -> IdentityVerifier:
    return IdentityVerifier.from_url(keel.url, audience=AUDIENCE, clock=lambda: clock[0])


def principal(**changes: Any) -> Principal:
    fields: dict[str, Any] = {
        "subject": "svc-billing",
        "tenant_id": "tenant-a",
        "principal_type": "service",
        "roles": frozenset({"reader"}),
        "permissions": frozenset({"orders:order:read", "orders:item:read"}),
        "scopes": frozenset({"orders:order:read"}),
        "credential": "api_key",
        "claims": {"client_id": "billing-app"},
    }
    return Principal(**{**fields, **changes})


def claims_for(keel: KeysServer, **overrides: Any) -> dict[str, Any]:
    claims = identity_claims(principal(), issuer=keel.url, audience=AUDIENCE, now=NOW)
    return {**claims, **overrides}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def compact(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


# -- minting ------------------------------------------------------------------------------------


def test_header_name_is_lower_case_keel_identity() -> None:
    assert IDENTITY_HEADER == "keel-identity"


def test_claims_carry_the_caller_for_one_minute() -> None:
    claims = identity_claims(principal(), issuer="https://keel", audience=AUDIENCE, now=NOW)
    assert claims["iss"] == "https://keel"
    assert claims["aud"] == AUDIENCE
    assert (claims["sub"], claims["tid"], claims["typ"]) == ("svc-billing", "tenant-a", "service")
    assert claims["cred"] == "api_key"
    assert claims["roles"] == ["reader"]
    assert claims["permissions"] == ["orders:item:read", "orders:order:read"]
    assert claims["client_id"] == "billing-app"
    assert claims["exp"] - claims["iat"] == 60
    assert "rid" not in claims


def test_claims_never_outlive_the_callers_own_token() -> None:
    caller = principal(claims={"exp": int(NOW) + 20})
    claims = identity_claims(caller, issuer="https://keel", audience=AUDIENCE, now=NOW)
    assert claims["exp"] == int(NOW) + 20


def test_request_id_binds_the_token_to_one_request_when_asked() -> None:
    claims = identity_claims(
        principal(), issuer="https://keel", audience=AUDIENCE, now=NOW, request_id="req-1"
    )
    assert claims["rid"] == "req-1"


def test_signed_header_names_key_and_identity_type(key: SigningKey) -> None:
    token = key.sign(identity_claims(principal(), issuer="i", audience=AUDIENCE, now=NOW))
    header = jwt.get_unverified_header(token)
    assert header == {"alg": key.algorithm, "kid": key.kid, "typ": IDENTITY_TOKEN_TYPE}


# -- verifying ----------------------------------------------------------------------------------


async def test_round_trip_gives_back_the_caller(
    key: SigningKey, keel: KeysServer, verifier: IdentityVerifier
) -> None:
    caller = await verifier.verify(key.sign(claims_for(keel)))
    expected = principal()
    assert caller.subject == expected.subject
    assert caller.tenant_id == expected.tenant_id
    assert caller.principal_type == expected.principal_type
    assert caller.roles == expected.roles
    assert caller.permissions == expected.permissions
    assert caller.scopes == expected.scopes
    assert caller.credential == "api_key"
    assert caller.has_permission("orders:order:read")
    assert keel.jwks_fetches == 1
    await verifier.verify(key.sign(claims_for(keel, jti="another")))
    assert keel.jwks_fetches == 1  # keys are kept, not fetched per token


async def test_verifier_built_from_a_services_token_verifier_shares_its_key_source(
    key: SigningKey, keel: KeysServer
) -> None:
    tokens = TokenVerifier.from_url(keel.url, audience="orders")
    identities = IdentityVerifier.from_verifier(tokens, audience=AUDIENCE)
    caller = await identities.verify(key.sign(claims_for(keel, exp=2**40, iat=0, nbf=0)))
    assert caller.subject == "svc-billing"


async def test_small_clock_skew_is_tolerated(
    key: SigningKey, keel: KeysServer, verifier: IdentityVerifier, clock: list[float]
) -> None:
    clock[0] = NOW + 60 + 4  # expired 4 s ago, within the 5 s leeway
    assert (await verifier.verify(key.sign(claims_for(keel)))).subject == "svc-billing"


class TestForgeries:
    async def refused(self, verifier: IdentityVerifier, token: str) -> str:
        with pytest.raises(InvalidIdentity) as raised:
            await verifier.verify(token)
        return raised.value.code

    async def test_expired(
        self, key: SigningKey, keel: KeysServer, verifier: IdentityVerifier, clock: list[float]
    ) -> None:
        clock[0] = NOW + 60 + 6
        assert await self.refused(verifier, key.sign(claims_for(keel))) == "expired"

    async def test_wrong_audience(
        self, key: SigningKey, keel: KeysServer, verifier: IdentityVerifier
    ) -> None:
        token = key.sign(claims_for(keel, aud="gateway:payments"))
        assert await self.refused(verifier, token) == "bad_audience"

    async def test_wrong_issuer(
        self, key: SigningKey, keel: KeysServer, verifier: IdentityVerifier
    ) -> None:
        token = key.sign(claims_for(keel, iss="https://evil.example"))
        assert await self.refused(verifier, token) == "bad_issuer"

    async def test_signed_by_another_key_under_the_same_kid(
        self, key: SigningKey, keel: KeysServer, verifier: IdentityVerifier
    ) -> None:
        impostor = new_key(key.algorithm, kid=key.kid)
        assert await self.refused(verifier, impostor.sign(claims_for(keel))) == "bad_signature"

    async def test_signed_by_an_unpublished_key(
        self, key: SigningKey, keel: KeysServer, verifier: IdentityVerifier
    ) -> None:
        impostor = new_key(key.algorithm, kid="attacker")
        assert await self.refused(verifier, impostor.sign(claims_for(keel))) == "unknown_key"

    async def test_unsigned_alg_none(
        self, key: SigningKey, keel: KeysServer, verifier: IdentityVerifier
    ) -> None:
        header = {"alg": "none", "kid": key.kid, "typ": IDENTITY_TOKEN_TYPE}
        token = compact(header, claims_for(keel))
        assert await self.refused(verifier, token) == "algorithm_not_allowed"

    async def test_hs256_with_the_public_key_as_secret(
        self, key: SigningKey, keel: KeysServer, verifier: IdentityVerifier
    ) -> None:
        # The classic confusion attack: HMAC keyed with what the verifier publishes.
        header = {"alg": "HS256", "kid": key.kid, "typ": IDENTITY_TOKEN_TYPE}
        unsigned = compact(header, claims_for(keel)).rsplit(".", 1)[0]
        for secret in (key.public_pem(), json.dumps(key.public_jwk()).encode()):
            signature = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
            token = f"{unsigned}.{b64(signature)}"
            assert await self.refused(verifier, token) == "algorithm_not_allowed"

    async def test_an_access_token_is_not_an_identity(
        self, key: SigningKey, keel: KeysServer, verifier: IdentityVerifier
    ) -> None:
        token = jwt.encode(
            claims_for(keel),
            key.private_key,
            algorithm=key.algorithm,
            headers={"kid": key.kid, "typ": "at+jwt"},
        )
        assert await self.refused(verifier, token) == "bad_type"

    async def test_an_identity_is_not_an_access_token(
        self, key: SigningKey, keel: KeysServer
    ) -> None:
        tokens = TokenVerifier.from_url(keel.url, audience=AUDIENCE, clock=lambda: NOW)
        with pytest.raises(InvalidToken) as raised:
            await tokens.verify(key.sign(claims_for(keel)))
        assert raised.value.code == "bad_type"

    async def test_tampered_claims(
        self, key: SigningKey, keel: KeysServer, verifier: IdentityVerifier
    ) -> None:
        header, _, signature = key.sign(claims_for(keel)).split(".")
        promoted = claims_for(keel, roles=["admin"])
        payload = b64(json.dumps(promoted).encode())
        assert await self.refused(verifier, f"{header}.{payload}.{signature}") == "bad_signature"

    @pytest.mark.parametrize("value", ["", "svc-billing", "a.b", "a.b.c.d", "!!.!!.!!"])
    async def test_garbage(self, verifier: IdentityVerifier, value: str) -> None:
        assert await self.refused(verifier, value) == "malformed"


# -- reusing minted tokens ----------------------------------------------------------------------


class TestIdentityTokenCache:
    def test_token_is_reused_until_ten_seconds_before_expiry(self) -> None:
        clock = [NOW]
        cache = IdentityTokenCache(clock=lambda: clock[0])
        assert cache.get(principal(), AUDIENCE) is None
        cache.put(principal(), AUDIENCE, "token-1", NOW + 60)
        clock[0] = NOW + 49
        assert cache.get(principal(), AUDIENCE) == "token-1"
        clock[0] = NOW + 50
        assert cache.get(principal(), AUDIENCE) is None
        assert len(cache) == 0

    def test_changed_permissions_or_audience_miss(self) -> None:
        cache = IdentityTokenCache(clock=lambda: NOW)
        cache.put(principal(), AUDIENCE, "token-1", NOW + 60)
        promoted = principal(permissions=frozenset({"orders:*"}))
        assert cache.get(promoted, AUDIENCE) is None
        assert cache.get(principal(), "gateway:payments") is None
        assert cache.get(principal(tenant_id="tenant-b"), AUDIENCE) is None
        assert cache.get(principal(claims={"client_id": "billing-app"}), AUDIENCE) == "token-1"

    def test_entries_are_bounded_least_recently_used_first(self) -> None:
        cache = IdentityTokenCache(max_entries=2, clock=lambda: NOW)
        for name in ("a", "b"):
            cache.put(principal(subject=name), AUDIENCE, name, NOW + 60)
        cache.get(principal(subject="a"), AUDIENCE)
        cache.put(principal(subject="c"), AUDIENCE, "c", NOW + 60)
        assert cache.get(principal(subject="b"), AUDIENCE) is None
        assert cache.get(principal(subject="a"), AUDIENCE) == "a"
        assert cache.get(principal(subject="c"), AUDIENCE) == "c"

    async def test_cached_token_still_verifies(
        self, key: SigningKey, keel: KeysServer, verifier: IdentityVerifier
    ) -> None:
        cache = IdentityTokenCache(clock=lambda: NOW)
        claims = claims_for(keel)
        cache.put(principal(), AUDIENCE, key.sign(claims), claims["exp"])
        token = cache.get(principal(), AUDIENCE)
        assert token is not None
        assert (await verifier.verify(token)).subject == "svc-billing"
