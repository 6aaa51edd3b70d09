"""``keel_client.Keel`` and ``SyncKeel``, the SDK's front door: one connection pool, one
breaker per host and one token source shared by every sub-client, counted at the TCP level
against the real Keel (SQLite and PostgreSQL) behind a counting proxy; per-call options over
the Keel's defaults and ``from_env``, against a recording HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from keel_client import Keel, SyncKeel
from keel_client.audit import AuditAPI, AuditClient
from keel_client.auth import AuthClient, ServiceCredentials
from keel_client.config import ConfigClient
from keel_client.flags import FlagsClient
from keel_client.http import (
    BearerToken,
    BreakerPolicy,
    CircuitOpenError,
    ClientError,
    RequestTimeout,
    RetryPolicy,
    ServerError,
)
from keel_client.secrets import SecretsClient
from tests.client.flags.flags_sdk_support import CHECKOUT, build_environment
from tests.support.config_api import new_app, write
from tests.support.tcpproxy import tcp_proxy
from tests.support.tenants import TenantAdmin

FAST_RETRY = RetryPolicy(max_retries=3, backoff_base=0.001, backoff_max=0.005)
TOKEN = "tok-from-the-token-endpoint"


class Recorder(BaseHTTPRequestHandler):
    """Answers like Keel would for the few endpoints these tests call; records every request
    (method, path, headers) and every accepted connection on its server."""

    protocol_version = "HTTP/1.1"  # keep-alive: one connection serves many requests
    server: RecordingServer

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.requests.append(
                (self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
        path = self.path.split("?")[0]
        if "unavailable" in path:
            self._send(503, {"errors": ["sealed"]})
        elif "slow" in path:
            time.sleep(2.0)
            self._send(200, {"data": {"data": {"k": "slow"}}})
        elif path == "/auth/v1/oauth/token":
            self._send(200, {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})
        elif path.startswith("/secrets/v1/secret/data/") and self.command == "GET":
            self._send(200, {"data": {"data": {"k": "v"}, "metadata": {"version": 1}}})
        elif path.startswith("/secrets/v1/secret/data/"):
            self._send(200, {"data": {"version": 2}})
        elif path.startswith("/audit/v1/actions/"):
            self._send(204, None)
        else:
            self._send(404, {"type": "about:blank", "title": "Not Found", "status": 404})

    def _send(self, status: int, payload: object) -> None:
        content = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Recorder)
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def hits(self, fragment: str) -> list[dict[str, str]]:
        """The headers of every request whose path holds ``fragment``."""
        with self.lock:
            return [headers for _, path, headers, _ in self.requests if fragment in path]


@pytest.fixture
def recording() -> Iterator[RecordingServer]:
    server = RecordingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def keel_host(url: str) -> str:
    return url.removeprefix("http://")


# -- one pool, one breaker per host, one token source, against the real Keel ---------------


async def test_sequential_calls_through_every_sub_client_use_one_connection(
    keel_url: str, admin: TenantAdmin
) -> None:
    host, port = keel_host(keel_url).split(":")
    action = f"keelsdk{uuid.uuid4().hex[:8]}.thing.made"
    async with tcp_proxy(host, int(port)) as proxy:
        async with Keel(f"http://127.0.0.1:{proxy.port}", credentials=admin.api_key) as keel:
            assert await keel.secrets.set("apps/front-door/db", {"password": "p1"}) == 1
            assert await keel.secrets.get("apps/front-door/db", "password") == "p1"
            await keel.audit.register_action(action, description="A thing was made")
            page = await keel.audit.list_events(action=action.split(".")[0] + ".")
            assert page.items == []
            principal = await keel.auth.me(admin.api_key)
            assert principal.tenant_id == admin.tenant_id
            keel.secrets.invalidate("apps/front-door/db")
            assert await keel.secrets.get("apps/front-door/db", "password") == "p1"
        assert proxy.connections_accepted == 1

        # The same calls through clients that stand alone: a pool (a connection) each.
        url = f"http://127.0.0.1:{proxy.port}"
        before = proxy.connections_accepted
        async with (
            SecretsClient(url, auth=admin.api_key) as secrets,
            AuditAPI(url, auth=BearerToken(admin.api_key)) as audit,
        ):
            await secrets.get("apps/front-door/db", "password")
            await audit.list_events(action=action)
        assert proxy.connections_accepted - before == 2


async def test_every_sub_client_is_built_on_the_one_base_client(
    tmp_path: Path, recording: RecordingServer
) -> None:
    async with Keel(recording.url, credentials="key-1") as keel:
        config = keel.config.client("billing", "production", persist=False)
        flags = keel.flags.client("production", persist=False, send_events=False)
        recorder = keel.audit.recorder(spool_dir=tmp_path / "spool")
        assert isinstance(keel.auth, AuthClient)
        assert isinstance(keel.secrets, SecretsClient)
        assert isinstance(keel.audit, AuditAPI)
        assert isinstance(config, ConfigClient)
        assert isinstance(flags, FlagsClient)
        assert isinstance(recorder, AuditClient)
        assert config.api is keel.api
        assert flags.api is keel.api
        assert keel.secrets.api is keel.api
        assert recorder.api is keel.audit
        # One pool, one set of breakers, one budget, one credential for all of them.
        for client in (keel.auth, keel.audit):
            assert client._http is keel.api._http
            assert client._core is keel.api._core
    # Closing the Keel closed what it handed out: the recorder let its spool go.
    assert not recorder.spool.is_open


async def test_one_breaker_per_host_is_shared_by_the_sub_clients(
    recording: RecordingServer,
) -> None:
    breaker = BreakerPolicy(minimum_calls=2, window_size=2, failure_rate_threshold=0.5)
    async with Keel(recording.url, retry=RetryPolicy(max_retries=0), breaker=breaker) as keel:
        for _ in range(2):
            with pytest.raises(ServerError):
                await keel.secrets.get("unavailable")
        assert not keel.health().is_healthy
        # The circuit the secrets calls opened refuses the audit sub-client's call too.
        with pytest.raises(CircuitOpenError):
            await keel.audit.register_action("billing.invoice.refund", description="Refund")
    assert recording.hits("/audit/") == []


async def test_the_auth_sub_client_sends_the_users_token_not_the_keels(
    recording: RecordingServer,
) -> None:
    async with Keel(recording.url, credentials="service-key") as keel:
        with pytest.raises(ClientError):  # the recorder answers /auth/v1/me with 404
            await keel.auth.me("user-token")
        await keel.secrets.get("apps/a")
    assert [h["authorization"] for h in recording.hits("/auth/v1/me")] == ["Bearer user-token"]
    assert [h["authorization"] for h in recording.hits("/secrets/")] == ["Bearer service-key"]


# -- per-call options over the Keel's defaults --------------------------------------------


async def test_per_call_retries_override_the_keels_retry_policy(
    recording: RecordingServer,
) -> None:
    async with Keel(recording.url, retry=FAST_RETRY, breaker=None) as keel:
        with pytest.raises(ServerError):
            await keel.secrets.get("unavailable/a")
        with pytest.raises(ServerError):
            await keel.secrets.get("unavailable/b", max_retries=0)
    assert len(recording.hits("unavailable/a")) == 4  # the Keel's default: 3 retries
    assert len(recording.hits("unavailable/b")) == 1


async def test_a_per_call_timeout_overrides_the_keels(recording: RecordingServer) -> None:
    async with Keel(recording.url, timeout=10.0, breaker=None) as keel:
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            await keel.secrets.get("slow/a", timeout=0.2, max_retries=0)
        assert time.monotonic() - started < 1.5  # the answer takes 2 s; a loaded machine's room
        assert await keel.secrets.get("slow/b", "k") == "slow"  # the default waits


async def test_per_call_idempotency_key_and_request_id_are_sent(
    recording: RecordingServer,
) -> None:
    async with Keel(recording.url, credentials="key-1") as keel:
        await keel.secrets.set("apps/a", {"k": "v"}, idempotency_key="rotate-42")
        await keel.secrets.set("apps/b", {"k": "v"})
        await keel.audit.register_action(
            "billing.invoice.refund", description="Refund", request_id="req-7"
        )
    (keyed,) = recording.hits("apps/a")
    (plain,) = recording.hits("apps/b")
    assert keyed["idempotency-key"] == "rotate-42"
    assert "idempotency-key" not in plain
    assert recording.hits("/audit/v1/actions/")[0]["x-request-id"] == "req-7"


# -- from_env ---------------------------------------------------------------------------


async def test_from_env_uses_keel_url_and_keel_token(recording: RecordingServer) -> None:
    environ = {"KEEL_URL": recording.url, "KEEL_TOKEN": "env-token"}
    async with Keel.from_env(environ) as keel:
        assert keel.url == recording.url
        await keel.secrets.get("apps/a")
    assert recording.hits("/secrets/")[0]["authorization"] == "Bearer env-token"


async def test_from_env_with_client_credentials_fetches_one_token_for_every_sub_client(
    recording: RecordingServer,
) -> None:
    environ = {
        "KEEL_URL": recording.url,
        "KEEL_CLIENT_ID": "svc-billing",
        "KEEL_CLIENT_SECRET": "s3cret",
    }
    async with Keel.from_env(environ) as keel:
        assert isinstance(keel.api._http.auth, ServiceCredentials)
        await asyncio.gather(keel.secrets.get("apps/a"), keel.secrets.get("apps/b"))
        await keel.audit.register_action("billing.invoice.refund", description="Refund")
    assert len(recording.hits("/auth/v1/oauth/token")) == 1
    calls = recording.hits("/secrets/") + recording.hits("/audit/")
    assert [h["authorization"] for h in calls] == [f"Bearer {TOKEN}"] * 3


def test_from_env_needs_a_url_and_both_client_credentials() -> None:
    with pytest.raises(ValueError, match="KEEL_URL"):
        Keel.from_env({"KEEL_TOKEN": "t"})
    with pytest.raises(ValueError, match="KEEL_CLIENT_SECRET"):
        Keel.from_env({"KEEL_URL": "http://127.0.0.1:9", "KEEL_CLIENT_ID": "svc"})


def test_keel_takes_credentials_not_auth() -> None:
    with pytest.raises(TypeError, match="credentials"):
        Keel("http://127.0.0.1:9", auth=SecretStr("x"))


# -- the sync face ------------------------------------------------------------------------


def test_sync_keel_calls_every_sub_client_on_one_connection(recording: RecordingServer) -> None:
    with SyncKeel.from_env({"KEEL_URL": recording.url, "KEEL_TOKEN": "sync-token"}) as keel:
        assert keel.secrets.set("apps/a", {"k": "v"}) == 2
        assert keel.secrets.get("apps/a", "k") == "v"
        assert keel.secrets.get_many(["apps/a"]) == {"apps/a": {"k": "v"}}
        keel.audit.register_action("billing.invoice.refund", description="Refund")
        with pytest.raises(ServerError):
            keel.secrets.get("unavailable/c", max_retries=0)
        assert keel.health().retry_budget is not None
    assert recording.connections == 1
    assert {h["authorization"] for _, _, h, _ in recording.requests} == {"Bearer sync-token"}
    assert len(recording.hits("unavailable/c")) == 1
    keel.close()  # a second close does nothing


async def test_sync_keel_against_the_real_keel(keel_url: str, admin: TenantAdmin) -> None:
    """The blocking face from a worker thread (the test's loop serves Keel meanwhile)."""

    def work() -> tuple[str, str]:
        with SyncKeel(keel_url, credentials=admin.api_key) as keel:
            keel.secrets.set("apps/sync/db", {"password": "p2"})
            principal = keel.auth.me(admin.api_key)
            return keel.secrets.get("apps/sync/db", "password"), principal.tenant_id

    assert await asyncio.to_thread(work) == ("p2", admin.tenant_id)


# -- the live clients, against the real Keel ------------------------------------------------


async def seed(client: httpx.AsyncClient, admin: TenantAdmin) -> tuple[str, str, str]:
    """A config application with ``workers = 8`` in ``production``, a flags environment of
    :func:`build_environment` and a registered audit action: their names."""
    application = await new_app(client, admin.headers, "production")
    written = await write(client, admin.headers, application, "production", {"workers": 8})
    assert written.status_code == 200, written.text
    environment = await build_environment(client, admin.headers)
    action = f"keelsdk{uuid.uuid4().hex[:8]}.report.exported"
    registered = await client.put(
        f"/audit/v1/actions/{action}", headers=admin.headers, json={"description": "Export"}
    )
    assert registered.status_code in (200, 201, 204), registered.text
    return application, environment.key, action


async def test_config_flags_and_a_recorder_live_on_one_keel(
    keel_url: str, client: httpx.AsyncClient, admin: TenantAdmin, tmp_path: Path
) -> None:
    application, environment, action = await seed(client, admin)
    async with Keel(keel_url, credentials=admin.api_key) as keel:
        config = await keel.config.client(application, "production", persist=False).start()
        flags = await keel.flags.client(environment, persist=False, send_events=False).start()
        recorder = keel.audit.recorder(spool_dir=tmp_path / "spool")
        await recorder.start()
        assert config.get("workers") == 8
        assert flags.is_enabled(CHECKOUT, {"key": "beta-1"})
        event_id = recorder.record(action, data={"rows": 3})
        assert await recorder.flush(timeout=10)
        page = await keel.audit.list_events(action=action)
        assert [item["id"] for item in page.items] == [event_id]
    # Keel.aclose() stopped the watches and the recorder before closing the pool.
    assert not recorder.spool.is_open


async def test_sync_keel_runs_config_flags_and_a_recorder_on_its_thread(
    keel_url: str, client: httpx.AsyncClient, admin: TenantAdmin, tmp_path: Path
) -> None:
    application, environment, action = await seed(client, admin)

    def work() -> tuple[Any, bool, int]:
        with SyncKeel(keel_url, credentials=admin.api_key) as keel:
            with keel.config.client(application, "production", persist=False) as config:
                workers = config.get("workers")
            with keel.flags.client(environment, persist=False, send_events=False) as flags:
                enabled = flags.is_enabled(CHECKOUT, {"key": "beta-1"})
            with keel.audit.recorder(spool_dir=tmp_path / "spool") as recorder:
                recorder.record(action)
                assert recorder.flush(timeout=10)
            return workers, enabled, len(keel.audit.list_events(action=action).items)

    assert await asyncio.to_thread(work) == (8, True, 1)


# -- the package's front -------------------------------------------------------------------


def test_keel_client_exports_the_front_door_and_stays_cheap_to_import() -> None:
    import subprocess
    import sys

    import keel_client

    assert set(keel_client.__all__) == {"Keel", "SyncKeel", "__version__"}
    assert keel_client.Keel is Keel
    assert keel_client.SyncKeel is SyncKeel
    with pytest.raises(AttributeError, match="Keal"):
        keel_client.Keal  # noqa: B018
    plain = subprocess.run(
        [sys.executable, "-c", "import sys, keel_client; print('httpx' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert plain.stdout.strip() == "False"
