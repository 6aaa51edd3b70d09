"""Encryption at rest: our range decryption reads Tink's own AES-GCM-HKDF streaming format.

The reference is Tink itself: ciphertexts made by Tink's encrypting stream (directly, not
through our `encrypt`) are range-decrypted by `decrypt_range`, and what `encrypt` writes is
read back by Tink's decrypting stream.
"""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import tink
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tink import secret_key_access, streaming_aead
from tink.proto import tink_pb2

from keel.storage.encryption import (
    CIPHERTEXT_SEGMENT_BYTES,
    HEADER_BYTES,
    SEGMENT_BYTES,
    TAG_BYTES,
    DecryptionFailed,
    ciphertext_range,
    ciphertext_size,
    decrypt_range,
    decrypt_stored_range,
    encrypt,
    new_data_key,
    plaintext_size,
)

T = TypeVar("T")
AD = b"keel-storage:0193a7c2-0000-7000-8000-000000000001"
FIRST = SEGMENT_BYTES - HEADER_BYTES  # plaintext bytes in the first segment
KEY = new_data_key()

# Sizes around every segment boundary of a four-segment object, and anything in between.
BOUNDARIES = [0, FIRST, FIRST + SEGMENT_BYTES, FIRST + 2 * SEGMENT_BYTES]
SIZES = st.one_of(
    st.builds(
        lambda base, delta: max(0, base + delta),
        st.sampled_from(BOUNDARIES),
        st.integers(-2, 2),
    ),
    st.integers(0, FIRST + 2 * SEGMENT_BYTES + 1000),
)
EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=30))


def plaintext_of(size: int, seed: int = 0) -> bytes:
    return random.Random(size * 7919 + seed).randbytes(size)


def tink_primitive(data_key: bytes = KEY) -> Any:
    handle = tink.proto_keyset_format.parse(data_key, secret_key_access.TOKEN)
    return handle.primitive(streaming_aead.StreamingAead)


def tink_encrypt(plaintext: bytes, associated_data: bytes = AD, data_key: bytes = KEY) -> bytes:
    """Tink's own encrypting stream, straight into memory (the reference ciphertext)."""
    sink = io.BytesIO()
    stream = tink_primitive(data_key).new_encrypting_stream(_Unclosable(sink), associated_data)
    stream.write(plaintext)
    stream.close()
    return sink.getvalue()


class _Unclosable(io.RawIOBase):
    """A BytesIO that survives Tink closing it."""

    def __init__(self, inner: io.BytesIO) -> None:
        super().__init__()
        self._inner = inner

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._inner.write(data)


def tink_decrypt(ciphertext: bytes, associated_data: bytes = AD) -> bytes:
    return bytes(
        tink_primitive().new_decrypting_stream(io.BytesIO(ciphertext), associated_data).read()
    )


async def chunked(data: bytes, step: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), step):
        yield data[offset : offset + step]


