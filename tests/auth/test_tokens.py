"""Access tokens against the SDK's TokenVerifier (fed from the app's JWKS) and the API.

Forged tokens are signed with the app's real active key where a valid signature is needed,
so each test refuses a token for exactly the reason it names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from sqlalchemy import select

from keel.auth.models import SigningKey, SigningKeyStatus
from keel.auth.service.keys import LoadedKey, SigningKeys
from keel.core.crypto import DecryptionError
from keel.core.db import utcnow
from keel.core.tenancy import bind_tenant
from keel.settings import AuthSettings, Settings
from keel_client.auth import InvalidToken, TokenVerifier
from tests.support.apps import running, unit_of_work, with_auth
from tests.support.tenants import TenantAdmin, auth_service, bearer, make_tenant_admin

ISSUER = "http://keel.test"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _segment(value: Mapping[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


class JWKSFetcher:
    """Fetches the app's JWKS through the test client and counts the fetches."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.count = 0

    async def __call__(self) -> Mapping[str, Any]:
        self.count += 1
        response = await self.client.get("/.well-known/jwks.json")
        response.raise_for_status()
        document: Mapping[str, Any] = response.json()
        return document


def _verifier(client: httpx.AsyncClient, **options: Any) -> tuple[TokenVerifier, JWKSFetcher]:
    fetcher = JWKSFetcher(client)
    options.setdefault("audience", "keel")
    return TokenVerifier(fetcher, issuer=ISSUER, **options), fetcher


async def _active_key(app: FastAPI) -> LoadedKey:
    async with unit_of_work(app) as session:
        return await auth_service(app).keys.active_key(session)


async def _issue(app: FastAPI, admin: TenantAdmin, **options: Any) -> str:
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        token, _ = await auth_service(app).issue_access_token(
            session,
            tenant_id=admin.tenant_id,
            principal_type="user",
            principal_id=admin.user_id,
            **options,
        )
    return token


def _claims(admin: TenantAdmin, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": admin.user_id,
        "aud": "keel",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": f"test-{now}-{id(changes)}",
        "tid": admin.tenant_id,
        "typ": "user",
        "roles": ["admin"],
        "permissions": ["*"],
    }
    claims.update(changes)
    return claims


def _sign(key: LoadedKey, claims: Mapping[str, Any], token_type: str = "at+jwt") -> str:  # noqa: S107
    return jwt.encode(
        dict(claims),
        key.private_key,
        algorithm=key.algorithm,
        headers={"kid": key.kid, "typ": token_type},
    )


async def _refused(
    verifier: TokenVerifier, client: httpx.AsyncClient, token: str, code: str
) -> None:
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(token)
    assert refused.value.code == code
    assert (await client.get("/auth/v1/me", headers=bearer(token))).status_code == 401


async def test_valid_token_verifies_in_sdk_and_api(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    verifier, _ = _verifier(client)
    token = await _issue(app, admin)

    principal = await verifier.verify(token)

    assert principal.subject == admin.user_id
    assert principal.tenant_id == admin.tenant_id
    assert principal.has_permission("secrets:secret:read")
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert (await client.get("/auth/v1/me", headers=bearer(token))).status_code == 200


async def test_alg_none_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    key = await _active_key(app)
    verifier, _ = _verifier(client)
    token = f"{_segment({'alg': 'none', 'kid': key.kid})}.{_segment(_claims(admin))}."
    await _refused(verifier, client, token, "algorithm_not_allowed")
    unsigned_none = f"{_segment({'alg': 'None', 'kid': key.kid})}.{_segment(_claims(admin))}."
    await _refused(verifier, client, unsigned_none, "algorithm_not_allowed")


async def test_hs256_signed_with_the_public_key_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    key = await _active_key(app)
    verifier, _ = _verifier(client)
    jwks = (await client.get("/.well-known/jwks.json")).json()
    [jwk] = [entry for entry in jwks["keys"] if entry["kid"] == key.kid]
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (public_pem, json.dumps(jwk).encode()):
        signing_input = f"{_segment({'alg': 'HS256', 'kid': key.kid})}.{_segment(_claims(admin))}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        await _refused(
            verifier, client, f"{signing_input}.{_b64(signature)}", "algorithm_not_allowed"
        )


async def test_tampered_payload_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    verifier, _ = _verifier(client)
    token = await _issue(app, admin, scope="auth:user:read")
    header, _payload, signature = token.split(".")
    tampered = f"{header}.{_segment(_claims(admin, permissions=['*']))}.{signature}"
    await _refused(verifier, client, tampered, "bad_signature")


async def test_expired_token_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    key = await _active_key(app)
    verifier, _ = _verifier(client)
    now = int(time.time())
    token = _sign(key, _claims(admin, iat=now - 3600, nbf=now - 3600, exp=now - 60))
    await _refused(verifier, client, token, "expired")


