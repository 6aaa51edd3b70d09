"""Signed tree heads and the log's signing key.

A tree head states a tenant's tree size and root at a time, signed with the log's Ed25519
key (``keel_client.audit.tree_head_message`` is what is signed). The key is made on first
use; its private half is sealed at rest with the master keyring, its public half published
as a JWK set (``GET /audit/v1/keys``).
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.models import AuditSigningKey, AuditTreeHead
from keel.audit.service.storage import insert_rows
from keel.core.crypto import Keyring
from keel.core.sealed import register_sealed_column
from keel.core.tenancy import bind_tenant
from keel_client.audit import TreeHead, tree_head_message


class HeadSigner:
    """Signs tree heads with the log's key, loaded (or made) once per process."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._key: tuple[str, Ed25519PrivateKey] | None = None

    async def signing_key(self, session: AsyncSession) -> tuple[str, Ed25519PrivateKey]:
        """The log's Ed25519 key, created on first use, its private half sealed at rest."""
        if self._key is not None:
            return self._key
        row = await session.scalar(
            select(AuditSigningKey).order_by(AuditSigningKey.created_at.desc()).limit(1)
        )
        if row is None:
            private = Ed25519PrivateKey.generate()
            public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            key_id = base64.urlsafe_b64encode(hashlib.sha256(public).digest()[:12]).decode()
            raw = private.private_bytes_raw()
            row = AuditSigningKey(
                key_id=key_id,
                public_key=public,
                private_key_sealed=self.keyring.seal(raw, _key_aad(key_id)),
            )
            session.add(row)
            await session.flush()
        else:
            private = Ed25519PrivateKey.from_private_bytes(
                self.keyring.open(row.private_key_sealed, _key_aad(row.key_id))
            )
        self._key = (row.key_id, private)
        return self._key

    def head_row(self, tenant_id: str, size: int, root: bytes) -> dict[str, Any]:
        """A signed head of the tenant's tree at ``size`` as a row (the key must be loaded:
        :meth:`signing_key`)."""
        assert self._key is not None
        key_id, key = self._key
        timestamp = int(time.time() * 1000)
        signature = key.sign(tree_head_message(tenant_id, size, root, timestamp, key_id))
        return {
            "tenant_id": tenant_id,
            "tree_size": size,
            "root_hash": root,
            "timestamp": timestamp,
            "key_id": key_id,
            "signature": signature,
        }

    async def sign(self, session: AsyncSession, tenant_id: str, size: int, root: bytes) -> TreeHead:
        """Sign and store a head of the tenant's tree at ``size`` with ``root``."""
        await self.signing_key(session)
        row = self.head_row(tenant_id, size, root)
        await insert_rows(await session.connection(), AuditTreeHead, [row])
        return TreeHead(tenant_id, size, root, row["timestamp"], row["key_id"], row["signature"])


async def latest_head(session: AsyncSession, tenant_id: str) -> TreeHead | None:
    """The tenant's latest signed head, None for a log never signed."""
    bind_tenant(session, tenant_id)
    row = await session.scalar(
        select(AuditTreeHead)
        .order_by(AuditTreeHead.tree_size.desc(), AuditTreeHead.id.desc())
        .limit(1)
    )
    return None if row is None else tree_head_of(row)


async def all_heads(session: AsyncSession, tenant_id: str) -> list[TreeHead]:
    """Every head signed of the tenant's log, oldest first."""
    bind_tenant(session, tenant_id)
    rows = await session.scalars(select(AuditTreeHead).order_by(AuditTreeHead.id))
    return [tree_head_of(row) for row in rows]


async def public_jwks(session: AsyncSession) -> dict[str, Any]:
    """The log's public keys as a JWK set: what verifies signed tree heads."""
    rows = await session.scalars(select(AuditSigningKey).order_by(AuditSigningKey.created_at))
    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": row.key_id,
                "x": base64.urlsafe_b64encode(row.public_key).rstrip(b"=").decode(),
            }
            for row in rows
        ]
    }


def tree_head_of(row: AuditTreeHead) -> TreeHead:
    return TreeHead(
        row.tenant_id, row.tree_size, row.root_hash, row.timestamp, row.key_id, row.signature
    )


def _key_aad(key_id: str) -> bytes:
    return f"keel-audit-signing-key:{key_id}".encode()


register_sealed_column(AuditSigningKey.private_key_sealed, lambda row: _key_aad(row.key_id))
