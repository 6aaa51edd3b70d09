"""``EdgeClient`` against a real Keel (SQLite and PostgreSQL, served over TCP by uvicorn):
the policy at start, a route change reaching a running client in under a second (issue 20's
done-when), following again after Keel restarts, the local copy when Keel is down, a
service's own routes, and a policy this SDK cannot read kept out.

Policies are written through ``PUT /gateway/v1/policy`` as an operator would."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from keel.core.tenancy import bind_tenant
from keel.gateway.models import GatewayPolicyRevision
from keel_client import Keel
from keel_client.edge._client import EdgeChange, EdgeClient, EdgeError
from keel_client.edge._match import RouteMatch
from keel_client.http import RetryPolicy
from tests.client.flags.flags_sdk_support import eventually
from tests.support.apps import unit_of_work
from tests.support.asgi import serve_over_tcp
from tests.support.keel_process import free_port
from tests.support.tcpproxy import tcp_proxy
from tests.support.tenants import TenantAdmin, member

POLICY_PATH = "/gateway/v1/policy"
#: A client that gives up on an unreachable Keel at once (the tests of the local copy).
NO_RETRY = RetryPolicy(max_retries=0)
#: Issue 20: "a route change reaches a running gateway and SDK middleware in under 1 s".
PROPAGATION_LIMIT = 1.0


def _pool(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "targets": [{"url": f"http://127.0.0.1:{port}"}]}


def _policy(*extra_routes: dict[str, Any]) -> dict[str, Any]:
    """Three pools; ``orders`` and ``invoices`` routes (the ``invoices`` route sends a 10 %
    canary to ``orders-v2``), and ``extra_routes``."""
    return {
        "upstreams": [_pool("orders", 9101), _pool("orders-v2", 9102), _pool("billing", 9103)],
        "routes": [
            {"name": "orders", "hosts": ["api.example.com"], "path": "/orders",
             "upstream": "orders"},
            {"name": "invoices", "hosts": ["api.example.com"], "path": "/invoices",
             "upstream": "billing", "versions": [{"upstream": "orders-v2", "weight": 10}]},
            *extra_routes,
        ],
    }  # fmt: skip


async def _put_policy(http: httpx.AsyncClient, admin: TenantAdmin, policy: dict[str, Any]) -> int:
    """Write ``policy``; its new revision."""
    answer = await http.put(POLICY_PATH, headers=admin.headers, json=policy)
    assert answer.status_code == 200, answer.text
    revision = answer.json()["revision"]
    assert isinstance(revision, int)
    return revision


class Changes:
    """Records a client's change callbacks; :meth:`until` waits for one reaching a revision."""

    def __init__(self, edge: EdgeClient) -> None:
        self.seen: list[EdgeChange] = []
        self._arrived = asyncio.Condition()
        edge.on_change(self._record)

    async def _record(self, change: EdgeChange) -> None:
        async with self._arrived:
            self.seen.append(change)
            self._arrived.notify_all()

    async def until(self, revision: int, timeout: float = 10.0) -> EdgeChange:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(
                lambda: bool(self.seen) and self.seen[-1].revision >= revision
            )
        return self.seen[-1]