async def test_token_not_yet_valid_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    key = await _active_key(app)
    verifier, _ = _verifier(client)
    now = int(time.time())
    token = _sign(key, _claims(admin, iat=now, nbf=now + 600, exp=now + 900))
    await _refused(verifier, client, token, "not_yet_valid")


async def test_wrong_audience_is_refused_by_a_verifier_configured_with_one(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    verifier, _ = _verifier(client, audience="billing")
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(await _issue(app, admin))
    assert refused.value.code == "bad_audience"
    assert (await verifier.verify(await _issue(app, admin, audience="billing"))).subject


async def test_wrong_issuer_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    key = await _active_key(app)
    verifier, _ = _verifier(client)
    token = _sign(key, _claims(admin, iss="https://evil.example"))
    await _refused(verifier, client, token, "bad_issuer")


async def test_unknown_kid_refetches_jwks_once_within_the_interval(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    key = await _active_key(app)
    now = [time.time()]
    verifier, fetcher = _verifier(client, min_refresh_interval=60, clock=lambda: now[0])
    await verifier.verify(await _issue(app, admin))
    assert fetcher.count == 1
    now[0] += 61  # the JWKS loaded for the first token is now due for a refresh

    for kid in ("unknown-1", "unknown-2", "unknown-1"):
        forged = jwt.encode(
            _claims(admin),
            key.private_key,
            algorithm=key.algorithm,
            headers={"kid": kid, "typ": "at+jwt"},
        )
        with pytest.raises(InvalidToken) as refused:
            await verifier.verify(forged)
        assert refused.value.code == "unknown_key"

    assert fetcher.count == 2


async def test_cached_verification_returns_same_principal_until_expiry(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    now = [time.time()]
    verifier, fetcher = _verifier(client, clock=lambda: now[0], leeway_seconds=10)
    token = await _issue(app, admin)

    first = await verifier.verify(token)
    second = await verifier.verify(token)

    assert second is first
    assert fetcher.count == 1
    now[0] += 900 + 11
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(token)
    assert refused.value.code == "expired"


async def _set_key_expiry(app: FastAPI, kid: str, expires_at: Any) -> None:
    async with unit_of_work(app) as session:
        row = await session.get(SigningKey, kid)
        assert row is not None
        row.expires_at = expires_at


async def _jwks_kids(client: httpx.AsyncClient) -> set[str]:
    return {key["kid"] for key in (await client.get("/.well-known/jwks.json")).json()["keys"]}


async def test_signing_key_rotation_keeps_old_tokens_and_publishes_before_signing(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    async with unit_of_work(app) as session:
        rows = {
            row.status: row.kid
            for row in await session.scalars(
                select(SigningKey).where(
                    SigningKey.status.in_([SigningKeyStatus.active, SigningKeyStatus.next])
                )
            )
        }
    old_kid, next_kid = rows[SigningKeyStatus.active], rows[SigningKeyStatus.next]
    assert {old_kid, next_kid} <= await _jwks_kids(client)
    old_token = await _issue(app, admin)
    verifier, _ = _verifier(client)
    await verifier.verify(old_token)

    # The keys sign every tenant's tokens: only the platform tenant rotates them.
    refused = await client.post("/auth/v1/signing-keys/rotate", headers=admin.headers)
    assert refused.status_code == 403
    assert await _jwks_kids(client) >= {old_kid, next_kid}
    platform_admin = await make_tenant_admin(app, "default")
    rotated = await client.post("/auth/v1/signing-keys/rotate", headers=platform_admin.headers)

    assert rotated.status_code == 200
    assert rotated.json()["active_kid"] == next_kid  # it was published before it signed
    new_token = await _issue(app, admin)
    assert jwt.get_unverified_header(new_token)["kid"] == next_kid
    kids = await _jwks_kids(client)
    assert {old_kid, next_kid} <= kids
    assert len(kids - {old_kid, next_kid}) >= 1  # a new next key is published
    await verifier.verify(new_token)
    fresh_verifier, _ = _verifier(client)
    assert (await fresh_verifier.verify(old_token)).subject == admin.user_id
    assert (await client.get("/auth/v1/me", headers=bearer(old_token))).status_code == 200

    # Once every token it signed has expired, the retired key leaves JWKS, and a verifier
    # holding tokens it signed in its cache stops accepting them.
    await _set_key_expiry(app, old_kid, utcnow() - timedelta(seconds=1))
    assert old_kid not in await _jwks_kids(client)
    await verifier.refresh(force=True)
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(old_token)
    assert refused.value.code == "unknown_key"
    assert (await verifier.verify(new_token)).subject == admin.user_id


async def test_retired_key_expires_one_token_lifetime_after_rotation(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    before = utcnow()
    auth = auth_service(app)
    async with unit_of_work(app) as session:
        old_kid = (await auth.keys.active_key(session)).kid
        await auth.rotate_signing_key(session)
    async with unit_of_work(app) as session:
        row = await session.get(SigningKey, old_kid)
        assert row is not None
        assert row.status == SigningKeyStatus.retired
        assert row.expires_at is not None
        lifetime = row.expires_at - before
    assert timedelta(seconds=900) < lifetime < timedelta(seconds=900 + 600)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
async def test_configured_signing_algorithm_signs_after_the_next_rotation(
    settings: Settings, algorithm: str
) -> None:
    async with running(with_auth(settings, signing_algorithm=algorithm)) as (app, client):
        admin = await make_tenant_admin(app)
        # A fresh database starts with keys of the configured algorithm; a database with
        # keys of another one gets a next key of the configured algorithm at start-up, so
        # one rotation switches in both cases.
        async with unit_of_work(app) as session:
            await auth_service(app).rotate_signing_key(session)
        token = await _issue(app, admin)
        header = jwt.get_unverified_header(token)
        jwks = (await client.get("/.well-known/jwks.json")).json()
        verifier, _ = _verifier(client)

        assert header["alg"] == algorithm
        [jwk] = [entry for entry in jwks["keys"] if entry["kid"] == header["kid"]]
        assert jwk["alg"] == algorithm
        assert (await verifier.verify(token)).subject == admin.user_id
        assert (await client.get("/auth/v1/me", headers=bearer(token))).status_code == 200
        discovery = (await client.get("/.well-known/openid-configuration")).json()
        assert discovery["id_token_signing_alg_values_supported"] == [algorithm]


def test_rs256_is_the_default_signing_algorithm() -> None:
    assert AuthSettings().signing_algorithm == "RS256"


async def test_private_keys_are_stored_sealed(app: FastAPI) -> None:
    key = await _active_key(app)
    der = key.private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    async with unit_of_work(app) as session:
        row = await session.get(SigningKey, key.kid)
        assert row is not None
        sealed = bytes(row.private_key_sealed)
    assert der not in sealed
    assert pem not in sealed
    assert der[-64:] not in sealed  # not even the key material's tail

    keys = auth_service(app).keys
    associated_data = f"auth.signing_key:{key.kid}".encode()
    assert keys.keyring.open(sealed, associated_data) == der
    for position in (0, len(sealed) // 2, len(sealed) - 1):
        flipped = bytearray(sealed)
        flipped[position] ^= 0x01
        with pytest.raises(DecryptionError):
            keys.keyring.open(bytes(flipped), associated_data)
    with pytest.raises(DecryptionError):  # sealed for its own row only
        keys.keyring.open(sealed, b"auth.signing_key:another-kid")


async def test_tampered_sealed_key_fails_to_load(app: FastAPI) -> None:
    auth = auth_service(app)
    async with unit_of_work(app) as session:
        kid = (await auth.keys.active_key(session)).kid
        row = await session.get(SigningKey, kid)
        assert row is not None
        original = bytes(row.private_key_sealed)
        flipped = bytearray(original)
        flipped[-1] ^= 0x01
        row.private_key_sealed = bytes(flipped)
    cold = SigningKeys(auth.keyring, algorithm="RS256", token_lifetime=timedelta(minutes=15))
    try:
        async with unit_of_work(app) as session:
            with pytest.raises(DecryptionError):
                await cold.active_key(session)
    finally:  # the PostgreSQL database is shared: put the key back
        async with unit_of_work(app) as session:
            row = await session.get(SigningKey, kid)
            assert row is not None
            row.private_key_sealed = original


@pytest.mark.parametrize("token_type", ["JWT", None, "id+jwt"])
async def test_a_jwt_that_is_not_an_access_token_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin, token_type: str | None
) -> None:
    """RFC 9068: a JWT signed by Keel's key but not typed ``at+jwt`` (an ID token, say) is not
    an access token, in the SDK or at Keel's APIs."""
    key = await _active_key(app)
    verifier, _ = _verifier(client)
    claims = _claims(admin)
    # PyJWT leaves out a ``typ`` header given as None.
    headers = {"kid": key.kid, "typ": token_type}
    token = jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers=headers)
    assert jwt.get_unverified_header(token).get("typ") == token_type
    await _refused(verifier, client, token, "bad_type")
    assert (await client.get("/auth/v1/me", headers=bearer(token))).status_code == 401
    accepted = _sign(key, _claims(admin), token_type="application/AT+JWT")
    assert (await verifier.verify(accepted)).subject == admin.user_id
