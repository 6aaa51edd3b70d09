"""Debian's nginx in front of a real upstream, deciding through a real ``keel serve``.

The configuration is :func:`keel.gateway.nginx.render_nginx`'s for the policy below, run by
``/usr/sbin/nginx`` as a subprocess on ephemeral ports (everything under the test's own
directory). An authorised request reaches the upstream with a ``Keel-Identity`` that Keel's
JWKS verifies (never the client's forged one); no credential is 401, a credential without
the permission 403, a request over the rate limit 429 with ``Retry-After``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.gateway.nginx import render_nginx
from keel_client.edge._identity import IdentityVerifier
from keel_client.edge._model import EdgePolicy
from tests.support.keel_process import (
    ADMIN_KEY,
    KeelServer,
    free_port,
    keel_env,
    keel_server,
    run_keel,
    stop_process,
)

NGINX = os.environ.get("KEEL_TEST_NGINX", "/usr/sbin/nginx")
READ_ORDERS = "orders:orders:read"
FORGED = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290In0."
APP_ORIGIN = "https://app.example"


def nginx_or_skip() -> str:
    if os.access(NGINX, os.X_OK):
        return NGINX
    message = f"nginx not found at {NGINX}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true requires it (apt-get install nginx)", pytrace=False)
    pytest.skip(f"{message}; install Debian's nginx or set KEEL_TEST_NGINX to run this test")


# -- the upstream -----------------------------------------------------------------------------


class EchoHandler(BaseHTTPRequestHandler):
    """Answers JSON ``{"path", "headers"}`` (what it received), with a header to hide."""

    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"path": self.path, "headers": list(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Powered-By", "PHP/5.4")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _echo

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# -- Keel and nginx ------------------------------------------------------------------------------


def policy(upstream: str) -> dict[str, Any]:
    return {
        "upstreams": [{"name": "echo", "targets": [{"url": upstream}]}],
        "routes": [
            {
                "name": "orders",
                "path": "/orders",
                "upstream": "echo",
                "auth": {"permissions": [READ_ORDERS]},
            },
            {
                "name": "limited",
                "path": "/limited",
                "upstream": "echo",
                "auth": {"mode": "none"},
                "rate_limits": [
                    {
                        "name": "per-ip",
                        "algorithm": "fixed_window",
                        "limit": 2,
                        "period_seconds": 3600,
                    }
                ],
            },
            {"name": "public", "path": "/public", "upstream": "echo", "auth": {"mode": "none"}},
            {
                "name": "browser",
                "path": "/browser",
                "upstream": "echo",
                "auth": {"mode": "none"},
                "cors": {"allow_origins": [APP_ORIGIN], "allow_headers": ["content-type"]},
            },
        ],
    }


@dataclass
class Edge:
    keel: KeelServer
    nginx_url: str
    admin_key: str
    reader_key: str
    outsider_key: str
    nginx_log: Path


def _api_key(keel: KeelServer, admin_key: str, scopes: list[str]) -> str:
    with keel.client() as http:
        created = http.post(
            "/auth/v1/api-keys",
            headers={"Authorization": f"Bearer {admin_key}"},
            json={"name": f"scoped {scopes}", "scopes": scopes},
        )
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


def _write_nginx_config(directory: Path, rendered: str) -> Path:
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
        (directory / name).mkdir(exist_ok=True)
    (directory / "keel.conf").write_text(rendered)
    config = directory / "nginx.conf"
    config.write_text(
        f"""worker_processes 1;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    access_log {directory}/logs/access.log;
    include {directory}/keel.conf;
}}
"""
    )
    return config


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx not listening in 10 s:\n{log.read_text()}") from None
            time.sleep(0.05)


def _wait_for_policy(keel: KeelServer) -> None:
    """Until the served policy takes ``/public`` (the gateway follows writes in the
    background)."""
    deadline = time.monotonic() + 15
    with keel.client() as http:
        while True:
            answer = http.get(
                "/gateway/v1/authz/traefik",
                headers={"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/public"},
            )
            if answer.status_code == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the policy was not loaded: {answer.text}")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Edge]:
    nginx = nginx_or_skip()
    cwd = tmp_path_factory.mktemp("keel-nginx")
    env = keel_env(KEEL_SERVICES="auth,gateway")
    initialised = run_keel("init", cwd=cwd, env=env)
    found = ADMIN_KEY.search(initialised.stdout)
    assert found is not None, initialised.stdout + initialised.stderr
    admin_key = found.group(1)
    with keel_server(cwd, env) as keel:
        with keel.client() as http:
            written = http.put(
                "/gateway/v1/policy",
                headers={"Authorization": f"Bearer {admin_key}"},
                json=policy(upstream),
            )
        assert written.status_code == 200, written.text
        _wait_for_policy(keel)
        reader_key = _api_key(keel, admin_key, [READ_ORDERS])
        outsider_key = _api_key(keel, admin_key, ["billing:invoices:read"])

        port = free_port()
        rendered = render_nginx(
            EdgePolicy.model_validate(policy(upstream)),
            keel_url=keel.base_url,
            listen=f"127.0.0.1:{port}",
        )
        directory = cwd / "nginx"
        directory.mkdir()
        config = _write_nginx_config(directory, rendered)
        log = directory / "logs" / "error.log"
        process = subprocess.Popen(
            [
                nginx,
                "-p",
                str(directory),
                "-e",
                str(log),
                "-c",
                str(config),
                "-g",
                f"daemon off; pid {directory}/nginx.pid;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_port(port, process, log)
            yield Edge(keel, f"http://127.0.0.1:{port}", admin_key, reader_key, outsider_key, log)
        finally:
            stop_process(process)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _seen(answer: httpx.Response, name: str) -> list[str]:
    return [value for key, value in answer.json()["headers"] if key.lower() == name.lower()]


async def _verify(keel: KeelServer, token: str) -> Mapping[str, Any]:
    async with httpx.AsyncClient(base_url=keel.base_url) as http:
        discovery = (await http.get("/.well-known/openid-configuration")).json()
        jwks = (await http.get("/.well-known/jwks.json")).json()

    async def fetch() -> Mapping[str, Any]:
        return dict(jwks)

    verifier = IdentityVerifier(fetch, issuer=discovery["issuer"], audience="gateway:echo")
    return (await verifier.verify(token)).claims


# -- the tests ------------------------------------------------------------------------------------


async def test_an_authorised_request_reaches_the_upstream_with_a_verified_identity(
    edge: Edge,
) -> None:
    async with httpx.AsyncClient(base_url=edge.nginx_url) as http:
        answer = await http.get(
            "/orders/42?view=full",
            headers={**_bearer(edge.reader_key), "Keel-Identity": FORGED},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["path"] == "/orders/42?view=full"
    identities = _seen(answer, "keel-identity")
    assert len(identities) == 1
    assert identities[0] != FORGED
    claims = await _verify(edge.keel, identities[0])
    assert claims["cred"] == "api_key"
    assert READ_ORDERS in claims["permissions"]
    # nginx set the route's response headers: the profile's, and the upstream's leak hidden.
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "x-powered-by" not in answer.headers


async def test_an_anonymous_route_passes_no_identity_even_a_forged_one(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.nginx_url) as http:
        answer = await http.get("/public", headers={"Keel-Identity": FORGED})
    assert answer.status_code == 200, answer.text
    assert _seen(answer, "keel-identity") == []


async def test_no_credential_is_401_with_a_challenge(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.nginx_url) as http:
        answer = await http.get("/orders", headers={"Keel-Identity": FORGED})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")


async def test_a_credential_without_the_permission_is_403(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.nginx_url) as http:
        answer = await http.get("/orders/1", headers=_bearer(edge.outsider_key))
    assert answer.status_code == 403
    assert answer.json()["type"] == "urn:keel:problem:forbidden"


async def test_over_the_rate_limit_is_429_with_retry_after(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.nginx_url) as http:
        passed = [await http.get("/limited") for _ in range(2)]
        refused = await http.post("/limited", content=b"{}")
    assert [answer.status_code for answer in passed] == [200, 200]
    assert passed[1].headers["ratelimit"].startswith('"per-ip";r=0')
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:keel:problem:rate-limited"


async def test_a_path_no_route_takes_is_404(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.nginx_url) as http:
        answer = await http.get("/elsewhere")
    assert answer.status_code == 404
    assert answer.json()["type"] == "urn:keel:problem:not-found"


async def test_a_cors_preflight_is_answered_by_nginx_from_keels_decision(edge: Edge) -> None:
    preflight = {
        "Origin": APP_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with httpx.AsyncClient(base_url=edge.nginx_url) as http:
        allowed = await http.options("/browser/cart", headers=preflight)
        refused = await http.options(
            "/browser/cart", headers={**preflight, "Origin": "https://evil.example"}
        )
        actual = await http.get("/browser/cart", headers={"Origin": APP_ORIGIN})
    assert allowed.status_code == 204, allowed.text
    assert allowed.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert allowed.content == b""  # nginx answered: the upstream echoes JSON
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == APP_ORIGIN
    assert actual.json()["path"] == "/browser/cart"


def test_nginx_logged_no_error(edge: Edge) -> None:
    errors = [
        line
        for line in edge.nginx_log.read_text().splitlines()
        if "[error]" in line or "[crit]" in line or "[emerg]" in line
    ]
    assert errors == []
