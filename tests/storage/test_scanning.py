"""keel.storage.scanning: clamd's INSTREAM against a real clamd, and against fakes that fail.

The real daemon (``clamd_server``, tests/support/clamd.py) knows two signatures the tests
wrote: EICAR by its hash and a marker string anywhere in a stream. The fakes are TCP servers
on 127.0.0.1 that hang, stop reading, close early or answer garbage: each of those is a
:class:`ScanFailed`, never a clean verdict.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable

import pytest

from keel.storage.scanning import CHUNK_BYTES, Clamd, ScanFailed, Verdict, parse_answer
from tests.support.clamd import (
    EICAR,
    EICAR_SIGNATURE,
    MARKER,
    MARKER_SIGNATURE,
    STREAM_MAX_BYTES,
    ClamdServer,
    fake_clamd,
    read_instream,
)
from tests.support.keel_process import free_port

MIB = 1024 * 1024
#: Every test's own bound: nothing here may hang the suite.
TEST_SECONDS = 20


async def stream(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def scan(clamd: Clamd, chunks: Iterable[bytes]) -> Verdict:
    async with asyncio.timeout(TEST_SECONDS):
        return await clamd.scan(stream(chunks))


# -- a real clamd ------------------------------------------------------------------------------


class TestRealClamd:
    async def test_eicar_is_infected_with_its_signature_name(
        self, clamd_server: ClamdServer
    ) -> None:
        verdict = await scan(Clamd(clamd_server.address), [EICAR[:10], EICAR[10:40], EICAR[40:]])
        assert verdict == Verdict(clean=False, signature=EICAR_SIGNATURE)

    async def test_random_three_mib_in_large_chunks_is_clean(
        self, clamd_server: ClamdServer
    ) -> None:
        chunks = [os.urandom(MIB) for _ in range(3)]  # each split into INSTREAM chunks
        assert await scan(Clamd(clamd_server.address), chunks) == Verdict(clean=True)

    async def test_empty_stream_is_clean(self, clamd_server: ClamdServer) -> None:
        assert await scan(Clamd(clamd_server.address), []) == Verdict(clean=True)

    async def test_signature_across_chunk_boundaries_is_found(
        self, clamd_server: ClamdServer
    ) -> None:
        # The marker straddles an INSTREAM chunk boundary inside one caller chunk, and the
        # caller's own chunk boundary too: clamd must see the bytes whole and in order.
        body = os.urandom(CHUNK_BYTES - 7) + MARKER + os.urandom(CHUNK_BYTES)
        middle = CHUNK_BYTES - 3
        verdict = await scan(Clamd(clamd_server.address), [body[:middle], body[middle:]])
        assert verdict == Verdict(clean=False, signature=MARKER_SIGNATURE)

    async def test_a_stream_over_stream_max_length_fails(self, clamd_server: ClamdServer) -> None:
        chunk = os.urandom(MIB)
        chunks = [chunk] * (STREAM_MAX_BYTES // MIB + 2)
        with pytest.raises(ScanFailed, match="StreamMaxLength") as failure:
            await scan(Clamd(clamd_server.address), chunks)
        assert failure.value.retryable is False  # another attempt cannot pass

    async def test_over_a_unix_socket(self, clamd_server: ClamdServer) -> None:
        clamd = Clamd(clamd_server.unix_address)
        assert await clamd.ping() is True
        assert (await scan(clamd, [EICAR])).signature == EICAR_SIGNATURE
        assert (await scan(clamd, [b"hello"])).clean is True

    async def test_ping_answers(self, clamd_server: ClamdServer) -> None:
        assert await Clamd(clamd_server.address).ping() is True

    async def test_concurrent_scans_each_get_their_own_verdict(
        self, clamd_server: ClamdServer
    ) -> None:
        clamd = Clamd(clamd_server.address)
        verdicts = await asyncio.gather(
            scan(clamd, [EICAR]),
            scan(clamd, [b"clean"]),
            scan(clamd, [MARKER]),
            scan(clamd, [EICAR]),
        )
        assert [verdict.signature for verdict in verdicts] == [
            EICAR_SIGNATURE,
            None,
            MARKER_SIGNATURE,
            EICAR_SIGNATURE,
        ]

    async def test_an_error_of_the_callers_stream_propagates(
        self, clamd_server: ClamdServer
    ) -> None:
        async def broken() -> AsyncIterator[bytes]:
            yield b"some bytes"
            raise LookupError("the blob went away")

        with pytest.raises(LookupError, match="went away"):
            async with asyncio.timeout(TEST_SECONDS):
                await Clamd(clamd_server.address).scan(broken())
        # The daemon is fine afterwards.
        assert await Clamd(clamd_server.address).ping() is True


# -- daemons that fail ------------------------------------------------------------------------


class TestFailingDaemon:
    async def test_nothing_listening_fails(self) -> None:
        clamd = Clamd(f"tcp://127.0.0.1:{free_port()}", timeout=2)
        with pytest.raises(ScanFailed, match="unreachable"):
            await scan(clamd, [b"hello"])
        assert await clamd.ping() is False

    async def test_missing_unix_socket_fails(self, tmp_path: object) -> None:
        clamd = Clamd(f"unix://{tmp_path}/nothing.sock", timeout=2)
        with pytest.raises(ScanFailed, match="unreachable"):
            await scan(clamd, [b"hello"])

    async def test_a_daemon_that_never_answers_fails_within_the_timeout(self) -> None:
        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_instream(reader)
            await asyncio.sleep(3600)

        async with fake_clamd(hang) as address:
            clamd = Clamd(address, timeout=0.5)
            started = time.monotonic()
            with pytest.raises(ScanFailed, match=r"did not answer within 0\.5 s") as failure:
                await scan(clamd, [b"hello", b"world"])
            assert failure.value.retryable is True
            elapsed = time.monotonic() - started
            assert await clamd.ping() is False
        assert 0.45 <= elapsed < 5

    async def test_a_daemon_that_stops_reading_fails_within_the_timeout(self) -> None:
        async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(3600)  # never reads: the client's writes fill the buffers

        chunk = os.urandom(MIB)
        async with fake_clamd(stall) as address:
            started = time.monotonic()
            with pytest.raises(ScanFailed, match="stopped reading"):
                await scan(Clamd(address, timeout=0.5), [chunk] * 64)
        assert time.monotonic() - started < 10

    async def test_a_daemon_that_closes_before_answering_fails(self) -> None:
        async def close_after_command(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await reader.readuntil(b"\0")
            writer.close()

        async with fake_clamd(close_after_command) as address:
            with pytest.raises(ScanFailed, match=r"closed the connection|broke while sending"):
                await scan(Clamd(address, timeout=2), [os.urandom(MIB)] * 8)

    async def test_a_daemon_that_closes_after_the_stream_fails(self) -> None:
        async def close_after_stream(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            await read_instream(reader)
            writer.write(b"stream: O")  # half an answer, then the end
            writer.close()

        async with fake_clamd(close_after_stream) as address:
            with pytest.raises(ScanFailed, match="closed the connection without an answer"):
                await scan(Clamd(address, timeout=2), [b"hello"])

    @pytest.mark.parametrize(
        "answer",
        [
            b"stream: maybe\0",
            b"stream: OK but not really\0",
            b"stream:  FOUND\0",
            b"stream: FOUND\0",
            b"OK\0",
            b"PONG\0",
            b"stream: \xffOK\0",
            b"\0",
            b"stream: Some.Error ERROR\0",
            b"INSTREAM size limit exceeded. ERROR\0",
            b"stream: " + b"A" * 5000 + b" FOUND\0",
        ],
    )
    async def test_a_daemon_answering_anything_but_ok_or_found_fails(self, answer: bytes) -> None:
        async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_instream(reader)
            writer.write(answer)
            await writer.drain()
            await asyncio.sleep(3600)

        async with fake_clamd(garbage) as address:
            with pytest.raises(ScanFailed):
                await scan(Clamd(address, timeout=2), [b"hello"])

    async def test_the_fake_sees_the_stream_the_client_sent(self) -> None:
        # The fakes' protocol reader agrees with the client (so the failures above are the
        # failures they claim to be): chunks of at most CHUNK_BYTES, in order, then zero.
        received: list[bytes] = []

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.append(await read_instream(reader))
            writer.write(b"stream: OK\0")
            await writer.drain()

        body = os.urandom(CHUNK_BYTES * 2 + 5)
        async with fake_clamd(echo) as address:
            verdict = await scan(Clamd(address), [body[:3], body[3:]])
        assert verdict == Verdict(clean=True)
        assert received == [body]


# -- the answer and the address, without a daemon ------------------------------------------------


class TestParseAnswer:
    def test_ok_is_clean(self) -> None:
        assert parse_answer(b"stream: OK") == Verdict(clean=True)

    def test_found_names_the_signature(self) -> None:
        assert parse_answer(b"stream: Win.Test.EICAR_HDB-1 FOUND") == Verdict(
            clean=False, signature="Win.Test.EICAR_HDB-1"
        )

    def test_found_with_extended_detection_info_keeps_it(self) -> None:
        answer = b"stream: Eicar-Signature(44d88612fea8a8f36de82e1278abb02f:68) FOUND"
        assert (
            parse_answer(answer).signature == "Eicar-Signature(44d88612fea8a8f36de82e1278abb02f:68)"
        )

    def test_size_limit_says_so(self) -> None:
        with pytest.raises(ScanFailed, match="StreamMaxLength"):
            parse_answer(b"INSTREAM size limit exceeded. ERROR")

    def test_an_error_carries_clamds_reason(self) -> None:
        with pytest.raises(ScanFailed, match="Can't allocate memory"):
            parse_answer(b"stream: Can't allocate memory ERROR")


class TestAddress:
    @pytest.mark.parametrize(
        ("address", "shown"),
        [
            ("tcp://127.0.0.1:3310", "tcp://127.0.0.1:3310"),
            ("tcp://[::1]:3310", "tcp://[::1]:3310"),
            ("tcp://clamd.internal:3310/", "tcp://clamd.internal:3310"),
            ("unix:///run/clamav/clamd.ctl", "unix:///run/clamav/clamd.ctl"),
        ],
    )
    def test_accepted(self, address: str, shown: str) -> None:
        assert Clamd(address).address == shown

    @pytest.mark.parametrize(
        "address",
        [
            "127.0.0.1:3310",
            "tcp://127.0.0.1",
            "tcp://:3310",
            "tcp://127.0.0.1:notaport",
            "tcp://127.0.0.1:3310/path",
            "unix://relative/clamd.ctl",
            "unix://",
            "http://127.0.0.1:3310",
        ],
    )
    def test_refused(self, address: str) -> None:
        with pytest.raises(ValueError, match="clamd"):
            Clamd(address)

    def test_timeout_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="timeout"):
            Clamd("tcp://127.0.0.1:3310", timeout=0)
