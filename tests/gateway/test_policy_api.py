"""The gateway policy API on SQLite and PostgreSQL: reads with ETag and 304, writes with
If-Match and 412, refusals naming the field, revisions and rollback, routes and pools one at a
time, audit events without header values, tenants apart, and a malformed credential."""

from __future__ import annotations

import json
from typing import Any

import httpx
from fastapi import FastAPI

from tests.support.audit import audit_events
from tests.support.tenants import TenantAdmin, make_tenant_admin, member

API = "/gateway/v1"

#: A header value a transform carries that must never reach an audit event or an error.
SECRET_HEADER_VALUE = "Bearer s3cr3t-upstream-token-value"


def pool(name: str, *urls: str) -> dict[str, Any]:
    return {"name": name, "targets": [{"url": url} for url in urls or ("http://192.0.2.10:8080",)]}


def route(name: str, path: str, upstream: str | None = "orders", **extra: Any) -> dict[str, Any]:
    return {"name": name, "path": path, "upstream": upstream, **extra}


def policy(*routes: dict[str, Any], pools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"upstreams": pools if pools is not None else [pool("orders")], "routes": list(routes)}


async def put_policy(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    document: dict[str, Any],
    *,
    if_match: str | None = None,
    comment: str = "",
) -> httpx.Response:
    extra = {"If-Match": if_match} if if_match else {}
    return await client.put(
        f"{API}/policy",
        headers={**headers, **extra},
        params={"comment": comment} if comment else None,
        json=document,
    )


def error_locations(answer: httpx.Response) -> list[list[str]]:
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    return [entry["location"] for entry in answer.json()["errors"]]


