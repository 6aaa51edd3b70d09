"""Encryption at rest and keyed hashes, from one master key.

* :meth:`Keyring.seal` / :meth:`Keyring.open`: envelope encryption. Each value gets its own
  random 256-bit data key (AES-256-GCM); the data key is wrapped by the master key
  (key-encryption key, AES-256-GCM) named by its key id. Associated data binds a ciphertext
  to where it belongs (e.g. ``auth.signing_key:<kid>``), so a ciphertext copied to another
  row does not open.
* :meth:`Keyring.rewrap`: the same value with its data key wrapped by the current master key
  instead of an older one; the value's own ciphertext is untouched. Master key rotation
  (``keel secrets rotate-master-key``, :mod:`keel.core.sealed`) is this, row by row.
* :meth:`Keyring.token_hash`: HMAC-SHA256 for high-entropy tokens (refresh tokens, API keys,
  client secrets). A database dump alone is not enough to test guesses offline, and lookups
  stay a single indexed equality. Its key is the platform's ``token-hash`` key, stored sealed
  in ``keel_keys`` so that it outlives a master key rotation (:mod:`keel.core.sealed` hands it
  over at start-up); until then, a key derived from the current master key (HKDF), which is
  also the value the stored key was first created with.

The master key comes from ``KEEL_MASTER_KEY`` (base64 of 32 bytes) or ``KEEL_MASTER_KEY_FILE``
(``KEEL_SECRETS__MASTER_KEY`` / ``KEEL_SECRETS__MASTER_KEY_FILE`` are aliases); older keys
still accepted for opening come from ``KEEL_MASTER_KEY_PREVIOUS`` (comma-separated) or
``KEEL_MASTER_KEY_PREVIOUS_FILE``. On the embedded default, when no key is set, one is
generated into ``<data_dir>/master.key`` with mode 0600 and a warning; elsewhere a missing
master key stops start-up.
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
_TOKEN_HASH_INFO = b"keel token hash v1"


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


@dataclass(frozen=True)
class Envelope:
    """The parts of a sealed value: which master key wrapped its data key, the wrapped data
    key, and the value's own nonce and ciphertext (``payload``)."""

    key_id: str
    wrap_nonce: bytes
    wrapped_key: bytes
    payload: bytes

    @classmethod
    def parse(cls, sealed: bytes) -> Envelope:
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
        except struct.error:
            raise DecryptionError("truncated ciphertext") from None
        if len(key_id) != key_id_length or len(wrapped) != wrapped_length:
            raise DecryptionError("truncated ciphertext")
        return cls(key_id.decode(errors="replace"), wrap_nonce, wrapped, sealed[offset:])

    def to_bytes(self) -> bytes:
        key_id = self.key_id.encode()
        header = struct.pack("!BB", _FORMAT_VERSION, len(key_id)) + key_id
        wrapped = struct.pack("!H", len(self.wrapped_key)) + self.wrapped_key
        return header + self.wrap_nonce + wrapped + self.payload


def sealed_key_id(sealed: bytes) -> str:
    """The id of the master key that wrapped ``sealed`` (:class:`DecryptionError` if malformed)."""
    return Envelope.parse(sealed).key_id


