"""Virus scanning: an async client of clamd's ``INSTREAM`` command.

Every stored version is streamed to clamd before anyone may read it (the ``storage.scan``
job). The protocol is small enough to speak directly: the command ``zINSTREAM\\0``, then the
body as chunks each prefixed by its length (4 bytes, big-endian), then a zero length; clamd
answers one NUL-terminated line::

    stream: OK
    stream: Eicar-Test-Signature FOUND
    INSTREAM size limit exceeded. ERROR
    <anything else> ERROR

Written here rather than taken from PyPI: the ``clamd``/``pyclamd`` packages are synchronous
and unmaintained (no release in years), and the protocol is a dozen lines.

Only a clear ``OK`` is clean and only a clear ``FOUND`` is infected. Everything else, an
unreachable daemon, a timeout, a connection closed early, the size limit, a garbled or
oversized answer, raises :class:`ScanFailed`: the caller retries and finally rejects the
object; a failure is never read as clean.

clamd's own limits decide what it looks at. Operators should set ``StreamMaxLength`` at or
below ``MaxFileSize`` and ``MaxScanSize`` and turn on ``AlertExceedsMax``: otherwise clamd
answers ``OK`` for a file it skipped for being too large, and that is a clean verdict this
client cannot tell from a real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, urlsplit

#: Bytes sent per INSTREAM chunk: a caller's larger chunks are split, smaller ones sent as is.
CHUNK_BYTES: Final = 256 * 1024
#: clamd's answers are one short line; anything longer is garbage.
MAX_ANSWER_BYTES: Final = 4096
#: How long to wait for clamd's answer after a write failed (it may have said why first).
_LAST_WORDS_SECONDS: Final = 1.0

_TERMINATOR: Final = b"\0"
_END_OF_STREAM: Final = (0).to_bytes(4, "big")
#: ``stream: <signature> FOUND``: the signature is printable ASCII without spaces at its ends
#: (clamd adds ``.UNOFFICIAL`` to signatures from databases it did not get from ClamAV, and
#: ``(<md5>:<size>)`` with ``ExtendedDetectionInfo``).
_FOUND: Final = re.compile(r"stream: ([!-~](?:[ -~]{0,254}[!-~])?) FOUND")
_SIZE_LIMIT: Final = "INSTREAM size limit exceeded. ERROR"


@dataclass(frozen=True, slots=True)
class Verdict:
    """clamd's decision on one stream: clean, or infected with ``signature``."""

    clean: bool
    signature: str | None = None


class ScanFailed(Exception):
    """No verdict: clamd unreachable, too slow, over its size limit or answering garbage.

    Never means clean. The message says what happened (no object bytes, no addresses beyond
    clamd's own). ``retryable`` is False when another attempt cannot succeed (the object is
    over clamd's ``StreamMaxLength``): the caller may reject it at once.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class _Address:
    host: str | None  # TCP
    port: int | None
    path: str | None  # unix socket

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def _parse_address(address: str) -> _Address:
    """``tcp://host:port`` or ``unix:///absolute/path``; ValueError otherwise."""
    parts = urlsplit(address)
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path not in ("", "/"):
            raise ValueError(f"a clamd TCP address is tcp://host:port, not {address!r}")
        return _Address(host=parts.hostname, port=port, path=None)
    if parts.scheme == "unix":
        path = unquote(parts.path)
        if parts.netloc or not path.startswith("/"):
            raise ValueError(f"a clamd socket address is unix:///absolute/path, not {address!r}")
        return _Address(host=None, port=None, path=path)
    raise ValueError(f"a clamd address starts with tcp:// or unix://, not {address!r}")


def parse_answer(answer: bytes) -> Verdict:
    """clamd's answer to INSTREAM (without its NUL) as a verdict; ScanFailed unless OK or FOUND."""
    try:
        text = answer.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ScanFailed("clamd answered bytes that are not ASCII") from None
    if text == "stream: OK":
        return Verdict(clean=True)
    found = _FOUND.fullmatch(text)
    if found is not None:
        return Verdict(clean=False, signature=found.group(1))
    if text == _SIZE_LIMIT:
        raise ScanFailed("the object is larger than clamd's StreamMaxLength", retryable=False)
    if text.endswith(" ERROR"):
        raise ScanFailed(f"clamd could not scan the stream: {text[:200]}")
    raise ScanFailed(f"clamd answered something unexpected: {text[:80]!r}")