async def test_a_tenant_without_a_policy_reads_revision_0_and_the_empty_policy(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    answer = await client.get(f"{API}/policy", headers=headers)
    assert answer.status_code == 200, answer.text
    document = answer.json()
    tenant_id = document.pop("tenant_id")
    assert document == {
        "revision": 0,
        "updated_at": None,
        "policy": {"upstreams": [], "routes": []},
    }
    assert isinstance(tenant_id, str)
    assert tenant_id  # whose policy it is: a service enforcing it refuses other tenants
    assert answer.headers["ETag"] == '"0"'


async def test_a_policy_is_written_and_read_back_with_etag_and_304(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    written = await put_policy(client, headers, policy(route("orders", "/orders")), comment="v1")
    assert written.status_code == 200, written.text
    assert written.json()["revision"] == 1
    assert written.json()["created"] is True
    assert written.headers["ETag"] == '"1"'

    read = await client.get(f"{API}/policy", headers=headers)
    assert read.status_code == 200
    assert read.headers["ETag"] == '"1"'
    body = read.json()
    assert body["revision"] == 1
    assert [r["name"] for r in body["policy"]["routes"]] == ["orders"]
    assert body["policy"]["routes"][0]["match"] == "prefix"  # defaults filled in
    assert body["policy"]["upstreams"][0]["targets"][0]["url"] == "http://192.0.2.10:8080"

    cached = await client.get(f"{API}/policy", headers={**headers, "If-None-Match": '"1"'})
    assert cached.status_code == 304
    assert cached.headers["ETag"] == '"1"'
    stale = await client.get(f"{API}/policy", headers={**headers, "If-None-Match": '"0"'})
    assert stale.status_code == 200


async def test_the_same_document_again_makes_no_revision(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    document = policy(route("orders", "/orders"))
    assert (await put_policy(client, headers, document)).json()["revision"] == 1
    # Key order and defaults spelt out do not make a different policy.
    spelt_out = {
        "routes": [{**route("orders", "/orders"), "match": "prefix"}],
        "upstreams": document["upstreams"],
    }
    again = await put_policy(client, headers, spelt_out)
    assert again.status_code == 200, again.text
    assert again.json()["revision"] == 1
    assert again.json()["created"] is False
    revisions = await client.get(f"{API}/policy/revisions", headers=headers)
    assert [item["revision"] for item in revisions.json()["items"]] == [1]


async def test_a_stale_if_match_is_refused_with_412(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    first = await put_policy(client, headers, policy(route("orders", "/orders")), if_match='"0"')
    assert first.status_code == 200, first.text
    second = await put_policy(
        client, headers, policy(route("orders", "/v2/orders")), if_match='"1"'
    )
    assert second.status_code == 200, second.text
    stale = await put_policy(client, headers, policy(route("orders", "/v3/orders")), if_match='"1"')
    assert stale.status_code == 412
    assert stale.headers["content-type"] == "application/problem+json"
    current = await client.get(f"{API}/policy", headers=headers)
    assert current.json()["revision"] == 2
    assert current.json()["policy"]["routes"][0]["path"] == "/v2/orders"


async def test_overlapping_routes_are_refused_at_the_second_routes_path(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    answer = await put_policy(
        client,
        headers,
        policy(route("orders", "/orders"), route("orders-again", "/orders/")),
    )
    assert ["routes", "1", "path"] in error_locations(answer)
    assert (await client.get(f"{API}/policy", headers=headers)).json()["revision"] == 0


async def test_upstream_urls_at_blocked_addresses_are_refused_in_every_spelling(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    urls = [
        "http://169.254.169.254",
        "http://[::ffff:a9fe:a9fe]",
        "http://0251.0376.0251.0376",
        "http://[::ffff:169.254.169.254]:8080/latest",
        "http://0xa9.0xfe.0xa9.0xfe",
        "http://100.100.100.200",
        "http://metadata.google.internal",
        "http://192.0.2.10:8080",  # allowed: documentation network, not blocked by default
    ]
    answer = await put_policy(client, headers, policy(pools=[pool("meta", *urls)]))
    locations = error_locations(answer)
    expected = [["upstreams", "0", "targets", str(index), "url"] for index in range(len(urls) - 1)]
    assert locations == expected
    assert all(e["code"] == "upstream_address_blocked" for e in answer.json()["errors"])


async def test_a_malformed_cors_origin_and_an_absurd_rate_limit_are_named(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    bad = route(
        "orders",
        "/orders",
        cors={"allow_origins": ["https://ok.example", "ftp://files.example"]},
        rate_limits=[{"name": "flood", "limit": 10**12, "period_seconds": 1}],
    )
    locations = error_locations(await put_policy(client, headers, policy(bad)))
    assert ["routes", "0", "cors", "allow_origins", "1"] in locations
    assert any(location[:4] == ["routes", "0", "rate_limits", "0"] for location in locations)


async def test_a_route_naming_a_missing_pool_is_refused(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    answer = await put_policy(client, headers, policy(route("orders", "/orders", "nowhere")))
    assert error_locations(answer) == [["routes", "0", "upstream"]]
    assert answer.json()["errors"][0]["code"] == "cross_reference"


async def test_refusals_never_echo_a_header_value(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    bad = route(
        "orders",
        "/orders",
        request_headers={"set": {"authorization": SECRET_HEADER_VALUE + "\n"}},
    )
    answer = await put_policy(client, headers, policy(bad))
    assert ["routes", "0", "request_headers", "set"] in error_locations(answer)
    assert "s3cr3t" not in answer.text


async def test_validate_is_a_dry_run(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    good = await client.post(
        f"{API}/policy/validate", headers=headers, json=policy(route("orders", "/orders"))
    )
    assert good.status_code == 200, good.text
    assert good.json()["valid"] is True
    bad = await client.post(
        f"{API}/policy/validate", headers=headers, json=policy(route("orders", "/orders", "x"))
    )
    assert error_locations(bad) == [["routes", "0", "upstream"]]
    assert (await client.get(f"{API}/policy", headers=headers)).json()["revision"] == 0


async def test_revisions_are_listed_read_and_rolled_back(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    await put_policy(client, headers, policy(route("orders", "/orders")), comment="first")
    await put_policy(client, headers, policy(route("orders", "/v2/orders")), comment="second")
    listed = await client.get(f"{API}/policy/revisions", headers=headers)
    assert [(i["revision"], i["comment"]) for i in listed.json()["items"]] == [
        (2, "second"),
        (1, "first"),
    ]
    assert listed.json()["items"][0]["created_by"].startswith("user:")
    older = await client.get(f"{API}/policy/revisions", headers=headers, params={"before": 2})
    assert [i["revision"] for i in older.json()["items"]] == [1]
    one = await client.get(f"{API}/policy/revisions/1", headers=headers)
    assert one.json()["policy"]["routes"][0]["path"] == "/orders"
    missing = await client.get(f"{API}/policy/revisions/9", headers=headers)
    assert missing.status_code == 404

    stale = await client.post(
        f"{API}/policy/rollback", headers={**headers, "If-Match": '"1"'}, json={"revision": 1}
    )
    assert stale.status_code == 412
    rolled = await client.post(f"{API}/policy/rollback", headers=headers, json={"revision": 1})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["revision"] == 3
    assert rolled.json()["policy"]["routes"][0]["path"] == "/orders"
    latest = (await client.get(f"{API}/policy/revisions/3", headers=headers)).json()
    assert latest["comment"] == "rollback to revision 1"


async def test_routes_and_pools_are_changed_one_at_a_time(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    made = await client.put(f"{API}/upstreams/orders", headers=headers, json=pool("orders"))
    assert made.status_code == 200, made.text
    assert made.json()["revision"] == 1
    routed = await client.put(
        f"{API}/routes/orders", headers=headers, json={"path": "/orders", "upstream": "orders"}
    )
    assert routed.status_code == 200, routed.text
    assert routed.json()["item"]["name"] == "orders"
    assert routed.headers["ETag"] == '"2"'

    listed = await client.get(f"{API}/routes", headers=headers)
    assert [item["name"] for item in listed.json()["items"]] == ["orders"]
    one = await client.get(f"{API}/routes/orders", headers=headers)
    assert one.json()["item"]["path"] == "/orders"
    assert (await client.get(f"{API}/routes/nope", headers=headers)).status_code == 404
    pools = await client.get(f"{API}/upstreams", headers=headers)
    assert [item["name"] for item in pools.json()["items"]] == ["orders"]

    in_use = await client.delete(f"{API}/upstreams/orders", headers=headers)
    assert in_use.status_code == 409
    assert in_use.json()["routes"] == ["orders"]
    mismatched = await client.put(
        f"{API}/routes/orders", headers=headers, json={"name": "other", "path": "/x"}
    )
    assert mismatched.status_code == 422

    assert (await client.delete(f"{API}/routes/orders", headers=headers)).status_code == 200
    assert (await client.delete(f"{API}/routes/orders", headers=headers)).status_code == 404
    gone = await client.delete(f"{API}/upstreams/orders", headers=headers)
    assert gone.status_code == 200, gone.text
    assert gone.json()["revision"] == 4
    final = await client.get(f"{API}/policy", headers=headers)
    assert final.json()["policy"] == {"upstreams": [], "routes": []}


async def test_each_write_is_audited_with_counts_and_no_header_values(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    transformed = route(
        "orders", "/orders", request_headers={"set": {"authorization": SECRET_HEADER_VALUE}}
    )
    written = await put_policy(client, admin.headers, policy(transformed), comment="launch")
    assert written.status_code == 200, written.text
    events = await audit_events(app, admin.tenant_id, action_prefix="gateway.")
    assert [event.action for event in events] == ["gateway.policy.update"]
    event = events[0]
    assert event.data["revision"] == 1
    assert event.data["routes"] == 1
    assert event.data["upstreams"] == 1
    assert event.data["comment"] == "launch"
    assert SECRET_HEADER_VALUE not in json.dumps(event.document)


async def test_another_tenants_admin_neither_reads_nor_changes_the_policy(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    await put_policy(client, headers, policy(route("orders", "/orders")))
    other = await make_tenant_admin(app)
    theirs = await client.get(f"{API}/policy", headers=other.headers)
    assert theirs.json()["revision"] == 0
    assert theirs.json()["policy"]["routes"] == []
    written = await put_policy(client, other.headers, policy(route("mine", "/mine")))
    assert written.json()["revision"] == 1
    ours = await client.get(f"{API}/policy", headers=headers)
    assert ours.json()["revision"] == 1
    assert [r["name"] for r in ours.json()["policy"]["routes"]] == ["orders"]


async def test_a_malformed_authorization_header_is_a_401_problem(
    client: httpx.AsyncClient,
) -> None:
    for value in ("Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-key", "garbage"):
        answer = await client.get(f"{API}/policy", headers={"Authorization": value})
        assert answer.status_code == 401, value
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"] == "urn:keel:problem:unauthorized"


async def test_reading_needs_policy_read_and_changing_needs_policy_write(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    reader = await member(app, admin, "gateway:policy:read")
    writer = await member(app, admin, "gateway:policy:write")
    stranger = await member(app, admin, "flags:*:read")
    document = policy(route("orders", "/orders"))

    assert (await client.get(f"{API}/policy", headers=reader)).status_code == 200
    refused = await put_policy(client, reader, document)
    assert refused.status_code == 403
    assert "gateway:policy:write" in refused.json()["detail"]
    assert (
        await client.post(f"{API}/policy/validate", headers=reader, json=document)
    ).status_code == 403
    assert (await client.get(f"{API}/routes", headers=stranger)).status_code == 403
    assert (await client.get(f"{API}/policy/watch", headers=stranger)).status_code == 403

    written = await put_policy(client, writer, document)  # write includes read
    assert written.status_code == 200, written.text
    assert (await client.get(f"{API}/routes/orders", headers=writer)).status_code == 200


RICH_POLICY: dict[str, Any] = {
    "upstreams": [
        {
            "name": "orders",
            "targets": [
                {"url": "http://192.0.2.10:8080/v2", "weight": 3},
                {"url": "https://192.0.2.11"},
            ],
            "balance": "consistent_hash",
            "hash_on": "header:X-Tenant",
            "health": {"path": "/health/ready", "expected_status": [200]},
        },
        {"name": "orders-canary", "targets": [{"url": "http://192.0.2.12:8080"}]},
    ],
    "routes": [
        {
            "name": "orders",
            "hosts": ["API.example.com", "*.example.org"],
            "path": "/orders",
            "methods": ["get", "POST"],
            "upstream": "orders",
            "versions": [{"upstream": "orders-canary", "weight": 10}],
            "strip_prefix": True,
            "auth": {"mode": "jwt", "audience": "orders", "permissions": ["orders:order:read"]},
            "rate_limits": [{"name": "per-ip", "limit": 100, "period_seconds": 60}],
            "cors": {"allow_origins": ["https://app.example.com"], "allow_credentials": True},
            "headers": {"profile": "web", "hsts": False},
            "request_headers": {"set": {"X-From-Gateway": "1"}, "remove": ["Cookie"]},
            "ssrf": [{"location": "json", "name": "hooks.*.url"}],
            "max_body_bytes": 1048576,
            "timeouts": {"connect_seconds": 2.5},
            "retries": {"attempts": 1, "on": ["connect_error"]},
            "cache": {"enabled": True, "key_headers": ["accept-language"]},
        },
        {"name": "item", "path": "/orders/{id}/items/{rest:path}", "match": "pattern"},
    ],
}


async def test_a_policy_read_back_and_written_again_is_the_same_policy(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    written = await put_policy(client, headers, RICH_POLICY)
    assert written.status_code == 200, written.text
    read = (await client.get(f"{API}/policy", headers=headers)).json()
    assert read["policy"]["routes"][0]["hosts"] == ["api.example.com", "*.example.org"]
    again = await put_policy(client, headers, read["policy"])
    assert again.json() | {"warnings": []} == written.json() | {"created": False, "warnings": []}
    # A change of one part rewrites the others from their stored form: they must still pass.
    added = await client.put(f"{API}/routes/health", headers=headers, json={"path": "/health"})
    assert added.status_code == 200, added.text
    after = (await client.get(f"{API}/policy", headers=headers)).json()["policy"]
    assert after["routes"][:2] == read["policy"]["routes"]
    assert after["upstreams"] == read["policy"]["upstreams"]


async def test_a_whole_policy_may_be_larger_than_the_default_body_limit_up_to_4_mib(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    padded = {**policy(route("orders", "/orders")), "padding": "x" * (2 * 1024 * 1024)}
    answer = await put_policy(client, headers, padded)
    assert answer.status_code == 422  # read and refused for its unknown field, not 413
    assert ["padding"] in error_locations(answer)
    too_large = {**padded, "padding": "x" * (5 * 1024 * 1024)}
    assert (await put_policy(client, headers, too_large)).status_code == 413
    route_padded = {"path": "/x", "padding": "x" * (2 * 1024 * 1024)}
    assert (
        await client.put(f"{API}/routes/x", headers=headers, json=route_padded)
    ).status_code == 413
