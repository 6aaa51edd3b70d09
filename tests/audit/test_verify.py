"""Tampering with the stored log, as someone with database access would, and ``keel audit
verify`` catching it: an edited, deleted, inserted or reordered row, on SQLite and PostgreSQL.
The append-only triggers refuse UPDATE and DELETE first; the tests bypass them as a database
administrator can (dropping them on SQLite, ``session_replication_role`` on PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import rfc8785
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from auth.conftest import TenantAdmin, audit_events
from keel.settings import Settings
from keel_client.audit import leaf_hash
from support.keel_cli import invoke_keel_async
from support.keel_process import keel_env

ACTION = "billing.invoice.pay"
BATCHES = (5, 4, 7)  # 16 events under three signed heads


@pytest.fixture
async def logged(app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin) -> TenantAdmin:
    """A tenant whose log holds Keel's own events (its set-up) and 16 appended ones."""
    await audit_events(app, admin.tenant_id)  # sequence set-up events first
    registered = await client.put(
        f"/audit/v1/actions/{ACTION}", headers=admin.headers, json={"description": "Paid."}
    )
    assert registered.status_code == 201
    number = 0
    for size in BATCHES:
        events = []
        for _ in range(size):
            events.append({"id": f"e{number}", "action": ACTION, "data": {"n": number}})
            number += 1
        response = await client.post(
            "/audit/v1/events/batch", headers=admin.headers, json={"events": events}
        )
        assert response.status_code == 200, response.text
    await audit_events(app, admin.tenant_id)
    return admin


async def stored_size(settings: Settings, tenant_id: str) -> int:
    engine = create_async_engine(settings.effective_database_url)
    try:
        async with engine.connect() as connection:
            count = await connection.scalar(
                text("SELECT count(*) FROM audit_events WHERE tenant_id = :t"), {"t": tenant_id}
            )
    finally:
        await engine.dispose()
    return int(count or 0)


@pytest.fixture
async def raw(settings: Settings) -> AsyncIterator[Callable[[], Any]]:
    """A connection that bypasses the append-only triggers, as a database administrator."""
    url = settings.effective_database_url
    engine = create_async_engine(url)

    def connect() -> Any:
        return _Bypassing(engine)

    yield connect
    await engine.dispose()


class _Bypassing:
    def __init__(self, engine: Any) -> None:
        self.engine = engine

    async def __aenter__(self) -> AsyncConnection:
        self.context = self.engine.begin()
        connection: AsyncConnection = await self.context.__aenter__()
        if connection.dialect.name == "postgresql":
            await connection.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            triggers = await connection.execute(
                text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            )
            for (name,) in triggers.all():
                await connection.execute(text(f'DROP TRIGGER "{name}"'))
        return connection

    async def __aexit__(self, *exc: object) -> None:
        await self.context.__aexit__(*exc)


async def verify(settings: Settings, tmp_path: Path, slug: str) -> tuple[int, dict[str, Any]]:
    """``keel audit verify --json`` (in-process, :mod:`support.keel_cli`): its exit code and
    report."""
    env = keel_env(KEEL_DATABASE_URL=settings.effective_database_url)
    result = await invoke_keel_async(
        "audit", "verify", "--tenant", slug, "--json", cwd=tmp_path, env=env
    )
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


async def document(connection: AsyncConnection, tenant_id: str, index: int) -> dict[str, Any]:
    stored = await connection.scalar(
        text("SELECT document FROM audit_payloads WHERE tenant_id = :t AND leaf_index = :i"),
        {"t": tenant_id, "i": index},
    )
    return dict(json.loads(stored))


async def test_an_untouched_log_verifies(
    logged: TenantAdmin, settings: Settings, tmp_path: Path
) -> None:
    code, report = await verify(settings, tmp_path, logged.tenant_slug)
    assert code == 0, report
    assert report["ok"] is True
    assert report["tree_size"] == await stored_size(settings, logged.tenant_id)
    assert report["tree_size"] > sum(BATCHES)  # Keel's own events of the set-up too
    assert report["heads_checked"] >= len(BATCHES)


async def test_the_triggers_refuse_update_and_delete(
    logged: TenantAdmin, settings: Settings
) -> None:
    engine = create_async_engine(settings.effective_database_url)
    try:
        for statement in (
            "UPDATE audit_events SET action = 'x.y.z' WHERE tenant_id = :t",
            "DELETE FROM audit_events WHERE tenant_id = :t",
            "DELETE FROM audit_nodes WHERE tenant_id = :t",
            "UPDATE audit_tree_heads SET tree_size = 0 WHERE tenant_id = :t",
        ):
            with pytest.raises(DBAPIError, match="append-only"):
                async with engine.begin() as connection:
                    await connection.execute(text(statement), {"t": logged.tenant_id})
    finally:
        await engine.dispose()


