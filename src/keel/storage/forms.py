"""Streaming ``multipart/form-data`` parsing for presigned POST forms, at constant memory.

A POST form is laid out as S3's: text fields (``key``, ``policy``, ``signature``, optional
``Content-Type``), then the ``file`` part, last. :func:`read_post_form` reads the request
body only as far as the file part's headers and returns the text fields with the file as
a stream not read yet, so the caller checks the policy before it reads a byte of the file,
and may stop reading at any point (a ``content-length-range`` exceeded)::

    boundary = form_boundary(request.headers.get("content-type"))
    form = await read_post_form(boundary, request.stream())
    policy = verify_post_policy(key, form.fields, filename=form.file.filename, ...)
    await store.write(locator, enforce_content_length(policy, form.file.chunks))

The bytes go through python-multipart's streaming :class:`MultipartParser` (callbacks, no
spooling to disk as ``request.form()`` does) in slices of at most :data:`PARSE_BYTES`, each
slice's events consumed before the next is parsed: memory stays bounded whatever the size
of the file or of the body's chunks. Text fields are capped in size and number; a form
without a file part, with a part after the file, truncated, or otherwise malformed is refused
with :class:`FormInvalid` (raised by the file's stream when the problem lies after the file).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from keel.core.errors import BadRequest

#: The largest text field accepted, in bytes (a presigned POST policy fits).
MAX_FIELD_BYTES = 8192
#: The most text fields accepted before the file part.
MAX_FIELDS = 16
#: The most body bytes handed to the parser at once: bounds what one step holds in memory.
PARSE_BYTES = 64 * 1024
#: The name of the part that carries the file (as S3's POST).
FILE_FIELD = "file"

# RFC 2046 section 5.1.1: 1 to 70 characters of `bchars`, the last one not a space. The
# parser relies on it (a boundary holds no CR), so anything else is refused up front.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# Headers of a part beyond these are not needed; the parser bounds their count and size.
_MAX_HEADERS_PER_PART = 8


class FormInvalid(BadRequest):
    """A request body that is not an acceptable POST form: ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Invalid form: {reason}.", reason=reason)
        self.reason = reason


@dataclass(frozen=True)
class FormFile:
    """The ``file`` part: its name and declared type, and its bytes as a one-pass stream
    (``await chunks.aclose()`` when stopping early: nothing more is read from the body).

    ``chunks`` raises :class:`FormInvalid` if the body turns out malformed after the file's
    bytes (a part after the file, a truncated body) — only once every byte was yielded, so
    a caller storing the stream must treat that error as a failed upload.
    """

    filename: str
    content_type: str | None
    chunks: AsyncGenerator[bytes, None]


@dataclass(frozen=True)
class PostForm:
    """A POST form read up to its file: the text fields (names in lower case) and the file."""

    fields: Mapping[str, str]
    file: FormFile