class Keyring:
    """The current master key and any older ones still needed to open old values."""

    def __init__(self, current: MasterKey, previous: list[MasterKey] | None = None) -> None:
        self.current = current
        self.previous = [key for key in previous or [] if key.key_id != current.key_id]
        self._by_id = {key.key_id: key for key in [*self.previous, current]}
        # One cipher per master key, built once: every seal and open wraps or unwraps with one.
        self._wrappers = {key_id: AESGCM(key.material) for key_id, key in self._by_id.items()}
        # Until start-up hands over the stored platform key (keel.core.sealed): the same value.
        self._hash_key = self.derive_token_hash_key()

    def holds(self, key_id: str) -> bool:
        """Whether this keyring can open values wrapped by the master key ``key_id``."""
        return key_id in self._by_id

    def derive_token_hash_key(self, key_id: str | None = None) -> bytes:
        """The token-hash key derived (HKDF) from a master key held (default: the current)."""
        master = self._by_id[key_id] if key_id is not None else self.current
        return HKDF(
            algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=_TOKEN_HASH_INFO
        ).derive(master.material)

    def use_token_hash_key(self, key: bytes) -> None:
        """Key :meth:`token_hash` with ``key`` (the platform's stored ``token-hash`` key)."""
        if len(key) != _KEY_BYTES:
            raise MasterKeyError("the token-hash key must be 32 bytes")
        self._hash_key = key

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, associated_data)
        return self._wrap(data_key, nonce + ciphertext, associated_data)

    def open(self, sealed: bytes, associated_data: bytes) -> bytes:
        envelope = Envelope.parse(sealed)
        data_key = self._unwrap(envelope, associated_data)
        nonce, ciphertext = envelope.payload[:_NONCE_BYTES], envelope.payload[_NONCE_BYTES:]
        try:
            return AESGCM(data_key).decrypt(nonce, ciphertext, associated_data)
        except (InvalidTag, ValueError):
            raise DecryptionError("the value does not open: tampered or misplaced") from None

    def rewrap(self, sealed: bytes, associated_data: bytes) -> bytes:
        """``sealed`` with its data key wrapped by the current master key.

        The data key is unwrapped with whichever held key wrapped it (which also checks that
        ``associated_data`` is the value's), then wrapped anew; the value's nonce and
        ciphertext are kept byte for byte. A value already under the current key is returned
        as it is. :class:`DecryptionError` when the wrapping key is not held or the associated
        data is not the value's.
        """
        envelope = Envelope.parse(sealed)
        if envelope.key_id == self.current.key_id:
            return sealed
        data_key = self._unwrap(envelope, associated_data)
        return self._wrap(data_key, envelope.payload, associated_data)

    def _wrap(self, data_key: bytes, payload: bytes, associated_data: bytes) -> bytes:
        key_id = self.current.key_id
        wrap_nonce = os.urandom(_NONCE_BYTES)
        wrapped = self._wrappers[key_id].encrypt(
            wrap_nonce, data_key, key_id.encode() + b"|" + associated_data
        )
        return Envelope(key_id, wrap_nonce, wrapped, payload).to_bytes()

    def _unwrap(self, envelope: Envelope, associated_data: bytes) -> bytes:
        wrapper = self._wrappers.get(envelope.key_id)
        if wrapper is None:
            raise DecryptionError("the key that wrapped this value is not in the keyring")
        try:
            return wrapper.decrypt(
                envelope.wrap_nonce,
                envelope.wrapped_key,
                envelope.key_id.encode() + b"|" + associated_data,
            )
        except (InvalidTag, ValueError):
            raise DecryptionError("the value does not open: tampered or misplaced") from None

    def token_hash(self, token: str) -> str:
        return hmac.new(self._hash_key, token.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, token: str, expected_hash: str) -> bool:
        return hmac.compare_digest(self.token_hash(token), expected_hash)


def load_keyring(settings: Settings) -> Keyring:
    """The keyring of ``settings``: the current master key and the previous ones."""
    return Keyring(_current_key(settings), _previous_keys(settings))


def _current_key(settings: Settings) -> MasterKey:
    if settings.master_key is not None:
        return _decode(settings.master_key.get_secret_value(), "KEEL_MASTER_KEY")
    if settings.master_key_file is not None:
        return _read_key_file(settings.master_key_file)
    if not settings.is_embedded:
        raise MasterKeyError(
            "no master key: set KEEL_MASTER_KEY (base64 of 32 random bytes) or KEEL_MASTER_KEY_FILE"
        )
    path = embedded_master_key_path(settings)
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
        return key
    return _read_key_file(path)


def embedded_master_key_path(settings: Settings) -> Path:
    """Where the embedded default keeps the master key it generated (``KEEL_MASTER_KEY`` and
    ``KEEL_MASTER_KEY_FILE`` unset)."""
    return settings.data_dir / "master.key"


def master_key_origin(settings: Settings) -> str | None:
    """Where the current master key comes from, never the key itself: ``KEEL_MASTER_KEY``,
    ``file <path>``, or None when there is none yet (the embedded default generates one
    into :func:`embedded_master_key_path` on first start). Reads nothing."""
    if settings.master_key is not None:
        return "KEEL_MASTER_KEY"
    if settings.master_key_file is not None:
        return f"file {settings.master_key_file}"
    if settings.is_embedded and embedded_master_key_path(settings).exists():
        return f"file {embedded_master_key_path(settings)}"
    return None


def _previous_keys(settings: Settings) -> list[MasterKey]:
    """``KEEL_MASTER_KEY_PREVIOUS`` and ``KEEL_MASTER_KEY_PREVIOUS_FILE``: base64 keys separated
    by commas or white space (one a line in a file)."""
    keys = []
    if settings.master_key_previous is not None:
        for encoded in _split_keys(settings.master_key_previous.get_secret_value()):
            keys.append(_decode(encoded, "KEEL_MASTER_KEY_PREVIOUS"))
    if settings.master_key_previous_file is not None:
        path = settings.master_key_previous_file
        for encoded in _split_keys(_read_text(path)):
            keys.append(_decode(encoded, f"the previous keys file {path}"))
    return keys


def _split_keys(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


def _decode(encoded: str, source: str) -> MasterKey:
    try:
        return MasterKey.from_base64(encoded)
    except MasterKeyError as error:
        # The message names where the key came from, never the key.
        raise MasterKeyError(f"{source}: {error}") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise MasterKeyError(f"cannot read the key file {path}: {exc.strerror}") from None


def _read_key_file(path: Path) -> MasterKey:
    return _decode(_read_text(path), f"the master key file {path}")