async def test_an_edited_document_is_reported_at_its_event(
    logged: TenantAdmin, settings: Settings, tmp_path: Path, raw: Callable[[], Any]
) -> None:
    async with raw() as connection:
        edited = await document(connection, logged.tenant_id, 3)
        edited["data"] = {"n": 1000}
        await connection.execute(
            text("UPDATE audit_payloads SET document = :d WHERE tenant_id = :t AND leaf_index = 3"),
            {"d": rfc8785.dumps(edited), "t": logged.tenant_id},
        )
    code, report = await verify(settings, tmp_path, logged.tenant_slug)
    assert code == 1
    assert report["first_divergent_event"] == 3
    assert any("event 3" in problem for problem in report["problems"])


async def test_an_edit_with_its_leaf_hash_recomputed_still_breaks_the_tree(
    logged: TenantAdmin, settings: Settings, tmp_path: Path, raw: Callable[[], Any]
) -> None:
    async with raw() as connection:
        edited = await document(connection, logged.tenant_id, 3)
        edited["data"] = {"n": 1000}
        raw_document = rfc8785.dumps(edited)
        parameters = {"d": raw_document, "h": leaf_hash(raw_document), "t": logged.tenant_id}
        await connection.execute(
            text("UPDATE audit_payloads SET document = :d WHERE tenant_id = :t AND leaf_index = 3"),
            parameters,
        )
        await connection.execute(
            text("UPDATE audit_events SET leaf_hash = :h WHERE tenant_id = :t AND leaf_index = 3"),
            parameters,
        )
    code, report = await verify(settings, tmp_path, logged.tenant_slug)
    assert code == 1
    # Node (1, 1) covers events 2 and 3: the tree can tell the pair changed, not which one.
    assert report["first_divergent_event"] in (2, 3)
    assert any("signed head" in problem for problem in report["problems"])


async def test_a_deleted_event_is_reported(
    logged: TenantAdmin, settings: Settings, tmp_path: Path, raw: Callable[[], Any]
) -> None:
    async with raw() as connection:
        for statement in (
            "DELETE FROM audit_payloads WHERE tenant_id = :t AND leaf_index = 5",
            "DELETE FROM audit_events WHERE tenant_id = :t AND leaf_index = 5",
        ):
            await connection.execute(text(statement), {"t": logged.tenant_id})
    code, report = await verify(settings, tmp_path, logged.tenant_slug)
    assert code == 1
    assert report["first_divergent_event"] == 5
    assert any("missing" in problem for problem in report["problems"])


async def test_an_inserted_event_is_reported(
    logged: TenantAdmin, settings: Settings, tmp_path: Path, raw: Callable[[], Any]
) -> None:
    size = await stored_size(settings, logged.tenant_id)
    forged = {"id": "forged", "action": ACTION, "data": {"n": -1}, "tenant": logged.tenant_id}
    raw_document = rfc8785.dumps(forged)
    async with raw() as connection:
        await connection.execute(
            text(
                "INSERT INTO audit_events (tenant_id, leaf_index, event_id, time, action, "
                "outcome, sensitivity, leaf_hash, request_hash, sequenced_at) VALUES (:t, :i, "
                "'forged', '2026-01-01 00:00:00', :a, 'success', 'internal', :h, :h, "
                "'2026-01-01 00:00:00')"
            ),
            {"t": logged.tenant_id, "i": size, "a": ACTION, "h": leaf_hash(raw_document)},
        )
        await connection.execute(
            text(
                "INSERT INTO audit_payloads (tenant_id, leaf_index, document) VALUES (:t, :i, :d)"
            ),
            {"t": logged.tenant_id, "i": size, "d": raw_document},
        )
    code, report = await verify(settings, tmp_path, logged.tenant_slug)
    assert code == 1
    assert report["first_divergent_event"] == size
    assert any("no signed head" in problem for problem in report["problems"])


async def test_reordered_events_are_reported(
    logged: TenantAdmin, settings: Settings, tmp_path: Path, raw: Callable[[], Any]
) -> None:
    """Events 6 and 9 swap places, each row still consistent with its own document."""
    async with raw() as connection:
        rows = {}
        for index in (6, 9):
            rows[index] = (
                await connection.execute(
                    text(
                        "SELECT e.event_id, e.leaf_hash, p.document FROM audit_events e JOIN "
                        "audit_payloads p ON p.tenant_id = e.tenant_id AND "
                        "p.leaf_index = e.leaf_index WHERE e.tenant_id = :t AND e.leaf_index = :i"
                    ),
                    {"t": logged.tenant_id, "i": index},
                )
            ).one()
        for index, other in ((6, 9), (9, 6)):
            event_id, digest, raw_document = rows[other]
            parameters = {
                "t": logged.tenant_id, "i": index, "e": f"{event_id}-moved", "h": digest,
                "d": raw_document,
            }  # fmt: skip
            await connection.execute(
                text(
                    "UPDATE audit_events SET event_id = :e, leaf_hash = :h "
                    "WHERE tenant_id = :t AND leaf_index = :i"
                ),
                parameters,
            )
            await connection.execute(
                text(
                    "UPDATE audit_payloads SET document = :d "
                    "WHERE tenant_id = :t AND leaf_index = :i"
                ),
                parameters,
            )
    code, report = await verify(settings, tmp_path, logged.tenant_slug)
    assert code == 1
    assert report["first_divergent_event"] == 6
    assert any("tree node" in problem for problem in report["problems"])