def form_boundary(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type header, checked (RFC 2046)."""
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise FormInvalid("the body is not multipart/form-data")
    boundary = options.get(b"boundary")
    if boundary is None:
        raise FormInvalid("the Content-Type has no boundary")
    if not _BOUNDARY.fullmatch(boundary.decode("latin-1")):
        raise FormInvalid("the boundary is not a valid multipart boundary")
    return boundary


async def read_post_form(
    boundary: bytes,
    body: AsyncIterable[bytes],
    *,
    max_field_bytes: int = MAX_FIELD_BYTES,
    max_fields: int = MAX_FIELDS,
) -> PostForm:
    """Read ``body`` up to the start of the file's bytes: the text fields and the file stream.

    Raises :class:`FormInvalid`: an invalid boundary, a malformed or truncated body, a field
    over ``max_field_bytes`` or not UTF-8, more than ``max_fields`` fields, a field name given
    twice, a file in a part other than ``file``, no ``file`` part.
    """
    if not _BOUNDARY.fullmatch(boundary.decode("latin-1")):
        raise FormInvalid("the boundary is not a valid multipart boundary")
    parts = _PartEvents(boundary, body)
    fields: dict[str, str] = {}
    while True:
        event = await parts.next()
        if event is _Mark.BODY_END:
            raise FormInvalid("the form has no file part")
        if not isinstance(event, _PartStart):  # pragma: no cover (the parser's order)
            raise FormInvalid("the body is malformed")
        if event.name == FILE_FIELD:
            file = FormFile(
                filename=event.filename or "",
                content_type=event.content_type,
                chunks=_file_chunks(parts),
            )
            return PostForm(fields=fields, file=file)
        if event.filename is not None:
            raise FormInvalid(f"only the {FILE_FIELD} part may carry a file")
        if len(fields) >= max_fields:
            raise FormInvalid("the form has too many fields")
        if event.name in fields:
            raise FormInvalid("a field is given twice")
        value = bytearray()
        while (data := await parts.next()) is not _Mark.PART_END:
            if not isinstance(data, bytes):  # pragma: no cover (the parser's order)
                raise FormInvalid("the body is malformed")
            value += data
            if len(value) > max_field_bytes:
                raise FormInvalid("a field is too large")
        try:
            fields[event.name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise FormInvalid("a field is not UTF-8 text") from None


async def _file_chunks(parts: _PartEvents) -> AsyncGenerator[bytes, None]:
    while (event := await parts.next()) is not _Mark.PART_END:
        if not isinstance(event, bytes):  # pragma: no cover (the parser's order)
            raise FormInvalid("the body is malformed")
        if event:
            yield event
    # S3 wants the file last; a part after it would be read after the policy was checked.
    if await parts.next() is not _Mark.BODY_END:
        raise FormInvalid(f"a field follows the {FILE_FIELD} part")


# -- the parser's callbacks as a stream of events ----------------------------------------------


class _Mark(enum.Enum):
    PART_END = enum.auto()
    BODY_END = enum.auto()


@dataclass(frozen=True)
class _PartStart:
    name: str
    filename: str | None
    content_type: str | None


_Event = _PartStart | bytes | _Mark


class _PartEvents:
    """The parser's callbacks for ``body``, queued and handed out one at a time.

    The body is parsed a slice (at most :data:`PARSE_BYTES`) at a time and only once the
    events of the previous slice were all taken, so the queue holds at most one slice's data.
    """

    def __init__(self, boundary: bytes, body: AsyncIterable[bytes]) -> None:
        self._body = aiter(body)
        self._chunk = b""
        self._offset = 0
        self._events: deque[_Event] = deque()
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._headers.clear,
                "on_header_field": self._on_header_name,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
            max_header_count=_MAX_HEADERS_PER_PART,
        )

    async def next(self) -> _Event:
        while not self._events:
            if self._ended:
                # Anything after the closing delimiter is an epilogue: never read.
                return _Mark.BODY_END
            if self._offset >= len(self._chunk):
                try:
                    chunk = await anext(self._body)
                except StopAsyncIteration:
                    raise FormInvalid("the body ends before the form does") from None
                self._chunk, self._offset = bytes(chunk), 0
                continue
            piece = self._chunk[self._offset : self._offset + PARSE_BYTES]
            self._offset += len(piece)
            try:
                self._parser.write(piece)
            except FormParserError:
                raise FormInvalid("the body is malformed") from None
        return self._events.popleft()

    def _on_header_name(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers.append((bytes(self._header_name).lower(), bytes(self._header_value)))
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition: bytes | None = None
        content_type: bytes | None = None
        for header, value in self._headers:
            if header == b"content-disposition":
                if disposition is not None:
                    raise FormInvalid("a part has two Content-Disposition headers")
                disposition = value
            elif header == b"content-type":
                content_type = value
        if disposition is None:
            raise FormInvalid("a part has no Content-Disposition")
        # Header values are bytes; browsers send file names in UTF-8. Decoded as latin-1
        # (lossless) for the header parser, whose values come back as the original bytes.
        kind, options = parse_options_header(disposition.decode("latin-1"))
        name = options.get(b"name")
        if kind != b"form-data" or not name:
            raise FormInvalid("a part is not a named form-data part")
        filename = options.get(b"filename")
        try:
            self._events.append(
                _PartStart(
                    name=name.decode("utf-8").lower(),
                    filename=None if filename is None else filename.decode("utf-8"),
                    content_type=None
                    if content_type is None
                    else content_type.decode("utf-8").strip(),
                )
            )
        except UnicodeDecodeError:
            raise FormInvalid("a part's headers are not UTF-8 text") from None

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._events.append(data[start:end])

    def _on_part_end(self) -> None:
        self._events.append(_Mark.PART_END)

    def _on_end(self) -> None:
        self._ended = True
