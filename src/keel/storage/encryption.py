"""Encryption at rest: Tink's streaming AEAD (AES256_GCM_HKDF_1MB), with range decryption.

Every object gets its own data key: a serialized Tink keyset holding one
`AesGcmHkdfStreamingKey` (`new_data_key`), which the service seals with the platform
master key before it stores it. `encrypt` feeds Tink's own encrypting stream, so the
ciphertext is Tink's wire format, byte for byte:

    header = 0x28 || salt (32 bytes) || nonce prefix (7 bytes)               (40 bytes)
    segment key = HKDF-SHA256(ikm=key value, salt=salt, info=associated data)  (32 bytes)
    segment i = AES-256-GCM(segment key, nonce prefix || i (4 bytes, big-endian)
                            || 1 if last else 0, plaintext i)     (ciphertext || 16-byte tag)

Ciphertext segments are 1 MiB; the first holds the header too, so it carries 40 bytes less
plaintext (https://developers.google.com/tink/streaming-aead/aes_gcm_hkdf_streaming).
Tink's Python API has no seekable decrypter, so `decrypt_range` reads that format at an
offset with `cryptography`'s AES-GCM and HKDF: a range read decrypts only the segments it
touches. tests/storage/test_encryption.py proves it against Tink's own encrypter and
decrypter. Each segment is authenticated before any of its bytes are yielded: a flipped
byte, a truncated stream, a dropped or moved segment, the wrong key or the wrong associated
data raise `DecryptionFailed`.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import tink
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import DecodeError
from tink import secret_key_access, streaming_aead
from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

__all__ = [
    "CIPHERTEXT_SEGMENT_BYTES",
    "HEADER_BYTES",
    "SEGMENT_BYTES",
    "TAG_BYTES",
    "DecryptionFailed",
    "ciphertext_range",
    "ciphertext_size",
    "decrypt_range",
    "decrypt_stored_range",
    "encrypt",
    "new_data_key",
    "plaintext_size",
]

streaming_aead.register()

_KEY_TEMPLATE = streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB
_KEY_TYPE_URL = "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey"

CIPHERTEXT_SEGMENT_BYTES = 1024 * 1024  # the template's ciphertext segment size
TAG_BYTES = 16  # AES-GCM's tag, at the end of every segment
_DERIVED_KEY_BYTES = 32  # AES-256: also the salt's length
_NONCE_PREFIX_BYTES = 7
HEADER_BYTES = 1 + _DERIVED_KEY_BYTES + _NONCE_PREFIX_BYTES  # 40
# Plaintext bytes in a whole segment (every segment but the first and the last); the first
# holds HEADER_BYTES fewer, the last at most as many.
SEGMENT_BYTES = CIPHERTEXT_SEGMENT_BYTES - TAG_BYTES  # 1_048_560
_FIRST_SEGMENT_BYTES = SEGMENT_BYTES - HEADER_BYTES  # 1_048_520


class DecryptionFailed(Exception):
    """The ciphertext did not authenticate: tampered, truncated, or the wrong key or data."""


# --- keys ---------------------------------------------------------------------------------


def new_data_key() -> bytes:
    """A fresh data key: a keyset with one AES256_GCM_HKDF_1MB key, in Tink's binary format.

    Secret key material in the clear: the caller seals it before storing it.
    """
    handle = tink.new_keyset_handle(_KEY_TEMPLATE)
    return cast(bytes, tink.proto_keyset_format.serialize(handle, secret_key_access.TOKEN))


def _primitive(data_key: bytes) -> Any:
    """Tink's StreamingAead for `data_key` (ValueError for anything but our one key)."""
    _key_value(data_key)  # the same checks as decryption: one key of our template
    try:
        handle = tink.proto_keyset_format.parse(data_key, secret_key_access.TOKEN)
        return handle.primitive(streaming_aead.StreamingAead)
    except tink.TinkError as exc:
        raise ValueError("not a storage data key") from exc


def _key_value(data_key: bytes) -> bytes:
    """The AES-GCM-HKDF key value inside a data key, after checking its parameters.

    Raises ValueError for a keyset that is not exactly one enabled key of our template (the
    segment arithmetic here is that template's).
    """
    try:
        keyset = tink_pb2.Keyset.FromString(data_key)
        if len(keyset.key) != 1:
            raise ValueError("a storage data key holds exactly one key")
        entry = keyset.key[0]
        if (
            entry.status != tink_pb2.ENABLED
            or entry.key_id != keyset.primary_key_id
            or entry.output_prefix_type != tink_pb2.RAW
            or entry.key_data.type_url != _KEY_TYPE_URL
        ):
            raise ValueError("not an AES256_GCM_HKDF_1MB storage data key")
        key = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey.FromString(entry.key_data.value)
    except DecodeError as exc:
        raise ValueError("not a storage data key") from exc
    params = key.params
    if (
        key.version != 0
        or params.ciphertext_segment_size != CIPHERTEXT_SEGMENT_BYTES
        or params.derived_key_size != _DERIVED_KEY_BYTES
        or params.hkdf_hash_type != common_pb2.SHA256
        or len(key.key_value) < _DERIVED_KEY_BYTES
    ):
        raise ValueError("not an AES256_GCM_HKDF_1MB storage data key")
    return bytes(key.key_value)