async def collect(chunks: AsyncIterable[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def read_range(
    ciphertext: bytes,
    size: int,
    start: int,
    end: int,
    *,
    key: bytes = KEY,
    associated_data: bytes = AD,
    step: int = 65536,
) -> bytes:
    """decrypt_range over exactly what a store read of ciphertext_range would give."""
    cstart, cend = ciphertext_range(size, start, end)
    header = ciphertext[:HEADER_BYTES] if cstart else None
    return await collect(
        decrypt_range(
            key,
            associated_data,
            chunked(ciphertext[cstart:cend], step),
            size,
            start,
            end,
            cstart,
            header=header,
        )
    )


def store_reader(
    ciphertext: bytes, reads: list[tuple[int, int]]
) -> Callable[[int, int], AsyncIterator[bytes]]:
    async def read(start: int, end: int) -> AsyncIterator[bytes]:
        reads.append((start, end))
        async for chunk in chunked(ciphertext[start:end], 1024 * 1024):
            yield chunk

    return read


class TestAgainstTink:
    @EXAMPLES
    @given(size=SIZES, data=st.data())
    def test_range_decryption_of_tink_ciphertext_equals_the_plaintext_slice(
        self, size: int, data: st.DataObject
    ) -> None:
        plaintext = plaintext_of(size)
        ciphertext = tink_encrypt(plaintext)
        assert len(ciphertext) == ciphertext_size(size)
        assert plaintext_size(len(ciphertext)) == size

        points = st.one_of(
            st.integers(0, size),
            st.sampled_from([b for b in (*BOUNDARIES, size, size - 1) if 0 <= b <= size]),
        )
        start = data.draw(points, label="start")
        end = data.draw(points.filter(lambda e: e >= start), label="end")
        step = data.draw(st.sampled_from([1000, 65536, 1024 * 1024, 3 * 1024 * 1024]))
        assert run(read_range(ciphertext, size, start, end, step=step)) == plaintext[start:end]

    @pytest.mark.parametrize(
        ("size", "start", "end"),
        [
            (0, 0, 0),  # an empty object
            (1, 0, 1),
            (FIRST, 0, FIRST),  # exactly one full segment
            (FIRST, FIRST - 1, FIRST),  # its last byte
            (FIRST + SEGMENT_BYTES, 0, FIRST + SEGMENT_BYTES),  # exactly two full segments
            (FIRST + SEGMENT_BYTES, FIRST + SEGMENT_BYTES - 1, FIRST + SEGMENT_BYTES),
            (
                FIRST + SEGMENT_BYTES,
                FIRST + SEGMENT_BYTES,
                FIRST + SEGMENT_BYTES,
            ),  # empty, at the end
            (FIRST + 1, FIRST, FIRST + 1),  # a last segment of one byte
            (3 * SEGMENT_BYTES, FIRST - 10, FIRST + SEGMENT_BYTES + 10),  # spans three segments
            (3 * SEGMENT_BYTES, FIRST + 5, FIRST + 6),  # one byte of a middle segment
            (3 * SEGMENT_BYTES, 3 * SEGMENT_BYTES - 1, 3 * SEGMENT_BYTES),  # the last byte
        ],
    )
    def test_boundary_ranges(self, size: int, start: int, end: int) -> None:
        plaintext = plaintext_of(size)
        ciphertext = tink_encrypt(plaintext)
        assert len(ciphertext) == ciphertext_size(size)
        assert run(read_range(ciphertext, size, start, end)) == plaintext[start:end]

    @EXAMPLES
    @given(size=SIZES, step=st.integers(1, 3 * 1024 * 1024), seed=st.integers(0, 3))
    def test_tink_decrypts_what_encrypt_writes(self, size: int, step: int, seed: int) -> None:
        plaintext = plaintext_of(size, seed)
        ciphertext = run(collect(encrypt(KEY, AD, chunked(plaintext, step))))
        assert len(ciphertext) == ciphertext_size(size)
        assert ciphertext[0] == HEADER_BYTES
        assert tink_decrypt(ciphertext) == plaintext
        assert run(read_range(ciphertext, size, 0, size)) == plaintext

    def test_encrypting_the_same_plaintext_twice_gives_different_ciphertexts(self) -> None:
        plaintext = plaintext_of(1000)
        first = run(collect(encrypt(KEY, AD, chunked(plaintext, 100))))
        second = run(collect(encrypt(KEY, AD, chunked(plaintext, 100))))
        assert first != second  # a fresh salt and nonce prefix each time
        assert first[1:HEADER_BYTES] != second[1:HEADER_BYTES]


class TestSizes:
    @given(size=st.one_of(st.integers(0, 2**42), st.sampled_from(BOUNDARIES)))
    def test_plaintext_size_inverts_ciphertext_size(self, size: int) -> None:
        assert plaintext_size(ciphertext_size(size)) == size

    @given(
        offset=st.integers(-2 * TAG_BYTES, 2 * TAG_BYTES),
        segments=st.integers(0, 5000),
    )
    def test_every_ciphertext_size_is_one_plaintexts_or_none(
        self, offset: int, segments: int
    ) -> None:
        length = segments * CIPHERTEXT_SEGMENT_BYTES + offset
        try:
            size = plaintext_size(length)
        except ValueError:
            # No plaintext encrypts to this length: the sizes around it map elsewhere.
            assert length < HEADER_BYTES + TAG_BYTES or (
                length % CIPHERTEXT_SEGMENT_BYTES in range(1, TAG_BYTES + 1)
            )
        else:
            assert ciphertext_size(size) == length

    def test_sizes_at_the_edges(self) -> None:
        assert ciphertext_size(0) == HEADER_BYTES + TAG_BYTES
        assert ciphertext_size(FIRST) == CIPHERTEXT_SEGMENT_BYTES
        assert ciphertext_size(FIRST + 1) == CIPHERTEXT_SEGMENT_BYTES + 1 + TAG_BYTES
        with pytest.raises(ValueError, match="too short"):
            plaintext_size(HEADER_BYTES + TAG_BYTES - 1)
        with pytest.raises(ValueError, match="no plaintext"):
            plaintext_size(CIPHERTEXT_SEGMENT_BYTES + TAG_BYTES)  # a last segment of a tag alone
        with pytest.raises(ValueError, match="not negative"):
            ciphertext_size(-1)

    def test_a_range_reads_only_the_segments_it_touches(self) -> None:
        size = 1000 * SEGMENT_BYTES  # about 1 GB: nothing is allocated here
        middle = 500 * SEGMENT_BYTES
        cstart, cend = ciphertext_range(size, middle + 10, middle + 20)
        assert (cstart, cend) == (
            _segment_start(500),
            _segment_start(501),
        )
        cstart, cend = ciphertext_range(size, size - 1, size)
        assert cend == ciphertext_size(size)
        assert cend - cstart <= CIPHERTEXT_SEGMENT_BYTES
        assert ciphertext_range(size, 0, 1) == (0, CIPHERTEXT_SEGMENT_BYTES)

    def test_decrypt_stored_range_reads_the_header_and_the_touched_segments(self) -> None:
        size = FIRST + 3 * SEGMENT_BYTES
        plaintext = plaintext_of(size)
        ciphertext = tink_encrypt(plaintext)
        reads: list[tuple[int, int]] = []
        start, end = FIRST + 2 * SEGMENT_BYTES + 5, FIRST + 2 * SEGMENT_BYTES + 50
        got = run(
            collect(
                decrypt_stored_range(KEY, AD, store_reader(ciphertext, reads), size, start, end)
            )
        )
        assert got == plaintext[start:end]
        assert reads == [(0, HEADER_BYTES), (_segment_start(3), len(ciphertext))]

        reads.clear()
        got = run(
            collect(decrypt_stored_range(KEY, AD, store_reader(ciphertext, reads), size, 3, 9))
        )
        assert got == plaintext[3:9]
        assert reads == [(0, CIPHERTEXT_SEGMENT_BYTES)]  # the header is in the first segment

    @pytest.mark.parametrize(("start", "end"), [(-1, 5), (5, 4), (0, 101)])
    def test_a_range_outside_the_object_is_refused(self, start: int, end: int) -> None:
        with pytest.raises(ValueError, match="range"):
            ciphertext_range(100, start, end)


def _segment_start(segment: int) -> int:
    return segment * CIPHERTEXT_SEGMENT_BYTES


# Four segments: the first, two full middle ones and a short last one.
TAMPER_SIZE = FIRST + 2 * SEGMENT_BYTES + 777
TAMPER_PLAINTEXT = plaintext_of(TAMPER_SIZE)
TAMPER_CIPHERTEXT = tink_encrypt(TAMPER_PLAINTEXT)


def _segments(ciphertext: bytes) -> list[bytes]:
    return [
        ciphertext[HEADER_BYTES:CIPHERTEXT_SEGMENT_BYTES],
        *(
            ciphertext[offset : offset + CIPHERTEXT_SEGMENT_BYTES]
            for offset in range(CIPHERTEXT_SEGMENT_BYTES, len(ciphertext), CIPHERTEXT_SEGMENT_BYTES)
        ),
    ]


async def _read_until_failure(
    ciphertext: bytes, size: int, start: int, end: int, **kwargs: Any
) -> tuple[bytes, BaseException | None]:
    """What a range read yields before it fails, and how it fails."""
    cstart, cend = ciphertext_range(size, start, end)
    header = ciphertext[:HEADER_BYTES] if cstart else None
    got = bytearray()
    try:
        async for piece in decrypt_range(
            kwargs.get("key", KEY),
            kwargs.get("associated_data", AD),
            chunked(ciphertext[cstart:cend], 65536),
            size,
            start,
            end,
            cstart,
            header=header,
        ):
            got += piece
    except DecryptionFailed as exc:
        return bytes(got), exc
    return bytes(got), None


class TestTampering:
    @settings(max_examples=60, deadline=None)
    @given(data=st.data())
    def test_a_flipped_byte_in_a_touched_segment_or_the_header_fails(
        self, data: st.DataObject
    ) -> None:
        start = data.draw(st.integers(0, TAMPER_SIZE), label="start")
        end = data.draw(st.integers(start, TAMPER_SIZE), label="end")
        cstart, cend = ciphertext_range(TAMPER_SIZE, start, end)
        position = data.draw(
            st.one_of(
                st.integers(0, HEADER_BYTES - 1), st.integers(max(cstart, HEADER_BYTES), cend - 1)
            ),
            label="position",
        )
        bit = data.draw(st.integers(0, 7), label="bit")
        tampered = bytearray(TAMPER_CIPHERTEXT)
        tampered[position] ^= 1 << bit

        got, error = run(_read_until_failure(bytes(tampered), TAMPER_SIZE, start, end))
        assert isinstance(error, DecryptionFailed)
        # Only segments that authenticated were yielded: the bytes before the tampered one.
        expected = TAMPER_PLAINTEXT[start:end]
        assert got == expected[: len(got)]
        if position >= HEADER_BYTES:
            tampered_segment = position // CIPHERTEXT_SEGMENT_BYTES
            first_plain_of_it = (
                0 if tampered_segment == 0 else tampered_segment * SEGMENT_BYTES - HEADER_BYTES
            )
            assert start + len(got) <= max(start, first_plain_of_it)
        else:
            assert got == b""

    @settings(max_examples=30, deadline=None)
    @given(cut=st.integers(0, len(TAMPER_CIPHERTEXT) - 1))
    def test_a_truncated_stream_fails(self, cut: int) -> None:
        async def read() -> bytes:
            return await collect(
                decrypt_range(
                    KEY, AD, chunked(TAMPER_CIPHERTEXT[:cut], 65536), TAMPER_SIZE, 0, TAMPER_SIZE, 0
                )
            )

        with pytest.raises(DecryptionFailed):
            run(read())

    def test_a_stream_longer_than_the_range_fails(self) -> None:
        ciphertext = tink_encrypt(b"hello")

        async def read() -> bytes:
            return await collect(decrypt_range(KEY, AD, chunked(ciphertext + b"x", 3), 5, 0, 5, 0))

        with pytest.raises(DecryptionFailed, match="longer"):
            run(read())

    def test_a_dropped_segment_fails(self) -> None:
        header, *segments = [TAMPER_CIPHERTEXT[:HEADER_BYTES], *_segments(TAMPER_CIPHERTEXT)]
        dropped = header + segments[0] + segments[2] + segments[3]
        # Read as the original object (its size is in the database) ...
        _, error = run(_read_until_failure(dropped + segments[3], TAMPER_SIZE, 0, TAMPER_SIZE))
        assert isinstance(error, DecryptionFailed)
        # ... or as the shorter object the ciphertext now looks like: segment numbers give it away.
        shorter = plaintext_size(len(dropped))
        got, error = run(_read_until_failure(dropped, shorter, 0, shorter))
        assert isinstance(error, DecryptionFailed)
        assert got == TAMPER_PLAINTEXT[:FIRST]

    def test_dropping_the_last_segment_fails(self) -> None:
        header, *segments = [TAMPER_CIPHERTEXT[:HEADER_BYTES], *_segments(TAMPER_CIPHERTEXT)]
        truncated = header + b"".join(segments[:3])
        shorter = plaintext_size(len(truncated))
        got, error = run(_read_until_failure(truncated, shorter, 0, shorter))
        assert isinstance(error, DecryptionFailed)  # segment 2 was not written as the last one
        assert got == TAMPER_PLAINTEXT[: FIRST + SEGMENT_BYTES]

    def test_reordered_segments_fail(self) -> None:
        header, *segments = [TAMPER_CIPHERTEXT[:HEADER_BYTES], *_segments(TAMPER_CIPHERTEXT)]
        swapped = header + segments[0] + segments[2] + segments[1] + segments[3]
        assert len(swapped) == len(TAMPER_CIPHERTEXT)
        got, error = run(_read_until_failure(swapped, TAMPER_SIZE, 0, TAMPER_SIZE))
        assert isinstance(error, DecryptionFailed)
        assert got == TAMPER_PLAINTEXT[:FIRST]
        # A range inside the moved segment alone fails as well.
        start = FIRST + 10
        got, error = run(_read_until_failure(swapped, TAMPER_SIZE, start, start + 10))
        assert (got, type(error)) == (b"", DecryptionFailed)

    def test_a_header_from_another_encryption_fails(self) -> None:
        other = tink_encrypt(TAMPER_PLAINTEXT)
        spliced = other[:HEADER_BYTES] + TAMPER_CIPHERTEXT[HEADER_BYTES:]
        got, error = run(_read_until_failure(spliced, TAMPER_SIZE, FIRST + 1, FIRST + 2))
        assert (got, type(error)) == (b"", DecryptionFailed)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"associated_data": b"keel-storage:another-object"},
            {"associated_data": b""},
            {"key": new_data_key()},
        ],
        ids=["other-associated-data", "no-associated-data", "other-key"],
    )
    def test_the_wrong_key_or_associated_data_fails(self, kwargs: dict[str, bytes]) -> None:
        for start, end in [(0, TAMPER_SIZE), (FIRST + 3, FIRST + 4), (TAMPER_SIZE, TAMPER_SIZE)]:
            got, error = run(
                _read_until_failure(TAMPER_CIPHERTEXT, TAMPER_SIZE, start, end, **kwargs)
            )
            assert (got, type(error)) == (b"", DecryptionFailed)

    def test_an_empty_object_is_authenticated_too(self) -> None:
        ciphertext = tink_encrypt(b"")
        assert run(read_range(ciphertext, 0, 0, 0)) == b""
        with pytest.raises(DecryptionFailed):
            run(read_range(ciphertext, 0, 0, 0, associated_data=b"other"))
        tampered = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
        with pytest.raises(DecryptionFailed):
            run(read_range(tampered, 0, 0, 0))

    @pytest.mark.parametrize("header", [b"", b"\x28" * 39, b"\x18" + bytes(39)])
    def test_a_malformed_header_fails(self, header: bytes) -> None:
        start = FIRST + 1
        cstart, cend = ciphertext_range(TAMPER_SIZE, start, start + 1)
        chunks = chunked(TAMPER_CIPHERTEXT[cstart:cend], 65536)

        async def read() -> bytes:
            return await collect(
                decrypt_range(KEY, AD, chunks, TAMPER_SIZE, start, start + 1, cstart, header=header)
            )

        with pytest.raises(DecryptionFailed, match="header"):
            run(read())

    def test_a_malformed_data_key_fails_decryption_and_is_refused_for_encryption(self) -> None:
        with pytest.raises(DecryptionFailed, match="data key"):
            run(read_range(TAMPER_CIPHERTEXT, TAMPER_SIZE, 0, 1, key=b"\x00garbage"))
        with pytest.raises(ValueError, match="data key"):
            run(collect(encrypt(b"\x00garbage", AD, chunked(b"abc", 1))))


