"""The base client's network backend on asyncio transports (``_asyncio_backend``): the same
behaviour as httpcore's anyio backend where it matters — back-pressure both ways, an idle
connection the peer closed is never reused, timeouts and refusals as httpx's errors, unix
sockets — and the hand-over to anyio under trio. Real servers on 127.0.0.1 (TLS and HTTP/2
through it: ``test_http_tls``, ``test_http_request_building``)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio
import uvloop

from keel_client.http import BaseAPIClient, RequestTimeout
from keel_client.http._asyncio_backend import AsyncioBackend, AsyncioHTTPTransport
from tests.client.http.faultserver import FaultServer
from tests.support.tls import self_signed_certificate

BIG = 16 * 1024 * 1024


async def _serve(handle: object) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)  # type: ignore[arg-type]
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


def _client(**options: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AsyncioHTTPTransport(), **options)  # type: ignore[arg-type]


async def test_the_base_client_sends_through_asyncio_transports(fault_server: FaultServer) -> None:
    async with BaseAPIClient(fault_server.url) as api:
        assert isinstance(api._http._transport, AsyncioHTTPTransport)
        answer = await api.post("/echo", json={"a": 1})
    assert answer.json()["body"] == '{"a":1}'


async def test_http2_over_tls_is_negotiated_on_asyncio_transports(tmp_path: Path) -> None:
    certificate = self_signed_certificate(tmp_path)
    context = certificate.server_context()
    context.set_alpn_protocols(["h2"])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2c.initiate_connection()
        writer.write(h2c.data_to_send())
        while data := await reader.read(65536):
            for event in h2c.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    body = b"over h2"
                    headers = [(":status", "200"), ("content-length", str(len(body)))]
                    h2c.send_headers(event.stream_id, headers)
                    h2c.send_data(event.stream_id, body, end_stream=True)
            writer.write(h2c.data_to_send())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    trusted = ssl.create_default_context(cafile=str(certificate.cert_file))
    async with (
        server,
        BaseAPIClient(f"https://127.0.0.1:{port}", http2=True, verify=trusted) as api,
    ):
        response = await api.get("/")
    assert (response.http_version, response.text) == ("HTTP/2", "over h2")


async def test_a_slow_reader_pauses_the_connection_and_gets_every_byte() -> None:
    body = bytes(range(256)) * (BIG // 256)
    backlog: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await asyncio.sleep(0.5)  # the client reads nothing meanwhile
        backlog.append(writer.transport.get_write_buffer_size())
        await writer.drain()
        writer.close()

    server, url = await _serve(handle)
    async with server, _client() as http, http.stream("GET", url) as response:
        chunks: list[bytes] = []
        await asyncio.sleep(0.6)
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
    assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(body).digest()
    # Had the client gone on reading into memory, the server would have had nothing left.
    assert backlog[0] > 0


async def test_a_large_upload_to_a_slow_reader_arrives_whole() -> None:
    body = bytes(range(256)) * (BIG // 256)
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await asyncio.sleep(0.3)  # the client's writes back up meanwhile
        received.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    server, url = await _serve(handle)
    async with server, _client() as http:
        response = await http.post(url, content=body)
    assert response.status_code == 204
    assert received == [body]


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # keep-alive promised, closed anyway: the pool must notice

    server, url = await _serve(handle)
    async with server, _client() as http:
        first = await http.get(url)
        await asyncio.sleep(0.2)
        second = await http.get(url)
    assert (first.text, second.text) == ("ok", "ok")
    assert connections == 2


async def test_a_silent_server_is_a_read_timeout() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    server, url = await _serve(handle)
    async with server, _client(timeout=httpx.Timeout(5.0, read=0.2)) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(url)


async def test_a_server_that_never_reads_is_a_write_timeout() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    server, url = await _serve(handle)
    async with server, _client(timeout=httpx.Timeout(5.0, write=0.3)) as http:
        with pytest.raises(httpx.WriteTimeout):
            await http.post(url, content=b"x" * (64 * 1024 * 1024))


async def test_a_refused_connection_is_a_connect_error() -> None:
    server, url = await _serve(lambda reader, writer: None)
    server.close()
    await server.wait_closed()
    async with _client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(url)


async def test_a_server_that_closes_mid_answer_is_an_error_not_a_short_body() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()
        writer.close()

    server, url = await _serve(handle)
    async with server, _client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(url)


async def test_unix_sockets_carry_bytes_both_ways(tmp_path: Path) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await reader.readexactly(5)).upper())
        await writer.drain()
        writer.close()

    path = str(tmp_path / "s.sock")
    server = await asyncio.start_unix_server(handle, path)
    async with server:
        stream = await AsyncioBackend().connect_unix_socket(path, timeout=2.0)
        await stream.write(b"hello", timeout=2.0)
        assert await stream.read(100, timeout=2.0) == b"HELLO"
        assert await stream.read(100, timeout=2.0) == b""  # the server's end
        await stream.aclose()


def test_under_trio_the_connection_is_anyio_s(fault_server: FaultServer) -> None:
    async def main() -> tuple[int, str]:
        async with _client() as http:
            response = await http.post(f"{fault_server.url}/echo", content=b"from trio")
            return response.status_code, response.json()["body"]

    assert trio.run(main) == (200, "from trio")


def test_under_trio_the_deadline_still_cuts_a_body_that_trickles_in(
    fault_server: FaultServer, key: str
) -> None:
    async def main() -> float:
        started = time.monotonic()
        async with BaseAPIClient(fault_server.url) as api:
            with pytest.raises(RequestTimeout):
                await api.get(
                    f"/slow-body/{key}", params={"chunks": 60, "interval": 0.05}, deadline=0.3
                )
        return time.monotonic() - started

    assert trio.run(main) < 2.0  # the whole body would take 3 s


def test_on_uvloop_as_on_asyncio_s_own_loop(fault_server: FaultServer, tmp_path: Path) -> None:
    """uvloop's transports are not ``asyncio.Transport`` subclasses; the backend must not
    care (a generated service runs its Keel clients on uvicorn's uvloop)."""
    certificate = self_signed_certificate(tmp_path)

    async def main() -> tuple[str, int, str]:
        async with BaseAPIClient(fault_server.url) as api:
            echoed = (await api.post("/echo", json={"on": "uvloop"})).json()["body"]
        server = await asyncio.start_server(_answer_ok, "127.0.0.1", 0,
                                            ssl=certificate.server_context())  # fmt: skip
        port = server.sockets[0].getsockname()[1]
        trusted = ssl.create_default_context(cafile=str(certificate.cert_file))
        async with server, BaseAPIClient(f"https://127.0.0.1:{port}", verify=trusted) as api:
            first = await api.get("/")
            await asyncio.sleep(0.2)  # the server has closed the first connection meanwhile
            second = await api.get("/")
        return echoed, first.status_code, second.text

    assert uvloop.run(main()) == ('{"on":"uvloop"}', 200, "ok")


async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
