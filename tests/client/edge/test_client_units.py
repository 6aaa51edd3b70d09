"""``EdgeClient`` without a Keel: which routes a service keeps, how a policy answer is read,
and what ``start()`` does when Keel cannot be reached (the local copy, or a clear error).

The behaviour against a real Keel (changes followed, restarts, a policy from a newer
server) is in ``test_client.py``."""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

import pytest

from keel_client.config._snapshot import LocalCopy, Snapshot
from keel_client.edge._client import (
    EdgeClient,
    EdgeSnapshot,
    EdgeUnavailable,
    _UnreadablePolicy,
    parse_policy_document,
    routes_for_service,
)
from keel_client.edge._match import RouteMatch
from keel_client.edge._model import EdgePolicy
from keel_client.http import RetryPolicy
from tests.support.keel_process import free_port

NO_RETRY = RetryPolicy(max_retries=0)


def _pool(name: str) -> dict[str, Any]:
    return {"name": name, "targets": [{"url": f"http://{name}.internal:8080"}]}


POLICY: dict[str, Any] = {
    "upstreams": [_pool("orders"), _pool("orders-v2"), _pool("billing")],
    "routes": [
        {"name": "orders", "hosts": ["api.example.com"], "path": "/orders", "upstream": "orders"},
        {
            "name": "orders-canary",
            "hosts": ["api.example.com"],
            "path": "/carts",
            "upstream": "billing",
            "versions": [{"upstream": "orders-v2", "weight": 10}],
        },
        {"name": "billing", "hosts": ["api.example.com"], "path": "/invoices",
         "upstream": "billing"},
        {"name": "middleware-only", "path": "/health"},
    ],
}  # fmt: skip


def _names(snapshot: EdgeSnapshot) -> list[str]:
    return sorted(route.name for route in snapshot.table.routes)


def test_a_service_keeps_the_routes_whose_pool_or_version_pool_is_its_own() -> None:
    policy = EdgePolicy.model_validate(POLICY)
    assert [route.name for route in routes_for_service(policy.routes, "orders")] == ["orders"]
    assert [route.name for route in routes_for_service(policy.routes, "orders-v2")] == [
        "orders-canary"
    ]
    assert [route.name for route in routes_for_service(policy.routes, "billing")] == [
        "orders-canary",
        "billing",
    ]
    assert routes_for_service(policy.routes, "search") == []


def test_a_service_matches_its_routes_whatever_host_it_is_reached_at() -> None:
    policy = EdgePolicy.model_validate(POLICY)
    service = EdgeSnapshot.build(4, policy, "orders")
    gateway = EdgeSnapshot.build(4, policy, None)

    assert _names(service) == ["orders"]
    assert _names(gateway) == ["billing", "middleware-only", "orders", "orders-canary"]
    assert gateway.policy is policy
    # A service's policy is its own routes (what use_keel_edge enforces), with every pool.
    assert [route.name for route in service.policy.routes] == ["orders"]
    assert service.policy.upstreams == policy.upstreams
    found = service.table.match("orders-7.pods.internal", "/orders/42", "GET")
    assert isinstance(found, RouteMatch)
    assert found.route.name == "orders"
    # The gateway honours the hosts the routes list.
    assert gateway.table.match("orders-7.pods.internal", "/orders/42", "GET") is None
    found = gateway.table.match("api.example.com", "/orders/42", "GET")
    assert isinstance(found, RouteMatch)
    assert found.route.name == "orders"


def test_a_policy_answer_is_read_with_its_revision() -> None:
    revision, policy = parse_policy_document(
        {"revision": 3, "updated_at": "2026-12-06T10:00:00+00:00", "policy": POLICY}
    )
    assert revision == 3
    assert next(route.name for route in policy.routes) == "orders"
    empty_revision, empty = parse_policy_document({"revision": 0, "policy": {}})
    assert (empty_revision, empty.routes, empty.upstreams) == (0, [], [])


@pytest.mark.parametrize(
    "document",
    [
        None,
        [],
        {"policy": POLICY},
        {"revision": -1, "policy": POLICY},
        {"revision": True, "policy": POLICY},
        {"revision": "3", "policy": POLICY},
    ],
)
def test_an_answer_without_a_valid_revision_is_unreadable(document: Any) -> None:
    with pytest.raises(_UnreadablePolicy) as caught:
        parse_policy_document(document)
    assert caught.value.revision is None


def test_a_policy_from_a_newer_server_is_unreadable_naming_the_field() -> None:
    newer = {**POLICY, "routes": [{**POLICY["routes"][0], "mirror_to": "shadow"}]}
    with pytest.raises(_UnreadablePolicy) as caught:
        parse_policy_document({"revision": 9, "policy": newer})
    assert caught.value.revision == 9
    assert "routes.0.mirror_to" in caught.value.message
    assert "shadow" not in caught.value.message  # locations and messages, never the values
    assert "upgrade keel-client" in caught.value.message


def test_the_service_is_a_pool_name_or_none() -> None:
    with pytest.raises(ValueError, match="service"):
        EdgeClient("http://127.0.0.1:1", service="")


async def test_without_keel_or_a_local_copy_start_fails_clearly_or_enforces_nothing(
    tmp_path: Path,
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    missing = tmp_path / "edge.json"
    with pytest.raises(EdgeUnavailable) as caught:
        async with EdgeClient(nowhere, local_copy=missing, retry=NO_RETRY):
            pass
    assert caught.value.reasons[0].startswith("Keel: ")
    assert caught.value.reasons[1] == f"no local copy at {missing}"

    edge = EdgeClient(nowhere, retry=NO_RETRY)
    try:
        await edge.start(require_policy=False)
        assert edge.loaded_from is None
        assert (edge.revision, edge.snapshot.table.routes) == (0, ())
    finally:
        await edge.aclose()


async def test_starts_from_the_local_copy_when_keel_is_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache" / "edge.json"
    document = {"revision": 5, "updated_at": "2026-12-06T10:00:00+00:00", "policy": POLICY}
    LocalCopy(path).write(Snapshot("gateway", "policy", 5, document))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    nowhere = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="keel_client.edge"):
        async with EdgeClient(nowhere, service="orders", local_copy=path, retry=NO_RETRY) as edge:
            assert edge.loaded_from == "file"
            assert edge.revision == 5
            assert _names(edge.snapshot) == ["orders"]
    assert any(
        "starting from the local copy" in record.getMessage() and str(path) in record.getMessage()
        for record in caplog.records
    )


async def test_a_local_copy_this_sdk_cannot_read_is_no_fallback(tmp_path: Path) -> None:
    path = tmp_path / "edge.json"
    newer = {**POLICY, "mirrors": []}
    LocalCopy(path).write(Snapshot("gateway", "policy", 5, {"revision": 5, "policy": newer}))
    nowhere = f"http://127.0.0.1:{free_port()}"
    edge = EdgeClient(nowhere, local_copy=path, retry=NO_RETRY)
    try:
        with pytest.raises(EdgeUnavailable) as caught:
            await edge.start()
    finally:
        await edge.aclose()
    assert "mirrors" in caught.value.reasons[1]
