"""The audit log over its API, on SQLite and PostgreSQL: appends with receipts, idempotency,
the catalogue, queries, tenant isolation, and proofs that the SDK's offline verifier accepts."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event as sqlalchemy_event

from keel.app import create_app
from keel.audit.service import AUDIT_RESOURCE
from keel.settings import DatabasePoolSettings, Settings
from keel_client.audit import (
    ProofError,
    TreeHead,
    event_leaf_hash,
    public_keys_from_jwks,
    verify_consistency,
    verify_event_receipt,
    verify_inclusion,
    verify_tree_head,
)
from tests.support.apps import lifespan_of
from tests.support.audit import audit_events
from tests.support.tenants import TenantAdmin, create_user, make_tenant_admin

ACTION = "billing.invoice.pay"


async def register(client: httpx.AsyncClient, admin: TenantAdmin, action: str = ACTION) -> None:
    response = await client.put(
        f"/audit/v1/actions/{action}",
        headers=admin.headers,
        json={
            "description": "An invoice paid.",
            "category": "finance",
            "sensitive_fields": ["card_number"],
        },
    )
    assert response.status_code in (200, 201), response.text
    # The registration is itself an event, sequenced from the outbox within milliseconds: a
    # test that counts the log's leaves starts once it is in.
    deadline = time.monotonic() + 30
    while not any(
        item["action"] == "audit.action.register" and item["target"]["id"] == action
        for item in (await client.get("/audit/v1/events", headers=admin.headers)).json()["items"]
    ):
        assert time.monotonic() < deadline, "the registration never reached the log"
        await asyncio.sleep(0.02)


def event(number: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"evt-{number}-{uuid.uuid4().hex[:8]}",
        "action": ACTION,
        "actor": {"type": "user", "id": "u-1", "display": "Alice", "ip": "10.0.0.1"},
        "target": {"type": "invoice", "id": f"inv-{number}"},
        "data": {"amount": "12.30", "number": number},
        **fields,
    }


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


async def keys(client: httpx.AsyncClient) -> Any:
    response = await client.get("/audit/v1/keys")
    assert response.status_code == 200
    return public_keys_from_jwks(response.json())


async def test_batch_append_answers_receipts_that_verify_offline(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await register(client, admin)
    events = [event(n) for n in range(25)]
    response = await client.post(
        "/audit/v1/events/batch", headers=admin.headers, json={"events": events}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    receipts = body["receipts"]
    assert [r["id"] for r in receipts] == [e["id"] for e in events]
    indexes = [r["leaf_index"] for r in receipts]
    assert indexes == list(range(indexes[0], indexes[0] + 25))
    head = TreeHead.from_json(body["tree_head"])
    trusted = await keys(client)
    verify_tree_head(head, trusted)

    for receipt, sent in zip(receipts[::6], events[::6], strict=True):
        stored = (await client.get(f"/audit/v1/events/{sent['id']}", headers=admin.headers)).json()
        document = {k: v for k, v in stored.items() if k not in ("leaf_index", "leaf_hash")}
        assert base64.b64decode(receipt["leaf_hash"]) == event_leaf_hash(document)
        proof = (
            await client.get(
                "/audit/v1/proofs/inclusion",
                params={"event_id": sent["id"]},
                headers=admin.headers,
            )
        ).json()
        assert proof["tree_size"] == head.tree_size
        verify_event_receipt(
            document, receipt["leaf_index"], [unb64(p) for p in proof["proof"]], head, trusted
        )
        # A changed document no longer verifies against the signed head.
        forged = {**document, "data": {**document["data"], "amount": "99.99"}}
        with pytest.raises(ProofError):
            verify_event_receipt(
                forged, receipt["leaf_index"], [unb64(p) for p in proof["proof"]], head, trusted
            )


async def test_heads_grow_consistently_and_the_sdk_checks_the_proof(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await register(client, admin)
    heads = []
    for size in (1, 3, 4, 9):
        batch = {"events": [event(n) for n in range(size)]}
        response = await client.post("/audit/v1/events/batch", headers=admin.headers, json=batch)
        heads.append(TreeHead.from_json(response.json()["tree_head"]))
    for old, new in itertools.pairwise(heads):
        proof = (
            await client.get(
                "/audit/v1/proofs/consistency",
                params={"first": old.tree_size, "second": new.tree_size},
                headers=admin.headers,
            )
        ).json()["proof"]
        verify_consistency(
            old.tree_size, new.tree_size, old.root_hash, new.root_hash, [unb64(p) for p in proof]
        )
        with pytest.raises(ProofError):
            verify_consistency(
                old.tree_size,
                new.tree_size,
                new.root_hash,
                old.root_hash,
                [unb64(p) for p in proof],
            )
    latest = (await client.get("/audit/v1/tree/head", headers=admin.headers)).json()
    assert TreeHead.from_json(latest).tree_size >= heads[-1].tree_size


async def test_appends_are_idempotent_on_the_event_id(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await register(client, admin)
    sent = event(1, time="2026-11-22T10:00:00.000001Z")
    first = await client.post("/audit/v1/events", headers=admin.headers, json=sent)
    again = await client.post("/audit/v1/events", headers=admin.headers, json=sent)
    assert first.status_code == again.status_code == 201
    assert first.json()["leaf_index"] == again.json()["leaf_index"]
    assert first.json()["leaf_hash"] == again.json()["leaf_hash"]

    changed = await client.post(
        "/audit/v1/events", headers=admin.headers, json={**sent, "reason": "other"}
    )
    assert changed.status_code == 409
    assert changed.json()["type"] == "urn:keel:problem:conflict"
    listed = await client.get(
        "/audit/v1/events", params={"target_id": "inv-1"}, headers=admin.headers
    )
    assert [item["id"] for item in listed.json()["items"]] == [sent["id"]]


async def test_a_large_batch_repeating_stored_events_answers_their_first_receipts(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    """Large batches are written optimistically (by COPY on PostgreSQL); a repeated id is
    caught by the unique key and the batch appended again with the repeats looked up."""
    await register(client, admin)
    stored = [event(n) for n in range(100)]
    first = await client.post(
        "/audit/v1/events/batch", headers=admin.headers, json={"events": stored}
    )
    assert first.status_code == 200, first.text
    fresh = [event(n) for n in range(100, 110)]
    again = await client.post(
        "/audit/v1/events/batch", headers=admin.headers, json={"events": stored + fresh}
    )
    assert again.status_code == 200, again.text
    receipts = again.json()["receipts"]
    assert receipts[:100] == first.json()["receipts"]
    last = first.json()["receipts"][-1]["leaf_index"]
    assert [r["leaf_index"] for r in receipts[100:]] == list(range(last + 1, last + 11))
    assert again.json()["tree_head"]["tree_size"] == last + 11


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"action": "billing.invoice.unknown"}, "Unknown action"),
        ({"action": "NotAnAction"}, "service.resource.verb"),
        ({"outcome": "maybe"}, "outcome"),
        ({"sensitivity": "secret"}, "sensitivity"),
        ({"time": "2026-11-22T10:00:00"}, "offset"),
        # Found by tests/test_fuzz.py: no UTC time for these, once a 500 (OverflowError).
        ({"time": "0001-01-01T00:00:00+01:00"}, "out of range"),
        ({"time": "9999-12-31T23:59:59-01:00"}, "out of range"),
        ({"surprise": 1}, "surprise"),
        ({"data": {"big": 2**60}}, "2**53"),
    ],
)
async def test_malformed_or_unknown_events_are_refused_and_nothing_is_stored(
    client: httpx.AsyncClient, admin: TenantAdmin, change: dict[str, Any], fragment: str
) -> None:
    await register(client, admin)
    good, bad = event(1), {**event(2), **change}
    response = await client.post(
        "/audit/v1/events/batch", headers=admin.headers, json={"events": [good, bad]}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert fragment in response.text
    listed = await client.get("/audit/v1/events", params={"action": ACTION}, headers=admin.headers)
    assert listed.json()["items"] == []


@pytest.mark.parametrize("time", ["0001-01-01T00:00:00Z", "0999-12-31T23:00:00-00:30"])
async def test_an_event_before_year_1000_keeps_a_four_digit_year(
    client: httpx.AsyncClient, admin: TenantAdmin, time: str
) -> None:
    # Found by tests/test_fuzz.py: the document said "1-01-01T...", which could not be read
    # back (a 500 after the event was sequenced).
    await register(client, admin)
    sent = event(1, time=time)
    response = await client.post("/audit/v1/events", headers=admin.headers, json=sent)
    assert response.status_code == 201, response.text
    stored = (await client.get(f"/audit/v1/events/{sent['id']}", headers=admin.headers)).json()
    assert stored["time"][:5] in ("0001-", "0999-")
    document = {k: v for k, v in stored.items() if k not in ("leaf_index", "leaf_hash")}
    assert base64.b64decode(response.json()["leaf_hash"]) == event_leaf_hash(document)


@pytest.mark.parametrize("bound", ["since", "until"])
@pytest.mark.parametrize("path", ["/audit/v1/events", "/audit/v1/export"])
async def test_a_filter_time_with_no_utc_equivalent_is_refused(
    client: httpx.AsyncClient, admin: TenantAdmin, bound: str, path: str
) -> None:
    # Found by tests/test_fuzz.py: a 500, or for the export a stream broken after its 200.
    for moment in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        response = await client.get(path, params={bound: moment}, headers=admin.headers)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert f"{bound}: the time is out of range" in response.json()["detail"]


async def test_sensitive_fields_of_the_catalogue_are_redacted_before_storage(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await register(client, admin)
    sent = event(1, data={"card_number": "4111111111111111", "password": "hunter22", "n": 1})
    await client.post("/audit/v1/events", headers=admin.headers, json=sent)
    stored = (await client.get(f"/audit/v1/events/{sent['id']}", headers=admin.headers)).json()
    assert stored["data"] == {"card_number": "[REDACTED]", "password": "[REDACTED]", "n": 1}
    assert "4111111111111111" not in str(stored)


async def test_query_filters_and_cursor_pagination(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await register(client, admin)
    events = [
        event(n, outcome="failure" if n % 3 == 0 else "success", sensitivity="confidential")
        for n in range(12)
    ]
    await client.post("/audit/v1/events/batch", headers=admin.headers, json={"events": events})
    failures = (
        await client.get(
            "/audit/v1/events",
            params={"outcome": "failure", "action": "billing."},
            headers=admin.headers,
        )
    ).json()["items"]
    assert [item["target"]["id"] for item in failures] == ["inv-0", "inv-3", "inv-6", "inv-9"]

    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"action": ACTION, "limit": 5}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/audit/v1/events", params=params, headers=admin.headers)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [e["id"] for e in events]
    bad_cursor = await client.get(
        "/audit/v1/events", params={"cursor": "nonsense"}, headers=admin.headers
    )
    assert bad_cursor.status_code == 422


async def test_a_tenant_never_sees_another_tenants_log(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    other = await make_tenant_admin(app)
    await register(client, admin)
    sent = event(1)
    await client.post("/audit/v1/events", headers=admin.headers, json=sent)

    assert (
        await client.get(f"/audit/v1/events/{sent['id']}", headers=other.headers)
    ).status_code == 404
    listed = await client.get("/audit/v1/events", headers=other.headers)
    assert sent["id"] not in listed.text
    # The action is the first tenant's: the second cannot record it.
    refused = await client.post("/audit/v1/events", headers=other.headers, json=event(2))
    assert refused.status_code == 422


async def test_reading_and_writing_need_their_permissions(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    response = await client.get("/audit/v1/events")
    assert response.status_code == 401
    user = await create_user(app, admin.tenant_id, "reader")
    from tests.support.tenants import create_api_key

    _, key = await create_api_key(app, admin.tenant_id, user.id)
    forbidden = await client.get("/audit/v1/events", headers={"Authorization": f"Bearer {key}"})
    assert forbidden.status_code == 403


async def test_keel_records_its_own_changes_in_the_log_with_the_change(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    created = await client.post(
        "/auth/v1/roles",
        headers=admin.headers,
        json={"name": "auditor", "permissions": ["audit:event:read"]},
    )
    assert created.status_code == 201
    refused = await client.post(
        "/auth/v1/roles", headers=admin.headers, json={"name": "auditor", "permissions": []}
    )
    assert refused.status_code == 409  # the failed change records nothing

    events = await audit_events(app, admin.tenant_id, action_prefix="auth.role.create")
    assert [e.data["name"] for e in events] == ["auditor", "admin"]  # newest first
    stored = events[0]
    assert stored.target_id == created.json()["id"]
    assert stored.actor_id == admin.user_id
    head = (await client.get("/audit/v1/tree/head", headers=admin.headers)).json()
    proof = (
        await client.get(
            "/audit/v1/proofs/inclusion",
            params={"leaf_index": stored.leaf_index},
            headers=admin.headers,
        )
    ).json()
    verify_inclusion(
        event_leaf_hash(stored.document or {}),
        stored.leaf_index,
        head["tree_size"],
        [unb64(p) for p in proof["proof"]],
        unb64(head["root_hash"]),
    )


async def test_keel_actions_cannot_be_registered_or_forged_by_tenants(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    taken = await client.put(
        "/audit/v1/actions/auth.session.login",
        headers=admin.headers,
        json={"description": "mine now"},
    )
    assert taken.status_code == 409
    catalogue = (await client.get("/audit/v1/actions", headers=admin.headers)).json()
    assert any(a["name"] == "auth.session.login" and a["builtin"] for a in catalogue)
    forged = await client.post(
        "/audit/v1/events",
        headers=admin.headers,
        json={"action": "auth.session.login", "outcome": "success"},
    )
    assert forged.status_code == 422
    assert "Keel's own action" in forged.json()["detail"]


async def test_a_registration_is_recorded_once_and_again_only_when_it_changes(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    action = "billing.refund.issue"
    await register(client, admin, action)
    await register(client, admin, action)  # the same entry: nothing new to record
    changed = await client.put(
        f"/audit/v1/actions/{action}",
        headers=admin.headers,
        json={"description": "A refund issued.", "category": "finance"},
    )
    assert changed.status_code == 200, changed.text
    deadline = time.monotonic() + 30
    while True:
        items = (await client.get("/audit/v1/events", headers=admin.headers)).json()["items"]
        registrations = [
            item
            for item in items
            if item["action"] == "audit.action.register" and item["target"]["id"] == action
        ]
        if len(registrations) >= 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert [item["data"]["description"] for item in registrations] == [
        "An invoice paid.",
        "A refund issued.",
    ]
    assert registrations[0]["actor"]["id"] == admin.user_id


async def test_a_retry_is_the_same_event_even_after_the_catalogue_changed(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await register(client, admin)
    sent = event(1, data={"note": "kept", "n": 1})
    first = await client.post("/audit/v1/events", headers=admin.headers, json=sent)
    # The action now redacts "note": the stored document would differ, the request does not.
    changed = await client.put(
        f"/audit/v1/actions/{ACTION}",
        headers=admin.headers,
        json={
            "description": "An invoice paid.",
            "category": "finance",
            "sensitive_fields": ["note"],
        },
    )
    assert changed.status_code == 200
    retried = await client.post("/audit/v1/events", headers=admin.headers, json=sent)
    assert retried.status_code == 201, retried.text
    assert retried.json()["leaf_index"] == first.json()["leaf_index"]


async def test_a_quiet_log_gets_a_fresh_signed_head_on_the_timer(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await register(client, admin)
    await client.post("/audit/v1/events", headers=admin.headers, json=event(1))
    before = TreeHead.from_json(
        (await client.get("/audit/v1/tree/head", headers=admin.headers)).json()
    )
    audit = app.state.keel.resources[AUDIT_RESOURCE]
    await audit.sequence_outbox(admin.tenant_id)
    current = TreeHead.from_json(
        (await client.get("/audit/v1/tree/head", headers=admin.headers)).json()
    )

    assert admin.tenant_id not in await audit.tenants_with_stale_heads(3600)
    assert admin.tenant_id in await audit.tenants_with_stale_heads(-1)
    fresh = await audit.sign_current_head(admin.tenant_id)
    assert (fresh.tree_size, fresh.root_hash) == (current.tree_size, current.root_hash)
    assert fresh.timestamp >= before.timestamp
    verify_tree_head(fresh, await keys(client))


async def test_proof_answers_name_only_what_they_prove(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await register(client, admin)
    await client.post(
        "/audit/v1/events/batch", headers=admin.headers, json={"events": [event(1), event(2)]}
    )
    size = (await client.get("/audit/v1/tree/head", headers=admin.headers)).json()["tree_size"]
    inclusion = await client.get(
        "/audit/v1/proofs/inclusion", params={"leaf_index": 0}, headers=admin.headers
    )
    assert set(inclusion.json()) == {"leaf_index", "tree_size", "proof", "tree_head"}
    consistency = await client.get(
        "/audit/v1/proofs/consistency", params={"first": 1, "second": size}, headers=admin.headers
    )
    assert set(consistency.json()) == {"first", "second", "proof"}
    beyond = await client.get(
        "/audit/v1/proofs/consistency",
        params={"first": 1, "second": size + 1},
        headers=admin.headers,
    )
    assert beyond.status_code == 422


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_tree_nodes_are_read_by_index_seeks_not_a_scan_of_the_log(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    """Every append and proof reads a few tree nodes; each must be an index seek, or the cost
    of a batch grows with the log (a row-value ``IN`` scanned all nodes on SQLite).

    SQLite only: PostgreSQL rightly filters a table this small by tenant whatever the query's
    form, so its plan here says nothing; at a million events it seeks each node (the proof
    benchmark, 4.7 ms, in ``docs/benchmarks.md``)."""
    await register(client, admin)
    reads: list[tuple[str, Any]] = []
    engine = app.state.keel.database.engine.sync_engine

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")) and "audit_nodes" in statement:
            reads.append((statement, parameters))

    sqlalchemy_event.listen(engine, "before_cursor_execute", capture)
    try:
        for batch in range(3):
            events = [event(batch * 10 + n) for n in range(10)]
            response = await client.post(
                "/audit/v1/events/batch", headers=admin.headers, json={"events": events}
            )
            assert response.status_code == 200, response.text
        proof = await client.get(
            "/audit/v1/proofs/inclusion",
            params={"event_id": events[3]["id"]},
            headers=admin.headers,
        )
        assert proof.status_code == 200
    finally:
        sqlalchemy_event.remove(engine, "before_cursor_execute", capture)
    assert reads, "no tree node was read"
    async with app.state.keel.database.engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        for statement, parameters in reads:
            rows = await (
                await driver.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            ).fetchall()
            plan = " | ".join(str(row[-1]) for row in rows)
            assert "SCAN audit_nodes" not in plan, plan
            assert "level=? AND index=?" in plan, plan


async def test_appends_above_the_pool_size_wait_their_turn_and_all_land(
    settings: Settings,
) -> None:
    """An append holds one connection at a time: more concurrent appends than the pool has
    connections queue for them instead of each holding one while waiting for a second."""
    pool = DatabasePoolSettings(size=2, timeout_seconds=5.0)
    application = create_app(settings.model_copy(update={"database_pool": pool}))
    async with lifespan_of(application):
        admin = await make_tenant_admin(application)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as client:
            await register(client, admin)
            answers = await asyncio.gather(
                *(
                    client.post("/audit/v1/events", headers=admin.headers, json=event(n))
                    for n in range(8)
                )
            )
    assert [answer.status_code for answer in answers] == [201] * 8
    assert len({answer.json()["leaf_index"] for answer in answers}) == 8