async def test_start_loads_the_current_policy_and_keeps_a_local_copy(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    revision = await _put_policy(client, admin, _policy())
    cache = tmp_path / "cache" / "edge.json"
    async with EdgeClient(keel_url, auth=admin.api_key, local_copy=cache) as edge:
        assert edge.loaded_from == "server"
        assert edge.revision == revision >= 1
        assert [route.name for route in edge.snapshot.policy.routes] == ["orders", "invoices"]
        found = edge.snapshot.table.match("api.example.com", "/orders/7", "GET")
        assert isinstance(found, RouteMatch)
        assert found.route.upstream == "orders"
        # The gateway's view honours hosts.
        assert edge.snapshot.table.match("elsewhere.example.com", "/orders/7", "GET") is None

    # The last known good policy is on disk, for its owner only.
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    saved = json.loads(cache.read_text())
    assert saved["revision"] == revision
    assert saved["values"]["revision"] == revision
    assert [route["name"] for route in saved["values"]["policy"]["routes"]] == [
        "orders",
        "invoices",
    ]
    assert list(cache.parent.iterdir()) == [cache]  # no temporary file left over

    # A client with that copy has it confirmed by Keel (If-None-Match: 304).
    async with EdgeClient(keel_url, auth=admin.api_key, local_copy=cache) as again:
        assert (again.loaded_from, again.revision) == ("server", revision)


async def test_before_any_policy_the_client_holds_revision_0_and_no_routes(
    admin: TenantAdmin, keel_url: str, tmp_path: Path
) -> None:
    cache = tmp_path / "edge.json"
    async with EdgeClient(keel_url, auth=admin.api_key, local_copy=cache) as edge:
        assert (edge.loaded_from, edge.revision, edge.snapshot.table.routes) == ("server", 0, ())
    assert not cache.exists()  # nothing worth falling back to


async def test_a_route_change_reaches_a_running_client_in_under_a_second(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str
) -> None:
    first = await _put_policy(client, admin, _policy())
    async with EdgeClient(keel_url, auth=admin.api_key) as edge:
        assert edge.revision == first
        loop = asyncio.get_running_loop()
        arrivals: list[tuple[float, EdgeChange]] = []
        arrived = asyncio.Event()

        def record(change: EdgeChange) -> None:
            arrivals.append((loop.time(), change))
            arrived.set()

        edge.on_change(record)
        canary = {"name": "carts", "path": "/carts", "upstream": "orders-v2"}
        written_at = loop.time()
        revision = await _put_policy(client, admin, _policy(canary))
        # The requirement, measured from the write's start to the callback.
        async with asyncio.timeout(PROPAGATION_LIMIT):
            await arrived.wait()
        arrived_at, change = arrivals[0]
        elapsed = arrived_at - written_at
        logging.getLogger(__name__).info("edge policy change propagated in %.3f s", elapsed)
        assert elapsed < PROPAGATION_LIMIT
        assert (change.old_revision, change.revision) == (first, revision)
        assert change.routes == ("carts",)
        assert edge.snapshot is change.snapshot
        found = edge.snapshot.table.match("any.example.com", "/carts/1", "POST")
        assert isinstance(found, RouteMatch)
        assert found.route.upstream == "orders-v2"


async def test_follows_again_after_keel_restarts(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin, tmp_path: Path
) -> None:
    first = await _put_policy(client, admin, _policy())
    port = free_port()
    async with AsyncExitStack() as stack:
        server = AsyncExitStack()
        url = await server.enter_async_context(serve_over_tcp(app, port))
        edge = await stack.enter_async_context(
            EdgeClient(url, auth=admin.api_key, local_copy=tmp_path / "edge.json",
                       max_reconnect_delay=0.5)
        )  # fmt: skip
        changes = Changes(edge)
        assert edge.revision == first

        await server.aclose()  # Keel stops; a change is made while it is away
        while_away = await _put_policy(client, admin, _policy({"name": "carts", "path": "/carts"}))
        assert edge.revision == first  # still serving what it had

        await stack.enter_async_context(serve_over_tcp(app, port))  # Keel is back
        change = await changes.until(while_away, timeout=20)
        assert (change.old_revision, change.routes) == (first, ("carts",))
        # And it keeps following.
        later = await _put_policy(client, admin, _policy())
        change = await changes.until(later)
        assert change.routes == ("carts",)
        assert edge.revision == later


async def test_starts_from_the_local_copy_when_keel_is_down_and_catches_up(
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    keel_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    saved = await _put_policy(client, admin, _policy())
    cache = tmp_path / "edge.json"
    async with EdgeClient(keel_url, auth=admin.api_key, local_copy=cache):
        pass

    async with tcp_proxy("127.0.0.1", urlsplit(keel_url).port or 0) as proxy:
        await proxy.cut()  # Keel is down
        newer = await _put_policy(client, admin, _policy({"name": "carts", "path": "/carts"}))
        with caplog.at_level(logging.WARNING, logger="keel_client.edge"):
            edge = EdgeClient(
                f"http://127.0.0.1:{proxy.port}", auth=admin.api_key, local_copy=cache,
                retry=NO_RETRY, max_reconnect_delay=0.5,
            )  # fmt: skip
            async with edge:
                assert edge.loaded_from == "file"
                assert edge.revision == saved
                assert [route.name for route in edge.snapshot.table.routes] == [
                    "orders",
                    "invoices",
                ]
                changes = Changes(edge)
                await proxy.restore()  # Keel is back: the client catches up
                change = await changes.until(newer, timeout=20)
                assert change.routes == ("carts",)
                assert (edge.loaded_from, edge.revision) == ("server", newer)
    assert any(
        "starting from the local copy" in record.getMessage() and str(cache) in record.getMessage()
        for record in caplog.records
    )


async def test_a_client_started_without_any_policy_takes_the_first_one_keel_serves(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str
) -> None:
    async with tcp_proxy("127.0.0.1", urlsplit(keel_url).port or 0) as proxy:
        await proxy.cut()  # Keel is down and there is no local copy
        edge = EdgeClient(
            f"http://127.0.0.1:{proxy.port}", auth=admin.api_key, retry=NO_RETRY,
            max_reconnect_delay=0.5,
        )  # fmt: skip
        try:
            await edge.start(require_policy=False)
            assert (edge.loaded_from, edge.revision, edge.snapshot.table.routes) == (None, 0, ())
            changes = Changes(edge)
            revision = await _put_policy(client, admin, _policy())
            await proxy.restore()
            change = await changes.until(revision, timeout=20)
            assert (change.old_revision, change.routes) == (0, ("invoices", "orders"))
            assert edge.loaded_from == "server"
        finally:
            await edge.aclose()


async def test_a_service_enforces_only_the_routes_that_point_at_it(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str
) -> None:
    first = await _put_policy(client, admin, _policy())
    async with EdgeClient(keel_url, auth=admin.api_key, service="orders-v2") as edge:
        changes = Changes(edge)
        # Only the route whose canary goes to orders-v2, matched whatever the host.
        assert [route.name for route in edge.snapshot.table.routes] == ["invoices"]
        assert edge.snapshot.table.match("orders-v2.pods.internal", "/orders/1", "GET") is None
        found = edge.snapshot.table.match("orders-v2.pods.internal", "/invoices/1", "GET")
        assert isinstance(found, RouteMatch)
        assert found.route.name == "invoices"
        assert [route.name for route in edge.snapshot.policy.routes] == ["invoices"]
        assert len(edge.snapshot.policy.upstreams) == 3

        # A change to another service's routes: a new revision, none of its own routes.
        other = await _put_policy(client, admin, _policy({"name": "carts", "path": "/carts",
                                                          "upstream": "billing"}))  # fmt: skip
        change = await changes.until(other)
        assert (change.old_revision, change.routes) == (first, ())
        # A route pointed at it.
        own = await _put_policy(client, admin, _policy({"name": "carts", "path": "/carts",
                                                        "upstream": "orders-v2"}))  # fmt: skip
        change = await changes.until(own)
        assert change.routes == ("carts",)
        assert [route.name for route in edge.snapshot.table.routes] == ["invoices", "carts"]


async def test_a_policy_this_sdk_cannot_read_is_ignored_with_one_error(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    keel_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Keel serves a revision this SDK version refuses (here a route naming a pool the
    policy lacks, which Keel's own reads do not re-check): the running client keeps the
    revision it has, says so once, and takes the next good revision."""
    first = await _put_policy(client, admin, _policy())
    async with tcp_proxy("127.0.0.1", urlsplit(keel_url).port or 0) as proxy:
        edge = EdgeClient(
            f"http://127.0.0.1:{proxy.port}", auth=admin.api_key, max_reconnect_delay=0.5
        )
        async with edge:
            changes = Changes(edge)
            await proxy.cut()  # so the bad revision is in place before the client reads it
            bad = await _put_policy(client, admin, _policy({"name": "carts", "path": "/carts"}))
            unreadable = _policy({"name": "carts", "path": "/carts", "upstream": "ghost"})
            async with unit_of_work(app) as session:
                bind_tenant(session, admin.tenant_id)
                await session.execute(
                    update(GatewayPolicyRevision)
                    .where(GatewayPolicyRevision.revision == bad)
                    .values(document=unreadable)
                )
            served = await client.get(POLICY_PATH, headers=admin.headers)
            assert served.json()["policy"]["routes"][2]["upstream"] == "ghost"

            with caplog.at_level(logging.ERROR, logger="keel_client.edge"):
                await proxy.restore()
                await eventually(
                    lambda: any(r.levelno == logging.ERROR for r in caplog.records), timeout=20
                )
                assert edge.revision == first  # the previous snapshot stays
                assert [route.name for route in edge.snapshot.table.routes] == [
                    "orders",
                    "invoices",
                ]
                good = await _put_policy(client, admin, _policy())
                change = await changes.until(good)
            assert (change.old_revision, change.revision, change.routes) == (first, good, ())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert f"revision {bad}" in errors[0]
    assert "routes.2.upstream" in errors[0] or "ghost" in errors[0]


async def test_a_credential_without_the_read_permission_is_refused_at_start(
    app: FastAPI, admin: TenantAdmin, keel_url: str
) -> None:
    headers = await member(app, admin, "flags:*:read")
    token = headers["Authorization"].removeprefix("Bearer ")
    edge = EdgeClient(keel_url, auth=token)
    try:
        with pytest.raises(EdgeError) as caught:
            await edge.start()
    finally:
        await edge.aclose()
    assert caught.value.status == 403
    assert "gateway:policy:read" in caught.value.message
    # A reader may.
    reader = await member(app, admin, "gateway:policy:read")
    async with EdgeClient(
        keel_url, auth=reader["Authorization"].removeprefix("Bearer ")
    ) as allowed:
        assert allowed.loaded_from == "server"


async def test_keel_hands_out_edge_clients_on_its_pool(
    client: httpx.AsyncClient, admin: TenantAdmin, keel_url: str
) -> None:
    revision = await _put_policy(client, admin, _policy())
    async with Keel(keel_url, credentials=admin.api_key) as keel:
        edge = keel.edge.client(service="orders")
        assert edge.api is keel.api
        await edge.start()
        assert edge.revision == revision
        assert [route.name for route in edge.snapshot.table.routes] == ["orders"]
    # Closed with the Keel: it no longer follows.
    assert not edge._follower.is_started
