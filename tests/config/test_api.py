"""The config API on SQLite and PostgreSQL: applications and environments, reads with ETag
and 304, atomic change sets with If-Match, history, diff, rollback, JSON Schema refusals,
promotion, permissions, tenants apart, audit events and secret references."""

from __future__ import annotations

import json
import uuid

import httpx
from fastapi import FastAPI

from tests.support.audit import audit_events
from tests.support.config_api import API, new_app, write
from tests.support.tenants import TenantAdmin, make_tenant_admin, member

LIMITS_SCHEMA = {
    "type": "object",
    "properties": {
        "limits": {
            "type": "object",
            "properties": {"max_items": {"type": "integer", "maximum": 100}},
            "required": ["max_items"],
        },
        "greeting": {"type": "string"},
    },
}


def env_url(app: str, env: str) -> str:
    return f"{API}/apps/{app}/envs/{env}"


async def test_values_are_written_and_read_with_etag_and_304(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    app = await new_app(client, headers, "staging")
    empty = await client.get(env_url(app, "staging"), headers=headers)
    assert empty.status_code == 200
    assert empty.json()["revision"] == 1
    assert empty.json()["values"] == {}
    assert empty.headers["ETag"] == '"1"'

    written = await write(
        client, headers, app, "staging", {"timeout": 2.5, "feature": {"on": True}}, message="first"
    )
    assert written.status_code == 200, written.text
    assert written.json()["created"] is True
    assert written.json()["revision"]["number"] == 2
    assert written.json()["revision"]["changes"] == {"set": ["feature", "timeout"], "unset": []}
    assert written.headers["ETag"] == '"2"'

    read = await client.get(env_url(app, "staging"), headers=headers)
    assert read.json() == {
        "application": app,
        "environment": "staging",
        "revision": 2,
        "values": {"feature": {"on": True}, "timeout": 2.5},
        "secrets": None,
    }
    stale = await client.get(env_url(app, "staging"), headers={**headers, "If-None-Match": '"1"'})
    assert stale.status_code == 200
    current = await client.get(env_url(app, "staging"), headers={**headers, "If-None-Match": '"2"'})
    assert current.status_code == 304
    assert current.headers["ETag"] == '"2"'
    assert current.content == b""

    key = await client.get(f"{env_url(app, 'staging')}/keys/feature", headers=headers)
    assert key.json() == {"key": "feature", "revision": 2, "value": {"on": True}, "secrets": None}
    key_304 = await client.get(
        f"{env_url(app, 'staging')}/keys/feature", headers={**headers, "If-None-Match": '"2"'}
    )
    assert key_304.status_code == 304
    missing = await client.get(f"{env_url(app, 'staging')}/keys/nope", headers=headers)
    assert missing.status_code == 404

    put = await client.put(
        f"{env_url(app, 'staging')}/keys/retries", headers=headers, json={"value": [1, 2, 3]}
    )
    assert put.status_code == 200
    assert put.json()["revision"]["number"] == 3
    deleted = await client.delete(f"{env_url(app, 'staging')}/keys/timeout", headers=headers)
    assert deleted.status_code == 200
    assert deleted.json()["revision"]["changes"] == {"set": [], "unset": ["timeout"]}
    again = await client.delete(f"{env_url(app, 'staging')}/keys/timeout", headers=headers)
    assert again.status_code == 404
    final = (await client.get(env_url(app, "staging"), headers=headers)).json()
    assert final["values"] == {"feature": {"on": True}, "retries": [1, 2, 3]}
    assert final["revision"] == 4

    envs = await client.get(f"{API}/apps/{app}/envs", headers=headers)
    assert [(env["name"], env["revision"]) for env in envs.json()] == [("staging", 4)]
    apps = await client.get(f"{API}/apps", headers=headers)
    assert app in [entry["name"] for entry in apps.json()]


async def test_if_match_refuses_a_write_based_on_an_old_revision(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    app = await new_app(client, headers, "prod")
    first = await write(client, headers, app, "prod", {"a": 1}, if_match='"1"')
    assert first.status_code == 200, first.text
    stale = await write(client, headers, app, "prod", {"a": 2}, if_match='"1"')
    assert stale.status_code == 412
    assert stale.headers["content-type"] == "application/problem+json"
    assert stale.json()["current_etag"] == '"2"'
    assert (await client.get(env_url(app, "prod"), headers=headers)).json()["values"] == {"a": 1}
    # Without If-Match the write applies to the newest revision (the CLI's default).
    blind = await write(client, headers, app, "prod", {"b": 2})
    assert blind.status_code == 200
    assert blind.json()["revision"]["number"] == 3
    stale_key = await client.put(
        f"{env_url(app, 'prod')}/keys/a", headers={**headers, "If-Match": '"2"'}, json={"value": 9}
    )
    assert stale_key.status_code == 412


async def test_a_change_set_is_one_revision_or_nothing(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    app = await new_app(client, headers, "prod", schema=LIMITS_SCHEMA)
    await write(client, headers, app, "prod", {"limits": {"max_items": 5}, "old": "x"})
    refused = await write(
        client, headers, app, "prod", {"greeting": "hi", "limits": {"max_items": 1000}}, ["old"]
    )
    assert refused.status_code == 422
    after = (await client.get(env_url(app, "prod"), headers=headers)).json()
    assert after["revision"] == 2
    assert after["values"] == {"limits": {"max_items": 5}, "old": "x"}

    applied = await write(client, headers, app, "prod", {"greeting": "hi", "new": 1}, ["old"])
    assert applied.status_code == 200
    assert applied.json()["revision"]["changes"] == {"set": ["greeting", "new"], "unset": ["old"]}
    values = (await client.get(env_url(app, "prod"), headers=headers)).json()["values"]
    assert values == {"greeting": "hi", "limits": {"max_items": 5}, "new": 1}

    unchanged = await write(client, headers, app, "prod", {"greeting": "hi"})
    assert unchanged.status_code == 200
    assert unchanged.json()["created"] is False
    assert unchanged.json()["revision"]["number"] == 3


async def test_history_diff_and_rollback(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    app = await new_app(client, headers, "prod")
    await write(client, headers, app, "prod", {"a": 1, "b": "x"}, message="two keys")
    await write(client, headers, app, "prod", {"a": 2, "c": True}, ["b"], message="change")

    diff = await client.get(f"{env_url(app, 'prod')}/diff?from=2&to=3", headers=headers)
    assert diff.status_code == 200
    assert diff.json() == {
        "from": 2,
        "to": 3,
        "added": {"c": True},
        "removed": {"b": "x"},
        "changed": {"a": {"before": 1, "after": 2}},
    }

    rolled = await client.post(
        f"{env_url(app, 'prod')}/rollback",
        headers=headers,
        json={"revision": 2, "message": "bad deploy"},
    )
    assert rolled.status_code == 200, rolled.text
    revision = rolled.json()["revision"]
    assert revision["number"] == 4
    assert (revision["operation"], revision["source"]) == ("rollback", "revision 2")
    assert (await client.get(env_url(app, "prod"), headers=headers)).json()["values"] == {
        "a": 1,
        "b": "x",
    }
    # The rolled-over revision is still there, unchanged.
    three = await client.get(f"{env_url(app, 'prod')}/revisions/3", headers=headers)
    assert three.json()["values"] == {"a": 2, "c": True}

    page = await client.get(f"{env_url(app, 'prod')}/revisions?limit=3", headers=headers)
    body = page.json()
    assert [item["number"] for item in body["items"]] == [1, 2, 3]
    assert [item["message"] for item in body["items"]][1:] == ["two keys", "change"]
    assert body["items"][1]["author"]["type"] == "user"
    assert "values" not in body["items"][0]
    rest = await client.get(
        f"{env_url(app, 'prod')}/revisions", params={"cursor": body["next_cursor"]}, headers=headers
    )
    assert [item["number"] for item in rest.json()["items"]] == [4]
    assert rest.json()["next_cursor"] is None

    to_current = await client.get(f"{env_url(app, 'prod')}/diff?from=3", headers=headers)
    assert to_current.json()["to"] == 4
    unknown = await client.post(
        f"{env_url(app, 'prod')}/rollback", headers=headers, json={"revision": 99}
    )
    assert unknown.status_code == 404


async def test_a_write_failing_the_schema_is_refused_with_its_path_and_rule(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    app = await new_app(client, headers, "prod", schema=LIMITS_SCHEMA)
    refused = await write(
        client,
        headers,
        app,
        "prod",
        {"limits": {"max_items": 4242}, "greeting": "very-distinctive-value"},
    )
    assert refused.status_code == 422
    problem = refused.json()
    assert problem["type"] == "urn:keel:problem:validation"
    assert problem["errors"] == [
        {
            "path": "$.limits.max_items",
            "rule": "maximum",
            "message": "fails maximum 100",
            "schema_path": "/properties/limits/properties/max_items/maximum",
        }
    ]
    assert "4242" not in refused.text

    missing = await write(client, headers, app, "prod", {"limits": {}, "greeting": 7})
    rules = {(error["path"], error["rule"]) for error in missing.json()["errors"]}
    assert rules == {("$.limits", "required"), ("$.greeting", "type")}

    bad_schema = await client.put(
        f"{API}/apps/{app}", headers=headers, json={"schema": {"type": "no-such-type"}}
    )
    assert bad_schema.status_code == 422
    assert bad_schema.json()["errors"][0]["path"] == "/type"

    await write(client, headers, app, "prod", {"limits": {"max_items": 50}})
    stricter = {**LIMITS_SCHEMA, "required": ["greeting"]}
    application = await client.get(f"{API}/apps/{app}", headers=headers)
    assert application.json()["schema"] == LIMITS_SCHEMA
    tightening = await client.put(
        f"{API}/apps/{app}",
        headers={**headers, "If-Match": application.headers["ETag"]},
        json={"schema": stricter},
    )
    assert tightening.status_code == 422
    assert tightening.json()["environments"][0]["environment"] == "prod"
    loosened = await client.put(
        f"{API}/apps/{app}",
        headers={**headers, "If-Match": application.headers["ETag"]},
        json={"schema": None},
    )
    assert loosened.status_code == 200
    assert loosened.json()["schema"] is None
    assert loosened.headers["ETag"] == '"2"'
    stale = await client.put(
        f"{API}/apps/{app}", headers={**headers, "If-Match": '"1"'}, json={"schema": None}
    )
    assert stale.status_code == 412


async def test_a_rollback_to_values_the_schema_now_refuses_is_refused(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    app = await new_app(client, headers, "prod")
    await write(client, headers, app, "prod", {"limits": {"max_items": 500}})
    await write(client, headers, app, "prod", {"limits": {"max_items": 10}})
    schema = await client.put(f"{API}/apps/{app}", headers=headers, json={"schema": LIMITS_SCHEMA})
    assert schema.status_code == 200, schema.text
    refused = await client.post(
        f"{env_url(app, 'prod')}/rollback", headers=headers, json={"revision": 2}
    )
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["path"] == "$.limits.max_items"


async def test_promotion_previews_then_applies_with_confirm(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    app = await new_app(client, headers, "staging", "production")
    await write(client, headers, app, "staging", {"a": 1, "b": 2, "c": 3})
    await write(client, headers, app, "production", {"a": 0, "old": True})
    promote_url = f"{API}/apps/{app}/promote"

    preview = await client.post(
        promote_url, headers=headers, json={"from": "staging", "to": "production"}
    )
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert body["applied"] is False
    assert (body["from"], body["source_revision"], body["to"], body["target_revision"]) == (
        "staging",
        2,
        "production",
        2,
    )
    assert body["diff"] == {
        "added": {"b": 2, "c": 3},
        "removed": {"old": True},
        "changed": {"a": {"before": 0, "after": 1}},
    }
    assert preview.headers["ETag"] == '"2"'
    production = (await client.get(env_url(app, "production"), headers=headers)).json()
    assert production["revision"] == 2  # a preview changes nothing

    no_precondition = await client.post(
        promote_url, headers=headers, json={"from": "staging", "to": "production", "confirm": True}
    )
    assert no_precondition.status_code == 428
    await write(client, headers, app, "staging", {"d": 4})
    moved_source = await client.post(
        promote_url,
        headers={**headers, "If-Match": preview.headers["ETag"]},
        json={"from": "staging", "to": "production", "confirm": True, "source_revision": 2},
    )
    assert moved_source.status_code == 412

    subset = await client.post(
        promote_url,
        headers={**headers, "If-Match": '"2"'},
        json={"from": "staging", "to": "production", "keys": ["a", "old"], "confirm": True},
    )
    assert subset.status_code == 200, subset.text
    assert subset.json()["applied"] is True
    assert subset.json()["target_revision"] == 3
    assert (await client.get(env_url(app, "production"), headers=headers)).json()["values"] == {
        "a": 1
    }
    stale = await client.post(
        promote_url,
        headers={**headers, "If-Match": '"2"'},
        json={"from": "staging", "to": "production", "confirm": True},
    )
    assert stale.status_code == 412
    whole = await client.post(
        promote_url,
        headers={**headers, "If-Match": '"3"'},
        json={"from": "staging", "to": "production", "confirm": True, "message": "release 7"},
    )
    assert whole.status_code == 200
    values = (await client.get(env_url(app, "production"), headers=headers)).json()["values"]
    assert values == {"a": 1, "b": 2, "c": 3, "d": 4}
    latest = await client.get(f"{env_url(app, 'production')}/revisions/4", headers=headers)
    assert (latest.json()["operation"], latest.json()["source"]) == ("promote", "staging@3")
    assert latest.json()["message"] == "release 7"

    unknown = await client.post(
        promote_url, headers=headers, json={"from": "staging", "to": "nowhere"}
    )
    assert unknown.status_code == 404


async def test_permissions_are_per_application_and_level(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = admin.headers
    billing = await new_app(client, headers, "prod")
    other = await new_app(client, headers, "prod")
    await write(client, headers, billing, "prod", {"a": 1})
    await write(client, headers, other, "prod", {"a": 1})

    reader = await member(app, admin, f"config:{billing}:read")
    assert (await client.get(env_url(billing, "prod"), headers=reader)).status_code == 200
    refused = await write(client, reader, billing, "prod", {"a": 2})
    assert refused.status_code == 403
    assert refused.json()["type"] == "urn:keel:problem:forbidden"
    assert (await client.get(env_url(other, "prod"), headers=reader)).status_code == 403
    listed = await client.get(f"{API}/apps", headers=reader)
    assert [entry["name"] for entry in listed.json()] == [billing]
    create_env = await client.post(
        f"{API}/apps/{billing}/envs", headers=reader, json={"name": "dev"}
    )
    assert create_env.status_code == 403

    writer = await member(app, admin, f"config:{billing}:write")
    assert (await write(client, writer, billing, "prod", {"a": 2})).status_code == 200
    assert (
        await client.put(f"{API}/apps/{billing}", headers=writer, json={"schema": None})
    ).status_code == 403
    new = await client.post(f"{API}/apps", headers=writer, json={"name": f"x-{billing}"})
    assert new.status_code == 403

    wildcard = await member(app, admin, "config:*:read")
    assert (await client.get(env_url(other, "prod"), headers=wildcard)).status_code == 200
    assert (await write(client, wildcard, other, "prod", {"a": 3})).status_code == 403

    anonymous = await client.get(env_url(billing, "prod"))
    assert anonymous.status_code == 401


async def test_tenants_never_see_each_others_config(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    name = await new_app(client, admin.headers, "prod")
    await write(client, admin.headers, name, "prod", {"a": 1})
    stranger = await make_tenant_admin(app)
    assert (await client.get(env_url(name, "prod"), headers=stranger.headers)).status_code == 404
    refused = await write(client, stranger.headers, name, "prod", {"a": 2})
    assert refused.status_code == 404
    assert name not in [
        entry["name"]
        for entry in (await client.get(f"{API}/apps", headers=stranger.headers)).json()
    ]
    # The same name is free in the other tenant, and stays apart.
    created = await client.post(f"{API}/apps", headers=stranger.headers, json={"name": name})
    assert created.status_code == 201
    assert (await client.get(env_url(name, "prod"), headers=admin.headers)).json()["values"] == {
        "a": 1
    }


async def test_every_change_is_an_audit_event_naming_keys_not_values(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = admin.headers
    name = await new_app(client, headers, "staging", "prod")
    await write(client, headers, name, "staging", {"token_hint": "distinctive-4711"}, message="m1")
    await client.post(f"{env_url(name, 'staging')}/rollback", headers=headers, json={"revision": 1})
    await client.post(
        f"{API}/apps/{name}/promote",
        headers={**headers, "If-Match": '"1"'},
        json={"from": "staging", "to": "prod", "confirm": True, "keys": ["token_hint"]},
    )
    await client.put(f"{API}/apps/{name}", headers=headers, json={"schema": {"type": "object"}})

    events = await audit_events(app, admin.tenant_id, action_prefix="config.")
    actions = sorted(event.action for event in events)
    assert actions == sorted(
        [
            "config.app.create",
            "config.env.create",
            "config.env.create",
            "config.env.write",
            "config.env.rollback",
            "config.app.update",
        ]
    ), actions  # the promotion of a key staging no longer holds changed nothing
    write_event = next(event for event in events if event.action == "config.env.write")
    assert write_event.data == {"revision": 2, "set": ["token_hint"], "unset": []}
    assert write_event.reason == "m1"
    assert write_event.actor_id == admin.user_id
    assert write_event.target_id == f"{name}/staging"
    assert all("distinctive-4711" not in json.dumps(event.document) for event in events)

    await write(client, headers, name, "staging", {"token_hint": "again"})
    promoted = await client.post(
        f"{API}/apps/{name}/promote",
        headers={**headers, "If-Match": '"1"'},
        json={"from": "staging", "to": "prod", "confirm": True},
    )
    assert promoted.status_code == 200
    events = await audit_events(app, admin.tenant_id, action_prefix="config.env.promote")
    assert [event.data for event in events] == [
        {"revision": 2, "set": ["token_hint"], "unset": [], "from": "staging", "from_revision": 4}
    ]


async def test_bad_input_gets_a_clear_problem(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    bad_name = await client.post(f"{API}/apps", headers=headers, json={"name": "Bad Name"})
    assert bad_name.status_code == 422
    app = await new_app(client, headers, "prod")
    duplicate = await client.post(f"{API}/apps", headers=headers, json={"name": app})
    assert duplicate.status_code == 409
    duplicate_env = await client.post(
        f"{API}/apps/{app}/envs", headers=headers, json={"name": "prod"}
    )
    assert duplicate_env.status_code == 409
    assert (await write(client, headers, app, "prod", {"bad key": 1})).status_code == 422
    assert (await write(client, headers, app, "prod", {"k" * 129: 1})).status_code == 422
    assert (await write(client, headers, app, "prod", {"a": 1}, ["a"])).status_code == 422
    assert (await write(client, headers, app, "prod")).status_code == 422
    malformed = await write(client, headers, app, "prod", {"db": {"$secret": "no-field"}})
    assert malformed.status_code == 422
    assert "secret reference" in malformed.json()["detail"]
    not_json = await client.patch(
        env_url(app, "prod"),
        headers={**headers, "Content-Type": "application/json"},
        content=b"{nope",
    )
    assert not_json.status_code == 400
    bad_diff = await client.get(f"{env_url(app, 'prod')}/diff?from=x", headers=headers)
    assert bad_diff.status_code == 422
    bad_cursor = await client.get(f"{env_url(app, 'prod')}/revisions?cursor=zz", headers=headers)
    assert bad_cursor.status_code == 422
    # Under the request body limit, over the snapshot cap: 413 without a new revision.
    half = "x" * (600 * 1024)
    assert (await write(client, headers, app, "prod", {"one": half})).status_code == 200
    too_big = await write(client, headers, app, "prod", {"two": half})
    assert too_big.status_code == 413
    assert too_big.json()["type"] == "urn:keel:problem:payload-too-large"
    unknown_env = await client.get(env_url(app, "nope"), headers=headers)
    assert unknown_env.status_code == 404


async def test_secret_references_resolve_only_for_callers_allowed_to_read_them(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = admin.headers
    password = f"pw-{uuid.uuid4().hex}"
    stored = await client.post(
        "/secrets/v1/secret/data/apps/billing/db",
        headers={"X-Vault-Token": admin.api_key},
        json={"data": {"password": password, "user": "billing"}},
    )
    assert stored.status_code == 200, stored.text
    policy = f"p-{uuid.uuid4().hex[:8]}"
    put = await client.put(
        f"/secrets/v1/sys/policies/acl/{policy}",
        headers={"X-Vault-Token": admin.api_key},
        json={"policy": 'path "secret/data/apps/billing/*" { capabilities = ["read"] }'},
    )
    assert put.status_code == 204, put.text

    name = await new_app(client, headers, "prod")
    reference = {"$secret": "apps/billing/db#password"}
    written = await write(
        client,
        headers,
        name,
        "prod",
        {"db": {"host": "db.internal", "password": reference}, "other": {"$secret": "x/y#z"}},
    )
    assert written.status_code == 200, written.text

    allowed = await member(app, admin, f"config:{name}:read", f"secrets:policy:{policy}")
    other = await member(app, admin, f"config:{name}:read")
    url = f"{env_url(name, 'prod')}?resolve_secrets=true"

    resolved = await client.get(url, headers=allowed)
    assert resolved.status_code == 200
    assert resolved.json()["values"]["db"] == {"host": "db.internal", "password": password}
    assert resolved.headers["Cache-Control"] == "no-store"
    assert "ETag" not in resolved.headers
    assert resolved.json()["secrets"] == [
        {
            "path": "$.db.password",
            "reference": "secret/apps/billing/db#password",
            "resolved": True,
            "reason": None,
        },
        {
            "path": "$.other",
            "reference": "secret/x/y#z",
            "resolved": False,
            "reason": "denied",
        },
    ]
    key = await client.get(f"{env_url(name, 'prod')}/keys/db?resolve_secrets=true", headers=allowed)
    assert key.json()["value"]["password"] == password

    left = await client.get(url, headers=other)
    assert left.status_code == 200
    assert left.json()["values"]["db"]["password"] == reference
    assert password not in left.text
    assert {entry["reason"] for entry in left.json()["secrets"]} == {"denied"}
    plain = await client.get(env_url(name, "prod"), headers=allowed)
    assert plain.json()["values"]["db"]["password"] == reference
    assert password not in plain.text

    reads = await audit_events(app, admin.tenant_id, action_prefix="secrets.kv.read")
    via_config = [event for event in reads if (event.data or {}).get("via") == "config"]
    assert {(event.outcome, event.target_id) for event in via_config} == {
        ("success", "secret/data/apps/billing/db"),
        ("denied", "secret/data/apps/billing/db"),
        ("denied", "secret/data/x/y"),
    }
    assert all(password not in json.dumps(event.document) for event in reads)


async def test_an_invalid_application_is_refused_with_each_error_told_once(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """The permission check reads the body as the route does: FastAPI validates it twice."""
    refused = await client.post(f"{API}/apps", headers=headers, json={"name": 5})
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["errors"] == [
        {
            "location": ["body", "name"],
            "message": "Input should be a valid string",
            "code": "string_type",
        }
    ]
