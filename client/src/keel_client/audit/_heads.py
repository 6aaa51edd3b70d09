"""Canonical event bytes and signed tree heads: what a third party needs to check a receipt.

An audit event is stored as its RFC 8785 canonical JSON; the Merkle leaf is those bytes. A
signed tree head binds a tenant's tree size and root hash at a time with the log's Ed25519
key: ``signature = Ed25519(canonical({"tenant", "tree_size", "root_hash", "timestamp",
"key_id"}))``, hashes and signatures in standard base64. Verify the head first, then proofs
against its root and size (a proof alone does not pin the size of the tree it was made for).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keel_client.audit._merkle import HASH_SIZE, ProofError, leaf_hash, verify_inclusion


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value: the form every event is hashed and signed in.

    Values made only of strings, integers below 2**53, booleans, nulls, lists and objects
    with ASCII keys come out of ``orjson`` byte for byte as JCS has them (keys in code-point
    order, the same escapes, integers as written, UTF-8), at a thirtieth of the cost of the
    general encoder; anything else (floats, non-ASCII keys, whose JCS order is by UTF-16
    units) goes through ``rfc8785``.
    """
    if _plain(value, 0):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # a lone surrogate: rfc8785 says what is wrong with it
    return rfc8785.dumps(value)


_SAFE_INTEGER = 2**53 - 1  # as rfc8785 has it


def _plain(value: Any, depth: int) -> bool:
    """Whether ``orjson`` writes ``value`` as JCS does. Strings need no look: ``orjson``
    refuses a lone surrogate, the one string JCS writes otherwise (as ``rfc8785`` refuses).

    Loops with the checks in place rather than calls a value: this runs over every event the
    log appends.
    """
    kind = type(value)
    if kind is dict:
        if depth > 64:
            return False
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            if kind is int:
                if not -_SAFE_INTEGER <= item <= _SAFE_INTEGER:
                    return False
            elif (kind is not dict and kind is not list) or not _plain(item, depth + 1):
                return False
        return True
    if kind is list:
        if depth > 64:
            return False
        return all(_plain(item, depth + 1) for item in value)
    if kind is str or kind is bool or value is None:
        return True
    return kind is int and -_SAFE_INTEGER <= value <= _SAFE_INTEGER


#: What ``GET /audit/v1/events`` and ``GET /audit/v1/events/{id}`` add to each stored document:
#: where the event is in the tree, and (once retention deleted the document) ``erased``. They
#: are not part of the document, so not of its leaf hash.
LISTING_FIELDS = frozenset({"leaf_index", "leaf_hash", "erased"})


def event_leaf_hash(event: Mapping[str, Any]) -> bytes:
    """The Merkle leaf hash of a stored event document (exactly the fields given)."""
    return leaf_hash(canonical_json(dict(event)))


def event_document(event: Mapping[str, Any]) -> dict[str, Any]:
    """The stored document of ``event`` as the API lists it: without :data:`LISTING_FIELDS`.

    Raises :class:`ProofError` for an event retention erased: its document is gone, only its
    leaf hash remains (and still proves the leaf is in the log).
    """
    if event.get("erased") is True:
        raise ProofError(f"event {event.get('id')!r} was erased by retention: its document is gone")
    return {name: value for name, value in event.items() if name not in LISTING_FIELDS}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ProofError(f"{what} is not base64") from None


@dataclass(frozen=True)
class TreeHead:
    """A signed statement of a tenant's tree: its size and root hash at ``timestamp`` (ms)."""

    tenant: str
    tree_size: int
    root_hash: bytes
    timestamp: int
    key_id: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        return tree_head_message(
            self.tenant, self.tree_size, self.root_hash, self.timestamp, self.key_id
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "tree_size": self.tree_size,
            "root_hash": b64(self.root_hash),
            "timestamp": self.timestamp,
            "key_id": self.key_id,
            "signature": b64(self.signature),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TreeHead:
        try:
            head = cls(
                tenant=str(data["tenant"]),
                tree_size=int(data["tree_size"]),
                root_hash=unb64(data["root_hash"], "root_hash"),
                timestamp=int(data["timestamp"]),
                key_id=str(data["key_id"]),
                signature=unb64(data["signature"], "signature"),
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, ProofError):
                raise
            raise ProofError(f"not a signed tree head: {error!r}") from None
        if head.tree_size < 0 or len(head.root_hash) != HASH_SIZE:
            raise ProofError("not a signed tree head: bad size or root hash")
        return head


def tree_head_message(
    tenant: str, tree_size: int, root_hash: bytes, timestamp: int, key_id: str
) -> bytes:
    """The bytes an Ed25519 tree-head signature covers."""
    return canonical_json(
        {
            "tenant": tenant,
            "tree_size": tree_size,
            "root_hash": b64(root_hash),
            "timestamp": timestamp,
            "key_id": key_id,
        }
    )


def public_keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """``{kid: key}`` of the Ed25519 (``OKP``) keys of a JWK set, as ``/audit/v1/keys`` serves."""
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in jwks.get("keys", []):
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519" and "kid" in jwk:
            raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
            keys[str(jwk["kid"])] = Ed25519PublicKey.from_public_bytes(raw)
    return keys


def verify_tree_head(head: TreeHead, keys: Mapping[str, Ed25519PublicKey]) -> None:
    """Raise :class:`ProofError` unless ``head`` is signed by one of ``keys``."""
    key = keys.get(head.key_id)
    if key is None:
        raise ProofError(f"tree head signed by unknown key {head.key_id!r}")
    try:
        key.verify(head.signature, head.signed_bytes())
    except InvalidSignature:
        raise ProofError("tree head signature does not verify") from None


def verify_event_receipt(
    event: Mapping[str, Any],
    leaf_index: int,
    proof: list[bytes],
    head: TreeHead,
    keys: Mapping[str, Ed25519PublicKey],
) -> None:
    """Check, trusting only ``keys``, that the log holds ``event`` at ``leaf_index`` in the
    tree ``head`` signs.

    ``event`` is the stored document, or the event exactly as ``GET /audit/v1/events`` (or
    ``/events/{id}``) returns it: the ``leaf_index`` and ``leaf_hash`` the listing adds are not
    hashed, but must agree with ``leaf_index`` and the document's hash when present.
    """
    verify_tree_head(head, keys)
    digest = event_leaf_hash(event_document(event))
    listed_index = event.get("leaf_index")
    if listed_index is not None and listed_index != leaf_index:
        raise ProofError(f"the event is listed at leaf {listed_index}, not {leaf_index}")
    listed_hash = event.get("leaf_hash")
    if listed_hash is not None and unb64(str(listed_hash), "leaf_hash") != digest:
        raise ProofError("the event's document does not hash to its leaf_hash")
    verify_inclusion(digest, leaf_index, head.tree_size, proof, head.root_hash)