class TestEncrypt:
    def test_encrypt_streams_at_constant_memory(self) -> None:
        consumed = 0
        consumed_at_first_output: int | None = None

        async def source() -> AsyncIterator[bytes]:
            nonlocal consumed
            for _ in range(8):
                consumed += 1024 * 1024
                yield bytes(1024 * 1024)
            yield bytes(5 * 1024 * 1024)  # one huge chunk

        async def drive() -> list[int]:
            nonlocal consumed_at_first_output
            sizes = []
            async for piece in encrypt(KEY, AD, source()):
                if consumed_at_first_output is None:
                    consumed_at_first_output = consumed
                sizes.append(len(piece))
            return sizes

        sizes = run(drive())
        assert sum(sizes) == ciphertext_size(13 * 1024 * 1024)
        assert max(sizes) <= 2 * CIPHERTEXT_SEGMENT_BYTES
        assert consumed_at_first_output is not None
        assert consumed_at_first_output <= 3 * 1024 * 1024

    def test_an_error_from_the_source_propagates(self) -> None:
        async def source() -> AsyncIterator[bytes]:
            yield bytes(3 * 1024 * 1024)
            raise OSError("client went away")

        with pytest.raises(OSError, match="client went away"):
            run(collect(encrypt(KEY, AD, source())))