# --- sizes and ranges ---------------------------------------------------------------------


def _segment_count(size: int) -> int:
    """Segments in the ciphertext of `size` plaintext bytes (an empty one has one, empty)."""
    # Tink fills every segment but the last, and writes no empty last segment after a full
    # one; the header stands in for the first HEADER_BYTES of the first segment.
    return max(1, -(-(size + HEADER_BYTES) // SEGMENT_BYTES))


def _segment_of(offset: int) -> int:
    """The segment that holds plaintext byte `offset`."""
    return (offset + HEADER_BYTES) // SEGMENT_BYTES


def _plaintext_start(segment: int) -> int:
    return 0 if segment == 0 else segment * SEGMENT_BYTES - HEADER_BYTES


def _ciphertext_start(segment: int) -> int:
    return HEADER_BYTES if segment == 0 else segment * CIPHERTEXT_SEGMENT_BYTES


def ciphertext_size(plaintext_size: int) -> int:
    """The exact ciphertext length of `plaintext_size` bytes."""
    if plaintext_size < 0:
        raise ValueError("a size is not negative")
    return HEADER_BYTES + plaintext_size + TAG_BYTES * _segment_count(plaintext_size)


def plaintext_size(ciphertext_size: int) -> int:
    """The plaintext length in a ciphertext of `ciphertext_size` bytes (ValueError: none)."""
    if ciphertext_size < HEADER_BYTES + TAG_BYTES:
        raise ValueError("too short for a ciphertext")
    segments = -(-ciphertext_size // CIPHERTEXT_SEGMENT_BYTES)
    size = ciphertext_size - HEADER_BYTES - TAG_BYTES * segments
    # A last segment of only a tag exists only in the ciphertext of nothing.
    if size < 0 or _segment_count(size) != segments:
        raise ValueError("no plaintext has a ciphertext of that size")
    return size


@dataclass(frozen=True)
class _Span:
    """The segments [first, last] that plaintext [start, end) touches."""

    first: int
    last: int
    is_last_of_object: bool  # `last` is the object's final segment


def _span(plaintext_size: int, start: int, end: int) -> _Span:
    if not 0 <= start <= end <= plaintext_size:
        raise ValueError("the range must satisfy 0 <= start <= end <= plaintext_size")
    final = _segment_count(plaintext_size) - 1
    first = min(_segment_of(start), final)
    # An empty range still touches (and authenticates) the segment it sits in.
    last = max(first, min(_segment_of(end - 1), final)) if end > start else first
    return _Span(first, last, last == final)


def ciphertext_range(plaintext_size: int, start: int, end: int) -> tuple[int, int]:
    """The ciphertext [cstart, cend) holding plaintext [start, end): whole segments.

    cstart is 0 (the header included) when the range touches the first segment; otherwise
    the header is not in [cstart, cend), and `decrypt_range` needs it as `header=` (the
    ciphertext's first HEADER_BYTES bytes). `decrypt_stored_range` does both reads.
    """
    span = _span(plaintext_size, start, end)
    cstart = 0 if span.first == 0 else _ciphertext_start(span.first)
    if span.is_last_of_object:
        cend = ciphertext_size(plaintext_size)
    else:
        cend = _ciphertext_start(span.last + 1)
    return cstart, cend


# --- encryption ---------------------------------------------------------------------------


class _Sink(io.RawIOBase):
    """Where Tink's encrypting stream writes: drained after every chunk fed to it."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


async def encrypt(
    data_key: bytes, associated_data: bytes, chunks: AsyncIterable[bytes]
) -> AsyncIterator[bytes]:
    """Tink's ciphertext of `chunks`, as it is made: memory stays within about two segments.

    Exceptions from `chunks` propagate; the partial ciphertext is then worthless (its last
    segment was never written), which is what the blob stores' atomic writes expect.
    """
    sink = _Sink()
    stream = _primitive(data_key).new_encrypting_stream(sink, associated_data)
    try:
        async for chunk in chunks:
            # A huge chunk goes in a segment at a time so the sink never holds much.
            view = memoryview(chunk) if len(chunk) > SEGMENT_BYTES else None
            for offset in range(0, len(chunk), SEGMENT_BYTES):
                stream.write(chunk if view is None else view[offset : offset + SEGMENT_BYTES])
                if out := sink.drain():
                    yield out
        stream.close()  # writes the last segment
        if out := sink.drain():
            yield out
    finally:
        sink.drain()


# --- decryption ---------------------------------------------------------------------------


def _segment_cipher(data_key: bytes, associated_data: bytes, header: bytes) -> tuple[AESGCM, bytes]:
    """The segment cipher and nonce prefix that `header` and the key give."""
    if len(header) != HEADER_BYTES or header[0] != HEADER_BYTES:
        raise DecryptionFailed("the ciphertext header is malformed")
    try:
        key_value = _key_value(data_key)
    except ValueError as exc:
        raise DecryptionFailed("the data key is not a storage data key") from exc
    salt = header[1 : 1 + _DERIVED_KEY_BYTES]
    derived = HKDF(
        algorithm=hashes.SHA256(), length=_DERIVED_KEY_BYTES, salt=salt, info=associated_data
    ).derive(key_value)
    return AESGCM(derived), header[1 + _DERIVED_KEY_BYTES :]


async def _exactly(
    ciphertext: AsyncIterable[bytes], sizes: Iterator[int]
) -> AsyncIterator[bytes | memoryview]:
    """The stream cut into pieces of exactly `sizes` (DecryptionFailed if it is not that long).

    A piece inside one chunk is a view of it, not a copy (a store's aligned 1 MiB reads cut
    into whole segments without copying).
    """
    buffer = bytearray()
    want = next(sizes, None)
    async for chunk in ciphertext:
        view = memoryview(chunk)
        while want is not None and view:
            if not buffer and len(view) >= want:
                yield view[:want]
                view = view[want:]
            else:
                taken = min(want - len(buffer), len(view))
                buffer += view[:taken]
                view = view[taken:]
                if len(buffer) < want:
                    break
                yield bytes(buffer)
                buffer.clear()
            want = next(sizes, None)
        if want is None and view:
            raise DecryptionFailed("the ciphertext is longer than expected")
    if want is not None:
        raise DecryptionFailed("the ciphertext is truncated")


def _piece_sizes(span: _Span, cend: int, with_header: bool) -> Iterator[int]:
    """The lengths of the header (when read) and of each touched segment, in order."""
    if with_header:
        yield HEADER_BYTES
    for segment in range(span.first, span.last):
        yield _ciphertext_start(segment + 1) - _ciphertext_start(segment)
    yield cend - _ciphertext_start(span.last)


async def decrypt_range(
    data_key: bytes,
    associated_data: bytes,
    ciphertext: AsyncIterable[bytes],
    plaintext_size: int,
    start: int,
    end: int,
    cstart: int,
    *,
    header: bytes | None = None,
) -> AsyncIterator[bytes]:
    """Plaintext [start, end) from `ciphertext`: the bytes [cstart, cend) of `ciphertext_range`.

    Only the touched segments are decrypted, each authenticated before its bytes are
    yielded; anything that does not authenticate raises DecryptionFailed. When cstart > 0
    the header is not in `ciphertext`: pass the object's first HEADER_BYTES bytes as `header`.
    """
    span = _span(plaintext_size, start, end)
    expected_cstart, cend = ciphertext_range(plaintext_size, start, end)
    if cstart != expected_cstart:
        raise ValueError("cstart is not ciphertext_range(...)[0] for this range")
    pieces = _exactly(ciphertext, _piece_sizes(span, cend, with_header=cstart == 0))
    if cstart == 0:
        header = bytes(await anext(pieces, b""))
    elif header is None:
        raise ValueError("decrypt_range needs header= when the range starts past segment 0")
    cipher, nonce_prefix = _segment_cipher(data_key, associated_data, header)
    final = _segment_count(plaintext_size) - 1
    segment = span.first
    async for sealed in pieces:
        nonce = (
            nonce_prefix + segment.to_bytes(4, "big") + (b"\x01" if segment == final else b"\x00")
        )
        try:
            plain = cipher.decrypt(nonce, sealed, None)
        except InvalidTag:
            raise DecryptionFailed(f"segment {segment} did not authenticate") from None
        # The segment's plaintext covers [base, base + len(plain)); yield its part of the range.
        base = _plaintext_start(segment)
        lo, hi = max(start, base) - base, min(end, base + len(plain)) - base
        if hi > lo:
            yield plain if (lo == 0 and hi == len(plain)) else plain[lo:hi]
        segment += 1


async def decrypt_stored_range(
    data_key: bytes,
    associated_data: bytes,
    read: Callable[[int, int], AsyncIterable[bytes]],
    plaintext_size: int,
    start: int,
    end: int,
) -> AsyncIterator[bytes]:
    """Plaintext [start, end) of a stored object, `read(cstart, cend)` giving its ciphertext.

    `read` is typically `lambda s, e: store.read(locator, s, e)`: the header and the touched
    segments are read, nothing else.
    """
    cstart, cend = ciphertext_range(plaintext_size, start, end)
    header = None
    if cstart > 0:
        header = b"".join([chunk async for chunk in read(0, HEADER_BYTES)])
    async for piece in decrypt_range(
        data_key,
        associated_data,
        read(cstart, cend),
        plaintext_size,
        start,
        end,
        cstart,
        header=header,
    ):
        yield piece
