"""Exporting the log as JSON Lines and CSV, on SQLite and PostgreSQL: every event with its
inclusion proof in one signed head, checked offline by the SDK; filters; streaming page by
page with a fixed number of queries per page; the export permission."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.service import AUDIT_RESOURCE, AuditLog, EventFilter, export
from keel.core.audit import ActionSpec, build_document
from keel_client.audit import (
    CSV_COLUMNS,
    ProofError,
    TreeHead,
    event_leaf_hash,
    public_keys_from_jwks,
    verify_export_csv,
    verify_export_lines,
)
from tests.support.audit import audit_events
from tests.support.tenants import TenantAdmin, create_api_key, create_role, create_user

ACTION = "shop.order.place"


async def fill(client: httpx.AsyncClient, admin: TenantAdmin, count: int) -> list[str]:
    """Append ``count`` orders (every fourth a failure); their ids in log order."""
    registered = await client.put(
        f"/audit/v1/actions/{ACTION}",
        headers=admin.headers,
        json={"description": "An order placed.", "category": "change"},
    )
    assert registered.status_code in (200, 201), registered.text
    ids = [f"order-{n}-{uuid.uuid4().hex[:6]}" for n in range(count)]
    for start in range(0, count, 1000):
        events = [
            {
                "id": ids[n],
                "action": ACTION,
                "outcome": "failure" if n % 4 == 0 else "success",
                "actor": {"type": "user", "id": f"u-{n % 3}"},
                "target": {"type": "order", "id": f"o-{n}"},
                "data": {"n": n, "note": 'ünïcode, "quoted"\nand a line break'},
            }
            for n in range(start, min(count, start + 1000))
        ]
        response = await client.post(
            "/audit/v1/events/batch", headers=admin.headers, json={"events": events}
        )
        assert response.status_code == 200, response.text
    return ids


async def append_directly(app: FastAPI, tenant_id: str, count: int) -> None:
    """``count`` events appended through the service, without the HTTP round trips."""
    spec = ActionSpec("keel.test.event", "A test event.")  # (not in the catalogue: no check)
    documents = [
        build_document(
            tenant_id=tenant_id,
            action=spec.name,
            spec=spec,
            target={"type": "thing", "id": f"t-{n}"},
            data={"n": n},
        )
        for n in range(count)
    ]
    audit = app.state.keel.resources[AUDIT_RESOURCE]
    for start in range(0, count, 1000):
        await audit.append(tenant_id, documents[start : start + 1000])


async def keys(client: httpx.AsyncClient) -> Any:
    return public_keys_from_jwks((await client.get("/audit/v1/keys")).json())


async def export_of(client: httpx.AsyncClient, admin: TenantAdmin, **params: Any) -> httpx.Response:
    response = await client.get("/audit/v1/export", params=params, headers=admin.headers)
    assert response.status_code == 200, response.text
    return response


def events_of(jsonl: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in jsonl.splitlines()[1:-1]]


async def test_a_jsonl_export_holds_every_event_of_its_head_and_verifies_offline(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    ids = await fill(client, admin, 40)
    response = await export_of(client, admin, format="jsonl")
    assert response.headers["content-type"] == "application/jsonl"
    assert response.headers["cache-control"] == "no-store"
    lines = response.text.splitlines()
    head = TreeHead.from_json(json.loads(lines[0])["tree_head"])
    assert head == TreeHead.from_json(json.loads(response.headers["keel-tree-head"]))

    assert verify_export_lines(lines, await keys(client)) == head.tree_size
    records = events_of(response.text)
    assert [r["leaf_index"] for r in records] == list(range(head.tree_size))
    assert [r["event"]["id"] for r in records if r["event"]["action"] == ACTION] == ids
    stored = (await client.get(f"/audit/v1/events/{ids[7]}", headers=admin.headers)).json()
    (exported,) = [r for r in records if r["event"]["id"] == ids[7]]
    assert exported["event"] == {
        k: v for k, v in stored.items() if k not in ("leaf_index", "leaf_hash")
    }
    assert exported["leaf_hash"] == stored["leaf_hash"]


async def test_an_edited_reordered_cut_or_foreign_export_is_refused(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await fill(client, admin, 12)
    lines = (await export_of(client, admin)).text.splitlines()
    trusted = await keys(client)
    assert verify_export_lines(lines, trusted) == len(lines) - 2

    def edited(position: int, change: Any) -> list[str]:
        record = json.loads(lines[position])
        change(record)
        return [*lines[:position], json.dumps(record), *lines[position + 1 :]]

    def new_amount(record: dict[str, Any]) -> None:
        record["event"]["data"] = {"n": 1000}

    def rehashed(record: dict[str, Any]) -> None:
        new_amount(record)  # and the leaf hash made to match: the proof then fails
        record["leaf_hash"] = base64.b64encode(event_leaf_hash(record["event"])).decode()

    def bigger_tree(record: dict[str, Any]) -> None:
        record["tree_head"]["tree_size"] += 1

    forged_keys = {kid: Ed25519PrivateKey.generate().public_key() for kid in trusted}
    cases: list[tuple[list[str], Any, str]] = [
        (edited(5, new_amount), trusted, "line 6: the event does not hash to its leaf"),
        (edited(5, rehashed), trusted, "line 6: the proof leads to another root"),
        ([*lines[:3], lines[4], lines[3], *lines[5:]], trusted, "out of log order"),
        ([*lines[:3], *lines[4:]], trusted, "does not count"),
        (lines[:-1], trusted, "cut short"),
        ([*lines, lines[5]], trusted, "after the end line"),
        (edited(0, bigger_tree), trusted, "signature does not verify"),
        (lines, forged_keys, "signature does not verify"),
        (lines[1:], trusted, "starts with its tree head"),
    ]
    for changed, with_keys, message in cases:
        with pytest.raises(ProofError, match=message):
            verify_export_lines(changed, with_keys)


async def test_a_csv_export_round_trips_and_verifies_offline(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    ids = await fill(client, admin, 30)
    response = await export_of(client, admin, format="csv", action="shop.")
    assert response.headers["content-type"] == "text/csv; header=present; charset=utf-8"
    head = response.headers["keel-tree-head"]
    trusted = await keys(client)
    assert verify_export_csv(io.StringIO(response.text), head, trusted) == 30

    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row["id"] for row in rows] == ids
    # (The JSON Lines export may be pinned to a larger head: the first export, recorded,
    # grew the log; the leaves are the same.)
    jsonl = events_of((await export_of(client, admin, action="shop.")).text)
    for row, record in zip(rows, jsonl, strict=True):
        assert json.loads(row["document"]) == record["event"]
        assert row["leaf_hash"] == record["leaf_hash"]
        assert (row["actor_id"], row["target_id"]) == (
            record["event"]["actor"]["id"],
            record["event"]["target"]["id"],
        )

    def rewritten(change: Any) -> io.StringIO:
        changed = [dict(row) for row in rows]
        change(changed[3])
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(changed)
        return io.StringIO(buffer.getvalue())

    with pytest.raises(ProofError, match="row 5: actor_id differs from the document"):
        verify_export_csv(rewritten(lambda row: row.update(actor_id="someone-else")), head, trusted)
    with pytest.raises(ProofError, match="row 5: the document does not hash to its leaf"):
        verify_export_csv(
            rewritten(lambda row: row.update(document=row["document"].replace("u-", "x-"))),
            head,
            trusted,
        )


async def test_the_export_applies_the_event_filters_and_is_itself_audited(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await fill(client, admin, 24)
    filters = {"action": "shop.", "outcome": "failure", "actor_id": "u-1"}
    listed = (await client.get("/audit/v1/events", params=filters, headers=admin.headers)).json()[
        "items"
    ]
    assert len(listed) == 2  # orders 4 and 16

    lines = (await export_of(client, admin, **filters)).text.splitlines()
    assert verify_export_lines(lines, await keys(client)) == 2
    assert [r["event"]["id"] for r in events_of("\n".join(lines))] == [e["id"] for e in listed]

    naive = await client.get(
        "/audit/v1/export", params={"since": "2026-01-01T00:00:00"}, headers=admin.headers
    )
    assert naive.status_code == 422
    assert "offset" in naive.json()["detail"]

    (recorded, *_) = await audit_events(app, admin.tenant_id, action_prefix=export.EXPORT_ACTION)
    assert recorded.actor_id == admin.user_id
    assert recorded.data["filters"] == filters
    assert recorded.data["format"] == "jsonl"


@asynccontextmanager
async def counting(app: FastAPI, statements: list[str]) -> AsyncIterator[AsyncSession]:
    async with app.state.keel.database.session() as session:

        def count(state: Any) -> None:
            statements.append(str(state.statement))

        sqlalchemy_event.listen(session.sync_session, "do_orm_execute", count)
        yield session


async def test_a_large_export_streams_page_by_page_with_a_few_queries_per_page(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await append_directly(app, admin.tenant_id, 3000)
    audit = app.state.keel.resources[AUDIT_RESOURCE]
    async with app.state.keel.database.session() as session:
        # Fresh: the admin's own events may have been group-committed after the 3000, and
        # their head is signed within a second (or now, for whoever asks).
        head = await audit.fresh_head(session, admin.tenant_id)
    assert head is not None
    assert head.tree_size > 3000

    statements: list[str] = []
    probe = AuditLog(app.state.keel.keyring, lambda: counting(app, statements))
    pages = [
        len(page)
        async for page in export.exported_pages(probe, admin.tenant_id, head, EventFilter())
    ]
    assert sum(pages) == head.tree_size
    assert max(pages) == export.EXPORT_PAGE_SIZE
    assert len(pages) >= 7
    # Per page: its events, then its proofs' leaves and inner nodes; never one per event.
    assert len(statements) <= 3 * len(pages) + 1

    status, body = await asgi_get(app, "/audit/v1/export", admin.headers)
    assert status == 200
    assert len(body) >= len(pages)  # sent as it is read, not assembled first
    lines = b"".join(body).decode().splitlines()
    assert verify_export_lines(lines, await keys(client)) >= head.tree_size


async def test_an_export_holds_only_the_tree_of_the_head_it_started_with(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await fill(client, admin, 25)
    audit = app.state.keel.resources[AUDIT_RESOURCE]
    async with app.state.keel.database.session() as session:
        head = await audit.latest_head(session, admin.tenant_id)
    pages = export.exported_pages(audit, admin.tenant_id, head, EventFilter(), page_size=10)
    first = await anext(pages)
    await fill(client, admin, 5)  # appended while the export runs
    rest = [event async for page in pages for event in page]
    exported = first + rest
    assert [e.leaf_index for e in exported] == list(range(head.tree_size))
    lines = [json.dumps({"tree_head": head.to_json()})]
    lines += [json.dumps(export.jsonl_record(e)) for e in exported]
    lines.append(json.dumps({"end": {"events": len(exported)}}))
    assert verify_export_lines(lines, await keys(client)) == head.tree_size


async def test_exporting_needs_the_export_permission_as_well_as_read(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await fill(client, admin, 2)
    await create_role(app, admin.tenant_id, "reader", ["audit:event:read"])
    await create_role(app, admin.tenant_id, "exporter", ["audit:event:read", "audit:event:export"])
    answers = []
    for role in ("reader", "exporter"):
        user = await create_user(app, admin.tenant_id, f"{role}-1", roles=[role])
        _, key = await create_api_key(app, admin.tenant_id, user.id)
        response = await client.get("/audit/v1/export", headers={"Authorization": f"Bearer {key}"})
        answers.append(response.status_code)
    assert answers == [403, 200]
    assert (await client.get("/audit/v1/export")).status_code == 401


async def asgi_get(app: FastAPI, path: str, headers: dict[str, str]) -> tuple[int, list[bytes]]:
    """GET ``path`` straight through the ASGI interface: the status and every body message
    as sent (httpx's ASGI transport joins them)."""
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if requested:  # the client stays connected until the response ends
            await asyncio.Event().wait()
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"keel.test")]
        + [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("keel.test", 80),
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = [m["body"] for m in sent if m["type"] == "http.response.body" and m.get("body")]
    return status, body