class TestDataKeys:
    def test_a_data_key_is_a_tink_keyset_with_one_aes256_gcm_hkdf_1mb_key(self) -> None:
        key = new_data_key()
        assert key != new_data_key()
        keyset = tink_pb2.Keyset.FromString(key)
        assert len(keyset.key) == 1
        assert keyset.key[0].key_data.type_url.endswith("AesGcmHkdfStreamingKey")
        # Tink reads it back, and its primitive decrypts what encrypt writes.
        ciphertext = run(collect(encrypt(key, AD, chunked(b"secret", 2))))
        assert (
            bytes(tink_primitive(key).new_decrypting_stream(io.BytesIO(ciphertext), AD).read())
            == b"secret"
        )

    def test_a_keyset_of_two_keys_or_another_template_is_refused(self) -> None:
        handle = tink.new_keyset_handle(
            streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB
        )
        keyset = tink_pb2.Keyset.FromString(
            tink.proto_keyset_format.serialize(handle, secret_key_access.TOKEN)
        )
        second = tink_pb2.Keyset.FromString(new_data_key()).key[0]
        keyset.key.append(second)
        with pytest.raises(ValueError, match="exactly one key"):
            run(collect(encrypt(keyset.SerializeToString(), AD, chunked(b"x", 1))))

        other = tink.new_keyset_handle(
            streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_4KB
        )
        serialized = tink.proto_keyset_format.serialize(other, secret_key_access.TOKEN)
        with pytest.raises(ValueError, match="AES256_GCM_HKDF_1MB"):
            run(collect(encrypt(serialized, AD, chunked(b"x", 1))))

    def test_the_arguments_of_a_range_read_are_checked(self) -> None:
        ciphertext = tink_encrypt(TAMPER_PLAINTEXT)
        start = FIRST + 1
        cstart, _ = ciphertext_range(TAMPER_SIZE, start, start + 1)
        with pytest.raises(ValueError, match="header="):
            run(
                collect(
                    decrypt_range(
                        KEY,
                        AD,
                        chunked(ciphertext[cstart:], 9),
                        TAMPER_SIZE,
                        start,
                        start + 1,
                        cstart,
                    )
                )
            )
        with pytest.raises(ValueError, match="cstart"):
            run(
                collect(
                    decrypt_range(KEY, AD, chunked(ciphertext, 9), TAMPER_SIZE, start, start + 1, 0)
                )
            )
