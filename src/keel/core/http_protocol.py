"""uvicorn's HTTP protocol, taught Vault's ``LIST`` method and a bound on the request head.

Vault clients (``hvac``, the ``vault`` CLI) list keys with the method ``LIST``. The fast HTTP
parser uvicorn uses (llhttp, through ``httptools``) knows a fixed set of methods and answers
anything else with 400 before Keel sees it. A request line starting with ``LIST`` is read as
``GET`` with ``list=true`` added to its query string, which Vault accepts as the same request
and Keel's Vault API treats alike. A request whose line is split across packets, or that
follows another in one packet (pipelining, which Vault clients do not do), is not rewritten.

Neither llhttp nor uvicorn bounds the request head: a client could send megabytes of
headers, each request held in memory whole. Here the target and every header name and value
count towards ``KEEL_MAX_HEADER_BYTES`` (passed as uvicorn's ``h11_max_incomplete_event_size``,
the same bound for its other protocol), as Node.js counts its ``--max-http-header-size``; past
it the answer is a 431 ``headers-too-large`` problem and the connection closes. A single
header line is only seen whole, so the bytes received while the head is incomplete are
counted too, and a head twice the limit is refused before it ends. (uvicorn logs its
"Invalid HTTP request received." before each 431: the parser stops through an error.)
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from keel.core.errors import HeadersTooLarge, render_error
from keel.core.http import REQUEST_ID_HEADER, accept_request_id
from keel.core.logging import get_logger

log = get_logger("keel.http")

_LIST = b"LIST "

#: ``KEEL_MAX_HEADER_BYTES``' default, for a protocol created without a bound in its config.
DEFAULT_MAX_HEADER_BYTES = 32_768
#: After a 431, the rest of the request is read and dropped for this long (or up to
#: ``_LINGER_BYTES``) before the connection closes: closing with unread data resets the
#: connection, and a client still sending would lose the answer.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 4 * 1024 * 1024


def as_get_list(data: bytes) -> bytes:
    """``LIST /path?q HTTP/1.1...`` as ``GET /path?q&list=true HTTP/1.1...``."""
    end = data.find(b" ", len(_LIST))
    if end < 0:
        return data
    target = data[len(_LIST) : end]
    joiner = b"&" if b"?" in target else b"?"
    return b"GET " + target + joiner + b"list=true" + data[end:]


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing; httptools wraps it in a parser error."""


class ListingHttpToolsProtocol(HttpToolsProtocol):
    """What ``keel serve`` runs uvicorn with (``http=``)."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.max_header_bytes: int = (
            config.h11_max_incomplete_event_size or DEFAULT_MAX_HEADER_BYTES
        )
        self._head_bytes = 0  # target, names and values of the head being parsed
        self._head_received = 0  # bytes received while the head was incomplete
        self._reading_head = False
        self._head_too_large = False
        self._dropped = 0

    def data_received(self, data: bytes) -> None:
        if self._head_too_large:  # answered already: read the rest and drop it
            self._dropped += len(data)
            if self._dropped > _LINGER_BYTES:
                self.transport.close()
            return
        if data.startswith(_LIST):
            data = as_get_list(data)
        if self._reading_head:
            # Counted only for data that arrives once a head has begun: never more than the
            # head's own bytes, so this never refuses what the exact count below would pass.
            self._head_received += len(data)
        super().data_received(data)
        if (
            self._reading_head
            and not self._head_too_large
            and self._head_received > 2 * self.max_header_bytes
        ):
            self._refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._head_received = 0
        self._reading_head = True

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count_head(len(name) + len(value))

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_header_bytes:
            self._head_too_large = True
            raise _HeadTooLarge  # uvicorn's data_received answers through send_400_response

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def _refuse_head(self) -> None:
        """Answer 431 problem+json, then drop whatever else the client sends until it stops
        or the linger time is over, and close."""
        self._head_too_large = True
        self._reading_head = False
        raw_request_id = next(
            (value for name, value in self.headers or () if name == REQUEST_ID_HEADER.encode()),
            None,
        )
        request_id = accept_request_id(raw_request_id.decode("latin-1") if raw_request_id else None)
        log.warning("http.headers_too_large", limit=self.max_header_bytes, request_id=request_id)
        error = HeadersTooLarge(
            f"The request's target and headers exceed {self.max_header_bytes} bytes."
        )
        response = render_error(error, request_id, None)
        content = [STATUS_LINE[error.status]]
        headers = [
            *self.server_state.default_headers,
            *response.raw_headers,
            (REQUEST_ID_HEADER.encode(), request_id.encode()),
            (b"connection", b"close"),
        ]
        for name, value in headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"\r\n", bytes(response.body)])
        self.transport.write(b"".join(content))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)
