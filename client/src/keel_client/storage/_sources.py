"""What ``upload`` reads from: bytes, a path, a binary file or an async iterable of bytes,
each read in chunks of at most :data:`CHUNK_BYTES` (never the whole of a file).

A source gives the whole body (:meth:`Source.body`, for one ``PUT``) or its parts
(:meth:`Source.parts`, for a multipart upload). A part's body can be read again for a retry:
a path or bytes are read again from their offset; a file or a stream is read once, so each
of its parts is held in memory while it is in flight (``concurrency`` parts at most).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import anyio

__all__ = ["CHUNK_BYTES", "Part", "Source", "UploadSource", "source_of"]

#: The largest chunk read from a source or written to a destination at once.
CHUNK_BYTES = 1024 * 1024

#: What ``upload`` takes: the bytes, a path, a binary file open for reading, or an async
#: iterable of bytes (a request body, a generator).
UploadSource = (
    bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes] | AsyncIterable[bytes]
)


@dataclass
class Part:
    """One part of a multipart upload: its number (from 1), size and a fresh body per call."""

    number: int
    size: int
    body: Callable[[], AsyncIterator[bytes]]

    async def sha256(self) -> str:
        digest = hashlib.sha256()
        async for chunk in self.body():
            digest.update(chunk)
        return digest.hexdigest()


class Source(Protocol):
    #: Bytes in all, when known before reading (a path, bytes, a seekable file).
    size: int | None
    #: Whether :meth:`body` may be called again (a retry of a whole ``PUT``).
    can_reopen: bool

    def body(self) -> AsyncIterator[bytes]: ...

    def parts(self, part_size: int) -> AsyncIterator[Part]: ...


async def _chunks_of(
    data: memoryview, start: int = 0, end: int | None = None
) -> AsyncIterator[bytes]:
    end = len(data) if end is None else end
    for offset in range(start, end, CHUNK_BYTES):
        yield bytes(data[offset : min(offset + CHUNK_BYTES, end)])


class _BytesSource:
    can_reopen = True

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = memoryview(data).cast("B")
        self.size: int | None = len(self._data)

    def body(self) -> AsyncIterator[bytes]:
        return _chunks_of(self._data)

    async def parts(self, part_size: int) -> AsyncIterator[Part]:
        size = len(self._data)
        for number, start in enumerate(range(0, max(size, 1), part_size), start=1):
            end = min(start + part_size, size)
            yield Part(number, end - start, functools.partial(_chunks_of, self._data, start, end))


class _PathSource:
    can_reopen = True

    def __init__(self, path: Path) -> None:
        self._path = path
        self.size: int | None = path.stat().st_size

    async def _read(self, start: int, end: int) -> AsyncIterator[bytes]:
        file = await anyio.open_file(self._path, "rb")
        try:
            await file.seek(start)
            left = end - start
            while left > 0:
                chunk = await file.read(min(CHUNK_BYTES, left))
                if not chunk:
                    raise OSError(f"{self._path} shrank while it was being uploaded")
                left -= len(chunk)
                yield chunk
        finally:
            await file.aclose()

    def body(self) -> AsyncIterator[bytes]:
        assert self.size is not None
        return self._read(0, self.size)

    async def parts(self, part_size: int) -> AsyncIterator[Part]:
        size = self.size or 0
        for number, start in enumerate(range(0, max(size, 1), part_size), start=1):
            end = min(start + part_size, size)
            yield Part(number, end - start, functools.partial(self._read, start, end))


class _StreamSource:
    """A file read once, or an async iterable: sequential, parts held while in flight."""

    def __init__(self, stream: AsyncIterable[bytes], *, size: int | None = None,
                 rewind: Callable[[], None] | None = None) -> None:  # fmt: skip
        self._stream = stream
        self._rewind = rewind
        self._started = False
        self.size = size
        self.can_reopen = rewind is not None

    async def body(self) -> AsyncIterator[bytes]:
        if self._started:
            if self._rewind is None:
                raise RuntimeError("this stream was read already and cannot be read again")
            self._rewind()
        self._started = True
        async for chunk in self._stream:
            for offset in range(0, len(chunk), CHUNK_BYTES):
                yield bytes(chunk[offset : offset + CHUNK_BYTES])

    async def parts(self, part_size: int) -> AsyncIterator[Part]:
        buffer = bytearray()
        number = 0
        async for chunk in self.body():
            buffer += chunk
            while len(buffer) >= part_size:
                number += 1
                yield _held(number, bytes(buffer[:part_size]))
                del buffer[:part_size]
        if buffer or number == 0:
            yield _held(number + 1, bytes(buffer))


def _held(number: int, data: bytes) -> Part:
    view = memoryview(data)
    return Part(number, len(data), lambda: _chunks_of(view))


async def _file_chunks(file: IO[bytes]) -> AsyncIterator[bytes]:
    while True:
        chunk = await anyio.to_thread.run_sync(file.read, CHUNK_BYTES)
        if not chunk:
            return
        yield chunk


def _file_source(file: IO[bytes]) -> _StreamSource:
    try:
        seekable = file.seekable()
    except (AttributeError, ValueError):
        seekable = False
    if not seekable:
        return _StreamSource(_file_chunks(file))
    start = file.tell()
    size = file.seek(0, io.SEEK_END) - start
    file.seek(start)
    chunks = _RewindableChunks(file, start)
    return _StreamSource(chunks, size=size, rewind=chunks.rewind)


class _RewindableChunks:
    def __init__(self, file: IO[bytes], start: int) -> None:
        self._file, self._start = file, start

    def rewind(self) -> None:
        self._file.seek(self._start)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _file_chunks(self._file)


def source_of(value: Any) -> Source:
    """The source for what the caller gave ``upload``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return _BytesSource(value)
    if isinstance(value, str | os.PathLike):
        return _PathSource(Path(value))
    if hasattr(value, "read"):
        if isinstance(value, io.TextIOBase):
            raise TypeError("open the file in binary mode ('rb'): bytes are uploaded, not text")
        return _file_source(value)
    if hasattr(value, "__aiter__"):
        return _StreamSource(value)
    raise TypeError(
        "upload takes bytes, a path, a binary file or an async iterable of bytes, "
        f"not {type(value).__name__}"
    )
