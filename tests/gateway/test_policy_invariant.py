"""An invariant over sequences of writes, on SQLite and PostgreSQL: whatever routes and pools
are put and deleted, valid or not, the stored current policy always validates (the SDK's
``EdgePolicy`` with its cross-checks), and the revision moves on by one exactly when a write
succeeded and changed something."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from keel_client.edge._model import EdgePolicy

API = "/gateway/v1"
STEPS = 40
POOLS = ["orders", "billing", "search"]
PATHS = ["/orders", "/billing", "/search", "/orders/{id}", "/"]


def random_route(chance: random.Random) -> tuple[str, dict[str, Any]]:
    """A route, sometimes one the policy must refuse (a pool it may lack, a path another
    route may take too, a malformed CORS origin)."""
    name = chance.choice(["a", "b", "c", "d"])
    path = chance.choice(PATHS)
    body: dict[str, Any] = {
        "path": path,
        "match": "pattern" if "{" in path else chance.choice(["prefix", "exact"]),
        "upstream": chance.choice([*POOLS, None, "missing"]),
    }
    if chance.random() < 0.2:
        body["cors"] = {"allow_origins": [chance.choice(["https://ok.test", "not an origin"])]}
    if chance.random() < 0.2:
        body["methods"] = [chance.choice(["GET", "POST"])]
    return name, body


def random_pool(chance: random.Random) -> tuple[str, dict[str, Any]]:
    """A pool, sometimes at a blocked address."""
    url = chance.choice(
        [
            "http://192.0.2.10:8080",
            "http://192.0.2.11",
            "http://169.254.169.254",
            "http://0251.0376.0251.0376",
        ]
    )
    return chance.choice(POOLS), {"targets": [{"url": url}]}


async def one_step(
    client: httpx.AsyncClient, headers: dict[str, str], chance: random.Random
) -> httpx.Response:
    kind = chance.choice(["put_route", "put_route", "delete_route", "put_pool", "delete_pool"])
    if kind == "put_route":
        name, body = random_route(chance)
        return await client.put(f"{API}/routes/{name}", headers=headers, json=body)
    if kind == "delete_route":
        return await client.delete(f"{API}/routes/{chance.choice('abcd')}", headers=headers)
    if kind == "put_pool":
        name, body = random_pool(chance)
        return await client.put(f"{API}/upstreams/{name}", headers=headers, json=body)
    return await client.delete(f"{API}/upstreams/{chance.choice(POOLS)}", headers=headers)


@pytest.mark.parametrize("seed", [1, 2])
async def test_the_stored_policy_always_validates_and_revisions_count_successful_writes(
    client: httpx.AsyncClient, headers: dict[str, str], seed: int
) -> None:
    chance = random.Random(seed)
    revision = 0
    outcomes: set[int] = set()
    for _ in range(STEPS):
        answer = await one_step(client, headers, chance)
        assert answer.status_code in (200, 404, 409, 422), answer.text
        outcomes.add(answer.status_code)
        current = await client.get(f"{API}/policy", headers=headers)
        assert current.status_code == 200
        EdgePolicy.model_validate(current.json()["policy"])  # cross-checks included
        written = answer.status_code == 200 and answer.json()["created"]
        assert current.json()["revision"] == revision + (1 if written else 0), answer.text
        revision = current.json()["revision"]
    # The sequence tried both kinds of write: some landed, some were refused.
    assert 200 in outcomes
    assert outcomes & {404, 409, 422}
