"""Encryption at rest and keyed hashes, from one master key.

* :meth:`Keyring.seal` / :meth:`Keyring.open`: envelope encryption. Each value gets its own
  random 256-bit data key (AES-256-GCM); the data key is wrapped by the master key
  (key-encryption key, AES-256-GCM) named by its key id. Associated data binds a ciphertext
  to where it belongs (e.g. ``auth.signing_key:<kid>``), so a ciphertext copied to another
  row does not open.
* :meth:`Keyring.token_hash`: HMAC-SHA256 under a key derived from the master key (HKDF), for
  high-entropy tokens (refresh tokens, API keys, client secrets). A database dump alone is not
  enough to test guesses offline, and lookups stay a single indexed equality.

The master key comes from ``KEEL_MASTER_KEY`` (base64 of 32 bytes) or ``KEEL_MASTER_KEY_FILE``.
On the embedded default, when neither is set, one is generated into ``<data_dir>/master.key``
with mode 0600 and a warning; elsewhere a missing master key stops start-up.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keel.core.logging import get_logger
from keel.settings import Settings

log = get_logger(__name__)

_FORMAT_VERSION = 1
_NONCE_BYTES = 12
_KEY_BYTES = 32


class MasterKeyError(RuntimeError):
    """The master key is missing or malformed; start-up cannot continue."""


class DecryptionError(Exception):
    """A ciphertext did not open: wrong key, wrong associated data, or tampered bytes."""


@dataclass(frozen=True)
class MasterKey:
    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.material) != _KEY_BYTES:
            raise MasterKeyError("the master key must be 32 bytes (base64 of 32 random bytes)")

    @property
    def key_id(self) -> str:
        # A fingerprint, not the key: names which key wrapped a value.
        return hashlib.sha256(b"keel key id" + self.material).hexdigest()[:16]

    @classmethod
    def from_base64(cls, encoded: str) -> MasterKey:
        try:
            material = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError("the master key is not valid base64") from None
        return cls(material)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(_KEY_BYTES))

    def to_base64(self) -> str:
        return base64.b64encode(self.material).decode()


class Keyring:
    """The current master key and any older ones still needed to open old values."""

    def __init__(self, current: MasterKey, previous: list[MasterKey] | None = None) -> None:
        self.current = current
        self._by_id = {key.key_id: key for key in [*(previous or []), current]}
        self._hash_key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"keel token hash v1"
        ).derive(current.material)

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, associated_data)
        key_id = self.current.key_id.encode()
        wrap_nonce = os.urandom(_NONCE_BYTES)
        wrapped = AESGCM(self.current.material).encrypt(
            wrap_nonce, data_key, key_id + b"|" + associated_data
        )
        header = struct.pack("!BB", _FORMAT_VERSION, len(key_id)) + key_id
        return header + wrap_nonce + struct.pack("!H", len(wrapped)) + wrapped + nonce + ciphertext

    def open(self, sealed: bytes, associated_data: bytes) -> bytes:
        try:
            version, key_id_length = struct.unpack_from("!BB", sealed, 0)
            if version != _FORMAT_VERSION:
                raise DecryptionError("unknown ciphertext format")
            offset = 2
            key_id = sealed[offset : offset + key_id_length]
            offset += key_id_length
            wrap_nonce = sealed[offset : offset + _NONCE_BYTES]
            offset += _NONCE_BYTES
            (wrapped_length,) = struct.unpack_from("!H", sealed, offset)
            offset += 2
            wrapped = sealed[offset : offset + wrapped_length]
            offset += wrapped_length
            nonce = sealed[offset : offset + _NONCE_BYTES]
            ciphertext = sealed[offset + _NONCE_BYTES :]
        except struct.error:
            raise DecryptionError("truncated ciphertext") from None
        master = self._by_id.get(key_id.decode(errors="replace"))
        if master is None:
            raise DecryptionError("the key that wrapped this value is not in the keyring")
        try:
            data_key = AESGCM(master.material).decrypt(
                wrap_nonce, wrapped, key_id + b"|" + associated_data
            )
            return AESGCM(data_key).decrypt(nonce, ciphertext, associated_data)
        except (InvalidTag, ValueError):
            raise DecryptionError("the value does not open: tampered or misplaced") from None

    def token_hash(self, token: str) -> str:
        return hmac.new(self._hash_key, token.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, token: str, expected_hash: str) -> bool:
        return hmac.compare_digest(self.token_hash(token), expected_hash)


def load_keyring(settings: Settings) -> Keyring:
    if settings.master_key is not None:
        return Keyring(MasterKey.from_base64(settings.master_key.get_secret_value()))
    if settings.master_key_file is not None:
        return Keyring(_read_key_file(settings.master_key_file))
    if not settings.is_embedded:
        raise MasterKeyError(
            "no master key: set KEEL_MASTER_KEY (base64 of 32 random bytes) or KEEL_MASTER_KEY_FILE"
        )
    path = settings.data_dir / "master.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = MasterKey.generate()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(key.to_base64() + "\n")
        log.warning(
            "crypto.master_key.generated",
            path=str(path),
            hint="keep this file secret and backed up; set KEEL_MASTER_KEY in production",
        )
        return Keyring(key)
    return Keyring(_read_key_file(path))


def _read_key_file(path: Path) -> MasterKey:
    try:
        return MasterKey.from_base64(path.read_text())
    except OSError as exc:
        raise MasterKeyError(f"cannot read the master key file {path}: {exc.strerror}") from None
