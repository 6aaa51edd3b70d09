"""Token-signing keys: generation, sealing at rest, JWKS, rotation.

Lifecycle of a key: ``next`` (published in JWKS, not signing, so verifiers learn it before
they meet it) → ``active`` (signs every new token) → ``retired`` (published until every token
it signed has expired) → gone. There is always one ``active`` and one ``next`` key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import SigningKey, SigningKeyStatus
from keel.core.crypto import Keyring
from keel.core.db import utcnow
from keel.core.sealed import register_sealed_column
from keel.core.sqlite import hold_write_lock

#: Seconds the active key's identity is remembered between database lookups.
ACTIVE_KEY_TTL = 5.0

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class LoadedKey:
    kid: str
    algorithm: str
    private_key: PrivateKey


def _public_jwk(algorithm: str, private_key: PrivateKey) -> dict[str, Any]:
    public_key = private_key.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public_key, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public_key, as_dict=True)
    return {k: v for k, v in jwk.items() if k in {"kty", "n", "e", "crv", "x", "y"}}


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order."""
    required = {
        "RSA": ("e", "kty", "n"),
        "EC": ("crv", "kty", "x", "y"),
        "OKP": ("crv", "kty", "x"),
    }
    members = {name: jwk[name] for name in required[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).decode().rstrip("=")


def generate_private_key(algorithm: str) -> PrivateKey:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported signing algorithm {algorithm!r}")


def _associated_data(kid: str) -> bytes:
    return f"auth.signing_key:{kid}".encode()


register_sealed_column(SigningKey.private_key_sealed, lambda row: _associated_data(row.kid))


class SigningKeys:
    """Signing keys of the platform, with decrypted private keys cached in memory."""

    def __init__(self, keyring: Keyring, *, algorithm: str, token_lifetime: timedelta) -> None:
        self.keyring = keyring
        self.algorithm = algorithm
        #: How long a retired key stays published: the longest a token it signed lives.
        self.token_lifetime = token_lifetime
        self._loaded: dict[str, LoadedKey] = {}
        self._active: tuple[float, LoadedKey] | None = None

    async def create_key(self, session: AsyncSession, status: SigningKeyStatus) -> SigningKey:
        private_key = generate_private_key(self.algorithm)
        jwk = _public_jwk(self.algorithm, private_key)
        kid = jwk_thumbprint(jwk)
        der = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        now = utcnow()
        key = SigningKey(
            kid=kid,
            algorithm=self.algorithm,
            status=status,
            public_jwk={**jwk, "kid": kid, "alg": self.algorithm, "use": "sig"},
            private_key_sealed=self.keyring.seal(der, _associated_data(kid)),
            created_at=now,
            activated_at=now if status == SigningKeyStatus.active else None,
        )
        session.add(key)
        await session.flush()
        return key

    async def ensure_keys(self, session: AsyncSession) -> list[str]:
        """Make sure an active and a next key exist; returns the kids created.

        A next key of another algorithm than the configured one (the setting changed) is
        replaced: it has signed nothing, and the next rotation then switches algorithms
        while the new key is still published before it signs.
        """
        keys = list(
            await session.scalars(
                select(SigningKey).where(
                    SigningKey.status.in_([SigningKeyStatus.active, SigningKeyStatus.next])
                )
            )
        )
        created = []
        if not any(key.status == SigningKeyStatus.active for key in keys):
            created.append((await self.create_key(session, SigningKeyStatus.active)).kid)
        upcoming = [key for key in keys if key.status == SigningKeyStatus.next]
        if upcoming and upcoming[0].algorithm != self.algorithm:
            await session.delete(upcoming[0])
            await session.flush()
            upcoming = []
        if not upcoming:
            created.append((await self.create_key(session, SigningKeyStatus.next)).kid)
        return created

    async def rotate(self, session: AsyncSession) -> tuple[str | None, str]:
        """Promote the next key, retire the active one, publish a new next key.

        Returns ``(retired kid, new active kid)``.
        """
        now = utcnow()
        await hold_write_lock(session)  # SQLite: one rotation at a time, as the row locks make it
        keys = list(
            await session.scalars(
                select(SigningKey)
                .where(SigningKey.status.in_([SigningKeyStatus.active, SigningKeyStatus.next]))
                .with_for_update()
            )
        )
        active = next((k for k in keys if k.status == SigningKeyStatus.active), None)
        upcoming = next((k for k in keys if k.status == SigningKeyStatus.next), None)
        if upcoming is None:
            upcoming = await self.create_key(session, SigningKeyStatus.next)
        if active is not None:
            active.status = SigningKeyStatus.retired
            active.retired_at = now
            # Every token it signed expires within one lifetime (plus verifiers' leeway).
            active.expires_at = now + self.token_lifetime + timedelta(minutes=5)
        upcoming.status = SigningKeyStatus.active
        upcoming.activated_at = now
        self._active = None
        await session.flush()
        await self.create_key(session, SigningKeyStatus.next)
        return (active.kid if active else None), upcoming.kid

    async def active_key(self, session: AsyncSession) -> LoadedKey:
        """The key that signs now, looked up at most every ``ACTIVE_KEY_TTL`` seconds.

        Another replica's rotation is seen within that time; meanwhile this process signs
        with the previous key, which stays published (retired) for a whole token lifetime, so
        every token still verifies. A rotation in this process takes effect at once.
        """
        cached = self._active
        if cached is not None and time.monotonic() - cached[0] < ACTIVE_KEY_TTL:
            return cached[1]
        loaded = await self._load_active_key(session)
        self._active = (time.monotonic(), loaded)
        return loaded

    async def _load_active_key(self, session: AsyncSession) -> LoadedKey:
        kid = await session.scalar(
            select(SigningKey.kid).where(SigningKey.status == SigningKeyStatus.active)
        )
        if kid is None:
            await self.ensure_keys(session)
            return await self._load_active_key(session)
        loaded = self._loaded.get(kid)
        if loaded is None:
            row = await session.get(SigningKey, kid)
            assert row is not None
            der = self.keyring.open(row.private_key_sealed, _associated_data(kid))
            private_key = serialization.load_der_private_key(der, password=None)
            assert isinstance(
                private_key,
                rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
            )
            loaded = LoadedKey(kid, row.algorithm, private_key)
            self._loaded[kid] = loaded
        return loaded

    async def published(self, session: AsyncSession) -> dict[str, Any]:
        """The JWKS document: next, active and unexpired retired keys."""
        now = utcnow()
        rows = await session.scalars(select(SigningKey).order_by(SigningKey.created_at))
        keys = [
            row.public_jwk
            for row in rows
            if row.status != SigningKeyStatus.retired or (row.expires_at and row.expires_at > now)
        ]
        return {"keys": keys}

    async def is_rotation_due(self, session: AsyncSession, interval: timedelta) -> bool:
        activated = await session.scalar(
            select(SigningKey.activated_at).where(SigningKey.status == SigningKeyStatus.active)
        )
        return activated is None or utcnow() - activated >= interval

    async def next_key_published_since(self, session: AsyncSession) -> datetime | None:
        return await session.scalar(
            select(SigningKey.created_at).where(SigningKey.status == SigningKeyStatus.next)
        )