def _split(chunk: bytes) -> list[bytes]:
    return [chunk[start : start + CHUNK_BYTES] for start in range(0, len(chunk), CHUNK_BYTES)]


class Clamd:
    """A clamd daemon at ``tcp://host:port`` or ``unix:///path``; one connection per call.

    ``timeout`` bounds each wait on clamd: the connection, every write (clamd not reading is
    a hang too) and the answer, which clamd sends once it has scanned the whole stream. Time
    spent producing the caller's chunks does not count.

    >>> verdict = await Clamd("tcp://127.0.0.1:3310").scan(blob_chunks)
    >>> verdict.clean, verdict.signature
    (False, 'Eicar-Test-Signature')
    """

    def __init__(self, address: str, *, timeout: float = 30.0) -> None:
        if timeout <= 0:
            raise ValueError("the clamd timeout must be positive")
        self._address = _parse_address(address)
        self.timeout = timeout

    @property
    def address(self) -> str:
        return str(self._address)

    async def scan(self, chunks: AsyncIterable[bytes]) -> Verdict:
        """Stream ``chunks`` to clamd (INSTREAM) and return its verdict.

        Raises :class:`ScanFailed` for any outcome but a clear clean or infected answer. An
        exception raised by ``chunks`` itself propagates unchanged.
        """
        reader, writer = await self._connect()
        try:
            try:
                await self._send(writer, b"zINSTREAM\0")
                async for chunk in chunks:
                    for piece in _split(chunk):
                        await self._send(writer, len(piece).to_bytes(4, "big") + piece)
                await self._send(writer, _END_OF_STREAM)
            except ScanFailed as failure:
                # clamd stops reading and closes once a stream passes its StreamMaxLength,
                # after saying so: report its reason when it arrived.
                answer = await self._last_words(reader)
                if answer is not None:
                    parse_answer(answer)  # raises ScanFailed with clamd's reason
                raise failure
            return parse_answer(await self._answer(reader))
        finally:
            await self._close(writer)

    async def ping(self) -> bool:
        """Whether clamd answers ``PONG`` to ``PING`` within the timeout (never raises)."""
        try:
            reader, writer = await self._connect()
        except ScanFailed:
            return False
        try:
            await self._send(writer, b"zPING\0")
            return await self._answer(reader) == b"PONG"
        except ScanFailed:
            return False
        finally:
            await self._close(writer)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        address = self._address
        try:
            async with asyncio.timeout(self.timeout):
                if address.path is not None:
                    return await asyncio.open_unix_connection(address.path, limit=MAX_ANSWER_BYTES)
                return await asyncio.open_connection(
                    address.host, address.port, limit=MAX_ANSWER_BYTES
                )
        except TimeoutError:
            raise ScanFailed(
                f"clamd at {address} did not accept a connection within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise ScanFailed(
                f"clamd at {address} is unreachable ({exc.strerror or type(exc).__name__})"
            ) from None

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        try:
            writer.write(data)
            async with asyncio.timeout(self.timeout):
                await writer.drain()
        except TimeoutError:
            raise ScanFailed(
                f"clamd at {self._address} stopped reading for {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise ScanFailed(
                f"the connection to clamd at {self._address} broke while sending "
                f"({exc.strerror or type(exc).__name__})"
            ) from None

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                answer = await reader.readuntil(_TERMINATOR)
        except TimeoutError:
            raise ScanFailed(
                f"clamd at {self._address} did not answer within {self.timeout:g} s"
            ) from None
        except asyncio.IncompleteReadError:
            raise ScanFailed(
                f"clamd at {self._address} closed the connection without an answer"
            ) from None
        except asyncio.LimitOverrunError:
            raise ScanFailed(
                f"clamd at {self._address} answered more than {MAX_ANSWER_BYTES} bytes"
            ) from None
        except OSError as exc:
            raise ScanFailed(
                f"the connection to clamd at {self._address} broke while reading "
                f"({exc.strerror or type(exc).__name__})"
            ) from None
        return answer[: -len(_TERMINATOR)]

    async def _last_words(self, reader: asyncio.StreamReader) -> bytes | None:
        """An answer clamd sent before the connection broke, if one is there."""
        try:
            async with asyncio.timeout(min(self.timeout, _LAST_WORDS_SECONDS)):
                answer = await reader.readuntil(_TERMINATOR)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        return answer[: -len(_TERMINATOR)]

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_LAST_WORDS_SECONDS):
                await writer.wait_closed()
