"""TLS: every client of a process shares one default context (building one loads the CA
bundle), and it still verifies: a server whose certificate no trusted CA signed is refused,
and a context that trusts it passes through. A real TLS server on 127.0.0.1."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from keel_client.http import BaseAPIClient, RetryPolicy, SyncBaseAPIClient, TransportError
from keel_client.http._core import shared_verify
from tests.support.tls import self_signed_certificate


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"hello": "tls"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    certificate = self_signed_certificate(tmp_path)
    cert_path = certificate.cert_file
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    server.socket = certificate.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert_path
    finally:
        server.shutdown()
        server.server_close()


def test_clients_share_one_default_context_and_a_given_one_passes_through() -> None:
    shared = shared_verify(True)
    assert isinstance(shared, ssl.SSLContext)
    assert shared_verify(True) is shared
    assert shared.verify_mode == ssl.CERT_REQUIRED
    assert shared.check_hostname
    own = ssl.create_default_context()
    assert shared_verify(own) is own
    assert shared_verify(False) is False


async def test_the_shared_default_still_refuses_an_untrusted_certificate(
    tls_server: tuple[str, Path],
) -> None:
    url, cert_path = tls_server
    async with BaseAPIClient(
        base_url=url, retry=RetryPolicy(max_retries=0), breaker=None
    ) as untrusting:
        with pytest.raises(TransportError):
            await untrusting.get("/")
    trusting_context = ssl.create_default_context(cafile=str(cert_path))
    async with BaseAPIClient(
        base_url=url, verify=trusting_context, retry=RetryPolicy(max_retries=0)
    ) as trusting:
        answer = await trusting.get("/")
    assert answer.json() == {"hello": "tls"}


def test_the_sync_client_verifies_the_same_way(tls_server: tuple[str, Path]) -> None:
    url, cert_path = tls_server
    with (
        SyncBaseAPIClient(
            base_url=url, retry=RetryPolicy(max_retries=0), breaker=None
        ) as untrusting,
        pytest.raises(TransportError),
    ):
        untrusting.get("/")
    trusting_context = ssl.create_default_context(cafile=str(cert_path))
    with SyncBaseAPIClient(
        base_url=url, verify=trusting_context, retry=RetryPolicy(max_retries=0)
    ) as trusting:
        assert trusting.get("/").json() == {"hello": "tls"}
