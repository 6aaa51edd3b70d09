"""uvicorn's HTTP protocol, taught Vault's ``LIST`` method.

Vault clients (``hvac``, the ``vault`` CLI) list keys with the method ``LIST``. The fast HTTP
parser uvicorn uses (llhttp, through ``httptools``) knows a fixed set of methods and answers
anything else with 400 before Keel sees it. A request line starting with ``LIST`` is read as
``GET`` with ``list=true`` added to its query string, which Vault accepts as the same request
and Keel's Vault API treats alike. A request whose line is split across packets, or that
follows another in one packet (pipelining, which Vault clients do not do), is not rewritten.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_LIST = b"LIST "


def as_get_list(data: bytes) -> bytes:
    """``LIST /path?q HTTP/1.1...`` as ``GET /path?q&list=true HTTP/1.1...``."""
    end = data.find(b" ", len(_LIST))
    if end < 0:
        return data
    target = data[len(_LIST) : end]
    joiner = b"&" if b"?" in target else b"?"
    return b"GET " + target + joiner + b"list=true" + data[end:]


class ListingHttpToolsProtocol(HttpToolsProtocol):
    """What ``keel serve`` runs uvicorn with (``http=``)."""

    def data_received(self, data: bytes) -> None:
        if data.startswith(_LIST):
            data = as_get_list(data)
        super().data_received(data)
