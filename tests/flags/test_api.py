"""The flags API on SQLite and PostgreSQL: environments, flag definitions, per-environment
states, segments, the kill switch, snapshots with ETag and 304, server-side evaluation,
validation refusals, If-Match, audit events with diffs, permissions and tenants apart."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from tests.support.audit import audit_events
from tests.support.flags_api import API, new_environment, new_flag, put_state
from tests.support.tenants import TenantAdmin, make_tenant_admin, member

CHECKOUT_STATE = {
    "on": True,
    "off_variation": "off",
    "targets": [{"variation": "on", "values": ["user-1"]}],
    "rules": [
        {
            "id": "corp",
            "clauses": [{"attribute": "email", "op": "ends_with", "values": ["@corp.com"]}],
            "serve": {"variation": "on"},
        }
    ],
    "fallthrough": {"variation": "off"},
}


async def test_environments_and_flags_are_created_read_and_listed(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await new_environment(client, headers)
    flag = await new_flag(client, headers, "checkout-v2", description="new checkout", tags=["web"])
    assert flag["type"] == "boolean"
    assert flag["variations"] == [{"id": "on", "value": True}, {"id": "off", "value": False}]
    assert flag["salt"] == "checkout-v2"
    assert flag["version"] == 1
    assert flag["archived"] is False

    # An environment made after the flag holds it too, in the default state.
    later = await new_environment(client, headers)
    for environment in (env, later):
        state = await client.get(f"{API}/envs/{environment}/flags/checkout-v2", headers=headers)
        assert state.status_code == 200, state.text
        assert state.headers["ETag"] == '"1"'
        body = state.json()
        assert body["on"] is False
        assert body["off_variation"] == "off"
        assert body["fallthrough"] == {"variation": "on"}

    listed = await client.get(f"{API}/flags", headers=headers)
    assert [entry["key"] for entry in listed.json()] == ["checkout-v2"]
    assert (await client.get(f"{API}/flags?tag=web", headers=headers)).json()[0]["tags"] == ["web"]
    assert (await client.get(f"{API}/flags?tag=api", headers=headers)).json() == []
    envs = await client.get(f"{API}/envs", headers=headers)
    assert sorted(entry["key"] for entry in envs.json()) == sorted([env, later])
    one = await client.get(f"{API}/flags/checkout-v2", headers=headers)
    assert one.headers["ETag"] == '"1"'
    assert (await client.get(f"{API}/flags/nope", headers=headers)).status_code == 404

    duplicate = await client.post(f"{API}/flags", headers=headers, json={"key": "checkout-v2"})
    assert duplicate.status_code == 409
    assert duplicate.headers["content-type"] == "application/problem+json"
    again = await client.post(f"{API}/envs", headers=headers, json={"key": env})
    assert again.status_code == 409
    reserved = await client.post(f"{API}/envs", headers=headers, json={"key": "flags"})
    assert reserved.status_code == 422


async def test_the_state_is_replaced_patched_and_served_in_the_snapshot_with_304(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await new_environment(client, headers)
    await new_flag(client, headers, "checkout-v2")
    first = await client.get(f"{API}/envs/{env}/snapshot", headers=headers)
    assert first.status_code == 200
    version = first.json()["version"]
    assert first.headers["ETag"] == f'"{version}"'
    assert (
        await client.get(
            f"{API}/envs/{env}/snapshot", headers={**headers, "If-None-Match": f'"{version}"'}
        )
    ).status_code == 304

    written = await put_state(client, headers, env, "checkout-v2", CHECKOUT_STATE)
    assert written.status_code == 200, written.text
    assert written.headers["ETag"] == '"2"'
    assert written.json()["rules"][0]["id"] == "corp"

    snapshot = await client.get(
        f"{API}/envs/{env}/snapshot", headers={**headers, "If-None-Match": f'"{version}"'}
    )
    assert snapshot.status_code == 200
    document = snapshot.json()
    assert document["version"] == version + 1
    assert document["environment"] == env
    assert document["segments"] == {}
    assert document["flags"]["checkout-v2"] == {
        "key": "checkout-v2",
        "version": 3,  # definition 1 + state 2
        "type": "boolean",
        "variations": [{"id": "on", "value": True}, {"id": "off", "value": False}],
        "salt": "checkout-v2",
        "experiment": False,
        "on": True,
        "off_variation": "off",
        "prerequisites": [],
        "targets": [{"variation": "on", "values": ["user-1"]}],
        "rules": CHECKOUT_STATE["rules"],
        "fallthrough": {"variation": "off"},
        "schedule": [],
    }

    patched = await client.patch(
        f"{API}/envs/{env}/flags/checkout-v2",
        headers=headers,
        json={"targets": [], "fallthrough": {"variation": "on"}},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["targets"] == []
    assert patched.json()["rules"] == CHECKOUT_STATE["rules"]  # untouched by the patch
    assert patched.json()["version"] == 3
    # A write that changes nothing makes no version.
    same = await client.patch(f"{API}/envs/{env}/flags/checkout-v2", headers=headers, json={})
    assert same.json()["version"] == 3


async def test_writes_based_on_an_old_version_get_412(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await new_environment(client, headers)
    await new_flag(client, headers, "beta")
    ok = await put_state(client, headers, env, "beta", CHECKOUT_STATE, if_match='"1"')
    assert ok.status_code == 200, ok.text
    stale = await put_state(
        client, headers, env, "beta", {**CHECKOUT_STATE, "on": False}, if_match='"1"'
    )
    assert stale.status_code == 412
    assert stale.json()["current_etag"] == '"2"'
    stale_patch = await client.patch(
        f"{API}/envs/{env}/flags/beta", headers={**headers, "If-Match": '"1"'}, json={"on": False}
    )
    assert stale_patch.status_code == 412
    definition = await client.patch(
        f"{API}/flags/beta", headers={**headers, "If-Match": '"7"'}, json={"owner": "team-a"}
    )
    assert definition.status_code == 412
    current = await client.patch(
        f"{API}/flags/beta", headers={**headers, "If-Match": '"1"'}, json={"owner": "team-a"}
    )
    assert current.status_code == 200
    assert current.headers["ETag"] == '"2"'
    state = await client.get(f"{API}/envs/{env}/flags/beta", headers=headers)
    assert state.json()["on"] is True


async def test_the_engine_refuses_malformed_flags_and_states_with_every_problem(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await new_environment(client, headers)
    await new_flag(
        client,
        headers,
        "price",
        type="number",
        variations=[{"id": "low", "value": 1}, {"id": "high", "value": 2}],
    )
    bad_type = await client.post(
        f"{API}/flags",
        headers=headers,
        json={"key": "bad", "type": "number", "variations": [{"id": "a", "value": "x"}]},
    )
    assert bad_type.status_code == 422
    assert any("variations[0].value" in problem for problem in bad_type.json()["problems"])
    no_variations = await client.post(
        f"{API}/flags", headers=headers, json={"key": "text", "type": "string"}
    )
    assert no_variations.status_code == 422
    bad_key = await client.post(f"{API}/flags", headers=headers, json={"key": "no spaces"})
    assert bad_key.status_code == 422

    refused = await put_state(
        client,
        headers,
        env,
        "price",
        {
            "on": True,
            "off_variation": "medium",
            "rules": [
                {
                    "id": "r1",
                    "clauses": [{"attribute": "email", "op": "matches", "values": ["(a"]}],
                    "serve": {"rollout": {"variations": [{"variation": "low", "weight": 10}]}},
                }
            ],
            "fallthrough": {"variation": "low"},
        },
    )
    assert refused.status_code == 422
    problems = refused.json()["problems"]
    assert any(problem.startswith("off_variation") for problem in problems)
    assert any(problem.startswith("rules[0].clauses[0].values[0]") for problem in problems)
    assert any("weights sum to 10" in problem for problem in problems)
    assert refused.json()["environment"] == env

    missing_prerequisite = await put_state(
        client,
        headers,
        env,
        "price",
        {
            "prerequisites": [{"key": "ghost", "variation": "on"}],
            "fallthrough": {"variation": "low"},
        },
    )
    assert missing_prerequisite.status_code == 422
    assert "ghost" in missing_prerequisite.json()["detail"]
    missing_segment = await put_state(
        client,
        headers,
        env,
        "price",
        {
            "rules": [
                {
                    "id": "seg",
                    "clauses": [{"attribute": "key", "op": "in_segment", "values": ["vips"]}],
                    "serve": {"variation": "high"},
                }
            ],
            "fallthrough": {"variation": "low"},
        },
    )
    assert missing_segment.status_code == 422
    assert "vips" in missing_segment.json()["detail"]

    # A definition change that would break a state is refused, naming the environment.
    await put_state(client, headers, env, "price", {"fallthrough": {"variation": "high"}})
    shrink = await client.patch(
        f"{API}/flags/price", headers=headers, json={"variations": [{"id": "low", "value": 1}]}
    )
    assert shrink.status_code == 422
    assert shrink.json()["environment"] == env
    retype = await client.patch(f"{API}/flags/price", headers=headers, json={"type": "string"})
    assert retype.status_code == 422


async def test_prerequisite_cycles_are_refused_and_prerequisites_cannot_be_archived(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await new_environment(client, headers)
    await new_flag(client, headers, "a")
    await new_flag(client, headers, "b")
    first = await put_state(
        client,
        headers,
        env,
        "a",
        {
            "on": True,
            "prerequisites": [{"key": "b", "variation": "on"}],
            "fallthrough": {"variation": "on"},
        },
    )
    assert first.status_code == 200, first.text
    cycle = await put_state(
        client,
        headers,
        env,
        "b",
        {"prerequisites": [{"key": "a", "variation": "on"}], "fallthrough": {"variation": "on"}},
    )
    assert cycle.status_code == 422
    assert "cycle" in cycle.json()["detail"]
    archive = await client.delete(f"{API}/flags/b", headers=headers)
    assert archive.status_code == 409
    assert (await client.delete(f"{API}/flags/a", headers=headers)).status_code == 200
    archived = await client.delete(f"{API}/flags/b", headers=headers)
    assert archived.status_code == 200
    assert archived.json()["archived"] is True
    snapshot = (await client.get(f"{API}/envs/{env}/snapshot", headers=headers)).json()
    assert snapshot["flags"] == {}
    assert (await client.get(f"{API}/flags", headers=headers)).json() == []
    assert len((await client.get(f"{API}/flags?archived=true", headers=headers)).json()) == 2
    restored = await client.patch(f"{API}/flags/b", headers=headers, json={"archived": False})
    assert restored.json()["archived"] is False
    assert "b" in (await client.get(f"{API}/envs/{env}/snapshot", headers=headers)).json()["flags"]


async def test_segments_are_managed_and_evaluated_and_cannot_go_while_used(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await new_environment(client, headers)
    await new_flag(client, headers, "beta")
    made = await client.post(
        f"{API}/envs/{env}/segments",
        headers=headers,
        json={
            "key": "testers",
            "included": ["user-9"],
            "excluded": ["user-3"],
            "rules": [
                {"id": "staff", "clauses": [{"attribute": "staff", "op": "in", "values": [True]}]}
            ],
        },
    )
    assert made.status_code == 201, made.text
    assert made.headers["ETag"] == '"1"'
    bad = await client.post(
        f"{API}/envs/{env}/segments",
        headers=headers,
        json={
            "key": "nested",
            "rules": [{"id": "x", "clauses": [{"op": "in_segment", "values": ["testers"]}]}],
        },
    )
    assert bad.status_code == 422
    assert any("in_segment" in problem for problem in bad.json()["problems"])
    state = await put_state(
        client,
        headers,
        env,
        "beta",
        {
            "on": True,
            "off_variation": "off",
            "rules": [
                {
                    "id": "in-testers",
                    "clauses": [{"attribute": "key", "op": "in_segment", "values": ["testers"]}],
                    "serve": {"variation": "on"},
                }
            ],
            "fallthrough": {"variation": "off"},
        },
    )
    assert state.status_code == 200, state.text

    async def served(context: dict[str, object]) -> dict[str, object]:
        answer = await client.post(
            f"{API}/evaluate",
            headers=headers,
            json={"environment": env, "context": context, "flags": ["beta"]},
        )
        assert answer.status_code == 200, answer.text
        detail: dict[str, object] = answer.json()["flags"]["beta"]
        return detail

    assert (await served({"key": "user-9"}))["variation"] == "on"
    assert (await served({"key": "user-3", "staff": True}))["variation"] == "off"
    assert (await served({"key": "user-5", "staff": True}))["reason"] == {
        "kind": "RULE_MATCH",
        "rule_id": "in-testers",
        "rule_index": 0,
    }

    replaced = await client.put(
        f"{API}/envs/{env}/segments/testers",
        headers={**headers, "If-Match": '"1"'},
        json={"included": ["user-3"]},
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["version"] == 2
    assert (await served({"key": "user-3"}))["variation"] == "on"
    stale = await client.put(
        f"{API}/envs/{env}/segments/testers", headers={**headers, "If-Match": '"1"'}, json={}
    )
    assert stale.status_code == 412
    listed = await client.get(f"{API}/envs/{env}/segments", headers=headers)
    assert [segment["key"] for segment in listed.json()] == ["testers"]
    in_use = await client.delete(f"{API}/envs/{env}/segments/testers", headers=headers)
    assert in_use.status_code == 409
    await client.patch(f"{API}/envs/{env}/flags/beta", headers=headers, json={"rules": []})
    gone = await client.delete(f"{API}/envs/{env}/segments/testers", headers=headers)
    assert gone.status_code == 204
    assert (
        await client.get(f"{API}/envs/{env}/segments/testers", headers=headers)
    ).status_code == 404


async def test_the_kill_switch_turns_a_flag_off_and_every_change_is_audited_with_a_diff(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = admin.headers
    env = await new_environment(client, headers)
    await new_flag(client, headers, "checkout-v2")
    await put_state(client, headers, env, "checkout-v2", CHECKOUT_STATE)

    async def evaluation() -> dict[str, object]:
        answer = await client.post(
            f"{API}/evaluate",
            headers=headers,
            json={"environment": env, "context": {"key": "user-1"}},
        )
        detail: dict[str, object] = answer.json()["flags"]["checkout-v2"]
        return detail

    assert (await evaluation())["reason"] == {"kind": "TARGET_MATCH"}
    killed = await client.post(
        f"{API}/envs/{env}/flags/checkout-v2/toggle",
        headers=headers,
        json={"on": False, "comment": "incident 42"},
    )
    assert killed.status_code == 200, killed.text
    assert killed.json()["on"] is False
    assert await evaluation() == {"value": False, "variation": "off", "reason": {"kind": "OFF"}}

    toggles = await audit_events(app, admin.tenant_id, action_prefix="flags.state.toggle")
    assert len(toggles) == 1
    assert toggles[0].target_id == f"{env}/checkout-v2"
    assert toggles[0].data["diff"] == {"on": {"before": True, "after": False}}
    assert toggles[0].reason == "incident 42"
    updates = await audit_events(app, admin.tenant_id, action_prefix="flags.state.update")
    assert updates[0].data["diff"]["fallthrough"] == {
        "before": {"variation": "on"},
        "after": {"variation": "off"},
    }
    assert "on" in updates[0].data["diff"]
    created = await audit_events(app, admin.tenant_id, action_prefix="flags.flag.create")
    assert created[0].data["diff"]["type"] == {"before": None, "after": "boolean"}
    await client.patch(f"{API}/flags/checkout-v2", headers=headers, json={"owner": "payments"})
    changed = await audit_events(app, admin.tenant_id, action_prefix="flags.flag.update")
    assert changed[0].data["diff"] == {"owner": {"before": "", "after": "payments"}}
    assert changed[0].actor_id == admin.user_id
    assert len(await audit_events(app, admin.tenant_id, action_prefix="flags.env.create")) == 1


async def test_evaluate_answers_value_variation_and_reason_for_each_flag(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await new_environment(client, headers)
    await new_flag(client, headers, "checkout-v2")
    await new_flag(client, headers, "dormant")
    await put_state(client, headers, env, "checkout-v2", CHECKOUT_STATE)
    answer = await client.post(
        f"{API}/evaluate",
        headers=headers,
        json={
            "environment": env,
            "context": {"key": "user-7", "email": "ann@corp.com"},
            "flags": ["checkout-v2", "dormant", "ghost"],
        },
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["environment"] == env
    assert body["flags"] == {
        "checkout-v2": {
            "value": True,
            "variation": "on",
            "reason": {"kind": "RULE_MATCH", "rule_id": "corp", "rule_index": 0},
        },
        "dormant": {"value": False, "variation": "off", "reason": {"kind": "OFF"}},
        "ghost": {
            "value": None,
            "variation": None,
            "reason": {"kind": "ERROR", "error_kind": "FLAG_NOT_FOUND"},
        },
    }
    fallthrough = await client.post(
        f"{API}/evaluate",
        headers=headers,
        json={"environment": env, "context": {"key": "user-8"}},
    )
    assert set(fallthrough.json()["flags"]) == {"checkout-v2", "dormant"}
    assert fallthrough.json()["flags"]["checkout-v2"]["reason"] == {"kind": "FALLTHROUGH"}
    no_key = await client.post(
        f"{API}/evaluate", headers=headers, json={"environment": env, "context": {"name": "x"}}
    )
    assert no_key.json()["flags"]["checkout-v2"]["reason"]["kind"] == "ERROR"
    batch = await client.post(
        f"{API}/evaluate",
        headers=headers,
        json={
            "environment": env,
            "contexts": [{"key": "user-8"}, {"key": "u", "email": "a@corp.com"}],
        },
    )
    assert batch.status_code == 200, batch.text
    assert "flags" not in batch.json()
    assert [result["checkout-v2"]["reason"]["kind"] for result in batch.json()["results"]] == [
        "FALLTHROUGH",
        "RULE_MATCH",
    ]
    assert batch.json()["results"][0]["dormant"] == {
        "value": False, "variation": "off", "reason": {"kind": "OFF"}
    }  # fmt: skip
    for wrong in (
        {"environment": env},  # neither
        {"environment": env, "context": {"key": "a"}, "contexts": [{"key": "a"}]},  # both
        {"environment": env, "contexts": []},
        {"environment": env, "contexts": [{"key": str(n)} for n in range(1001)]},
    ):
        refused = await client.post(f"{API}/evaluate", headers=headers, json=wrong)
        assert refused.status_code == 422, refused.text
    missing_env = await client.post(
        f"{API}/evaluate", headers=headers, json={"environment": "nope", "context": {"key": "u"}}
    )
    assert missing_env.status_code == 404


async def test_permissions_are_per_environment_and_definitions_need_admin(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = admin.headers
    await new_environment(client, headers, "staging")
    await new_environment(client, headers, "production")
    await new_flag(client, headers, "checkout-v2")
    staging_writer = await member(app, admin, "flags:staging:write", "flags:flags:read")
    production_reader = await member(app, admin, "flags:production:read")

    state_url = f"{API}/envs/%s/flags/checkout-v2"
    assert (
        await client.post(
            f"{state_url % 'staging'}/toggle", headers=staging_writer, json={"on": True}
        )
    ).status_code == 200
    assert (
        await client.post(
            f"{state_url % 'production'}/toggle", headers=staging_writer, json={"on": True}
        )
    ).status_code == 403
    assert (
        await client.get(state_url % "production", headers=production_reader)
    ).status_code == 200
    assert (
        await client.post(
            f"{state_url % 'production'}/toggle", headers=production_reader, json={"on": True}
        )
    ).status_code == 403
    assert (
        await client.get(f"{API}/envs/staging/snapshot", headers=production_reader)
    ).status_code == 403
    evaluate = {"environment": "staging", "context": {"key": "u"}}
    assert (
        await client.post(f"{API}/evaluate", headers=production_reader, json=evaluate)
    ).status_code == 403
    assert (
        await client.post(f"{API}/evaluate", headers=staging_writer, json=evaluate)
    ).status_code == 200
    # Definitions: reading needs flags:flags:read, changing needs flags:flags:admin.
    assert (await client.get(f"{API}/flags", headers=staging_writer)).status_code == 200
    assert (await client.get(f"{API}/flags", headers=production_reader)).status_code == 403
    assert (
        await client.post(f"{API}/flags", headers=staging_writer, json={"key": "x"})
    ).status_code == 403
    assert (
        await client.post(f"{API}/envs", headers=staging_writer, json={"key": "qa"})
    ).status_code == 403
    assert (await client.get(f"{API}/flags")).status_code == 401


async def test_tenants_never_see_each_others_flags(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    other = await make_tenant_admin(app)
    await new_environment(client, admin.headers, "production")
    await new_flag(client, admin.headers, "secret-feature")
    # The same names in another tenant are another environment and another flag.
    await new_environment(client, other.headers, "production")
    assert (await client.get(f"{API}/flags", headers=other.headers)).json() == []
    assert (
        await client.get(f"{API}/envs/production/flags/secret-feature", headers=other.headers)
    ).status_code == 404
    snapshot = await client.get(f"{API}/envs/production/snapshot", headers=other.headers)
    assert snapshot.json()["flags"] == {}
    await new_flag(client, other.headers, "secret-feature")
    toggled = await client.post(
        f"{API}/envs/production/flags/secret-feature/toggle",
        headers=other.headers,
        json={"on": True},
    )
    assert toggled.status_code == 200
    mine = await client.get(f"{API}/envs/production/flags/secret-feature", headers=admin.headers)
    assert mine.json()["on"] is False


async def test_an_environment_is_deleted_with_its_states(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    env = await new_environment(client, headers)
    await new_flag(client, headers, "beta")
    described = await client.patch(f"{API}/envs/{env}", headers=headers, json={"description": "qa"})
    assert described.json()["description"] == "qa"
    assert (await client.delete(f"{API}/envs/{env}", headers=headers)).status_code == 204
    assert (await client.get(f"{API}/envs/{env}/flags/beta", headers=headers)).status_code == 404
    assert (await client.get(f"{API}/envs/{env}", headers=headers)).status_code == 404
    await new_environment(client, headers, env)
    fresh = await client.get(f"{API}/envs/{env}/flags/beta", headers=headers)
    assert fresh.json()["version"] == 1


async def test_kill_switches_thrown_at_once_all_land_and_a_stale_if_match_is_still_412(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    """A toggle takes no If-Match (an emergency does not wait for a fresh read), so one that
    loses the state's version to another toggle reads it again rather than answer 412.
    Writers of their own: requests of one API key wait for each other's commit."""
    env = await new_environment(client, admin.headers)
    await new_flag(client, admin.headers, "checkout-v2")
    writers = [await member(app, admin, "flags:*:write") for _ in range(10)]
    answers = await asyncio.gather(
        *(
            client.post(
                f"{API}/envs/{env}/flags/checkout-v2/toggle",
                headers=writer,
                json={"on": n % 2 == 0},
            )
            for n, writer in enumerate(writers)
        )
    )
    assert [answer.status_code for answer in answers] == [200] * 10, [a.text for a in answers]
    state = await client.get(f"{API}/envs/{env}/flags/checkout-v2", headers=admin.headers)
    toggles = await audit_events(app, admin.tenant_id, action_prefix="flags.state.toggle")
    assert toggles  # each one that changed the state, audited
    assert state.json()["on"] is toggles[0].data["diff"]["on"]["after"]  # newest first

    stale = await put_state(
        client, admin.headers, env, "checkout-v2", CHECKOUT_STATE, if_match='"1"'
    )
    assert stale.status_code == 412, stale.text
    patched = await client.patch(
        f"{API}/envs/{env}/flags/checkout-v2",
        headers={**admin.headers, "If-Match": '"1"'},
        json={"on": True},
    )
    assert patched.status_code == 412, patched.text
