"""Helpers for the gateway's end-to-end tests: a real ``keel serve`` with its proxy listener,
the tenant ``default``'s policy written through the admin API, and upstreams to put behind it.

- :class:`GatewayDeployment` is an initialised Keel (``keel init`` run, the admin API key
  kept) whose :meth:`~GatewayDeployment.serve` starts ``keel serve`` with
  ``KEEL_GATEWAY__PROXY_LISTEN`` on a free port.
- :func:`echo_app` is an upstream answering with what it received (its name, path, headers,
  body size) and with the headers a gateway must strip (``Server``, ``X-Powered-By``,
  ``X-XSS-Protection``).
- :func:`start_process` starts a ``keel`` command without waiting for ``/health/ready``, for a
  gateway whose database is away (its readiness is rightly false).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.support.keel_cli import invoke_keel
from tests.support.keel_process import (
    ADMIN_KEY,
    KEEL,
    KeelServer,
    free_port,
    keel_env,
    keel_server,
    stop_process,
)

POLICY_API = "/gateway/v1/policy"
#: What a gateway replica needs: the gateway, and auth for the admin API's callers.
GATEWAY_SERVICES = "auth,gateway"
#: Headers every echo response carries that the gateway's profiles remove.
LEAKY_HEADERS = [
    (b"server", b"echo/1.0"),
    (b"x-powered-by", b"PHP/5.4"),
    (b"x-xss-protection", b"1; mode=block"),
]


@dataclass
class Gateway:
    """A running ``keel serve``: its admin API (``server``) and its proxy's base URL."""

    server: KeelServer
    proxy_url: str


@dataclass
class GatewayDeployment:
    """An initialised Keel in ``cwd``: its environment and the administrator's API key."""

    cwd: Path
    env: dict[str, str]
    api_key: str = ""

    @classmethod
    def initialise(cls, cwd: Path, **variables: str) -> GatewayDeployment:
        """``keel migrate`` (for a database other than the embedded one) and ``keel init``."""
        env = keel_env(KEEL_SERVICES=GATEWAY_SERVICES, **variables)
        if "KEEL_DATABASE_URL" in variables:
            migrated = invoke_keel("migrate", cwd=cwd, env=env)
            assert migrated.returncode == 0, migrated.stderr
        initialised = invoke_keel("init", cwd=cwd, env=env)
        found = ADMIN_KEY.search(initialised.stdout)
        assert found is not None, initialised.stdout + initialised.stderr
        return cls(cwd, env, found.group(1))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @contextlib.contextmanager
    def serve(self, cwd: Path | None = None, **variables: str) -> Iterator[Gateway]:
        """``keel serve`` with a proxy listener (in ``cwd``, default the deployment's own),
        ready on entry, stopped on exit."""
        proxy_port = free_port()
        env = {
            **self.env,
            "KEEL_GATEWAY__PROXY_LISTEN": f"127.0.0.1:{proxy_port}",
            **variables,
        }
        with keel_server(cwd or self.cwd, env) as server:
            yield Gateway(server, f"http://127.0.0.1:{proxy_port}")

    async def put_policy(self, gateway: Gateway, document: Mapping[str, Any]) -> float:
        """Write the tenant's policy; returns ``time.monotonic()`` at the 200's arrival."""
        async with httpx.AsyncClient(base_url=gateway.server.base_url, timeout=30) as http:
            answer = await http.put(POLICY_API, headers=self.headers, json=dict(document))
        arrived = time.monotonic()
        assert answer.status_code == 200, answer.text
        return arrived


def pool(name: str, *urls: str, **settings: Any) -> dict[str, Any]:
    return {"name": name, "targets": [{"url": url} for url in urls], **settings}


def route(name: str, path: str, upstream: str | None, **settings: Any) -> dict[str, Any]:
    """A route; anonymous unless ``auth`` says otherwise."""
    return {"name": name, "path": path, "upstream": upstream, "auth": {"mode": "none"}, **settings}


def policy(pools: list[dict[str, Any]], *routes: dict[str, Any]) -> dict[str, Any]:
    return {"upstreams": pools, "routes": list(routes)}


async def wait_until(
    check: Any, *, timeout: float = 10.0, interval: float = 0.01, message: str = ""
) -> Any:
    """Await ``check()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def answers(http: httpx.AsyncClient, url: str, status: int = 200) -> bool:
    """Whether ``GET url`` answers ``status`` (a refused connection is ``False``)."""
    try:
        return (await http.get(url)).status_code == status
    except httpx.TransportError:
        return False


@dataclass
class EchoLog:
    """What an echo upstream received: one entry per request (path, headers)."""

    requests: list[dict[str, Any]] = field(default_factory=list)


def echo_app(name: str, log: EchoLog | None = None) -> ASGIApp:
    """An upstream answering JSON ``{"upstream", "path", "headers", "received"}``: its name,
    the path and headers it was sent, and how many body bytes arrived."""
    log = log if log is not None else EchoLog()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        received = 0
        while True:
            message = await receive()
            received += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        seen = {
            "upstream": name,
            "path": scope["path"],
            "headers": [
                [key.decode("latin-1"), value.decode("latin-1")] for key, value in scope["headers"]
            ],
            "received": received,
        }
        log.requests.append(seen)
        body = json.dumps(seen).encode()
        headers = [(b"content-type", b"application/json"), *LEAKY_HEADERS]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def seen_header(echoed: Mapping[str, Any], name: str) -> list[str]:
    """The values of header ``name`` an echo upstream received."""
    return [value for key, value in echoed["headers"] if key.lower() == name.lower()]


@contextlib.contextmanager
def start_process(
    *args: str, cwd: Path, env: Mapping[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``keel <args>`` in the background, its stderr in a file; stopped on exit."""
    log_path = cwd / f"keel-{free_port()}.log"
    with log_path.open("wb") as stderr:
        process = subprocess.Popen(
            [KEEL, *args], cwd=cwd, env=dict(env), stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        yield process, log_path
    finally:
        stop_process(process)
