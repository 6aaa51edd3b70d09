"""Tampering with the stored log, as someone with database access would, and ``keel audit
verify`` catching it: an edited, deleted, inserted or reordered row, on SQLite and PostgreSQL.
The append-only triggers refuse UPDATE and DELETE first; the tests bypass them as a database
administrator can (dropping them on SQLite, ``session_replication_role`` on PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import rfc8785
from fastapi import FastAPI
from sqlalchemy import text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from keel.audit.models import AuditEvent
from keel.settings import Settings
from keel_client.audit import leaf_hash
from tests.support.audit import audit_events
from tests.support.keel_cli import invoke_keel_async
from tests.support.keel_process import keel_env
from tests.support.tenants import TenantAdmin, make_tenant_admin

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
            events.append(
                {
                    "id": f"e{number}",
                    "action": ACTION,
                    "outcome": "failure" if number % 4 == 3 else "success",
                    "actor": {"type": "service", "id": f"billing-{number % 2}"},
                    "target": {"type": "invoice", "id": f"inv-{number}"},
                    "data": {"n": number},
                }
            )
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
    """``keel audit verify --json`` (in-process, :mod:`tests.support.keel_cli`): its exit code and
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


async def leaf_of(connection: AsyncConnection, tenant_id: str, event_id: str) -> int:
    index = await connection.scalar(
        text("SELECT leaf_index FROM audit_events WHERE tenant_id = :t AND event_id = :e"),
        {"t": tenant_id, "e": event_id},
    )
    assert isinstance(index, int)
    return index


async def move_rows(connection: AsyncConnection, tenant_id: str, moves: dict[int, int]) -> None:
    """Give the events (both tables) at the keys of ``moves`` the leaf indexes of its values,
    through indexes no row holds, as the primary key allows."""
    for table in ("audit_events", "audit_payloads"):
        for step in ("away", "back"):
            for source, destination in moves.items():
                before, after = (source, -1 - destination) if step == "away" else (
                    -1 - destination, destination)  # fmt: skip
                await connection.execute(
                    text(
                        f"UPDATE {table} SET leaf_index = :after "  # noqa: S608
                        "WHERE tenant_id = :t AND leaf_index = :before"
                    ),
                    {"t": tenant_id, "before": before, "after": after},
                )


#: A new value for each column of ``audit_events`` taken from the document, for event ``e3``
#: (a failure of service ``billing-1`` on invoice ``inv-3``).
EDITED_COLUMNS: dict[str, Any] = {
    "event_id": "e3-renamed",
    "time": datetime(2020, 1, 1, tzinfo=UTC),
    "action": "billing.invoice.refund",
    "outcome": "success",  # hidden from ?outcome=failure
    "sensitivity": "public",
    "actor_type": "user",
    "actor_id": None,
    "target_type": "payment",
    "target_id": "inv-4",
    "leaf_hash": leaf_hash(b"{}"),
}


@pytest.mark.parametrize("column", list(EDITED_COLUMNS))
async def test_each_column_taken_from_the_document_is_checked(
    logged: TenantAdmin, settings: Settings, tmp_path: Path, raw: Callable[[], Any], column: str
) -> None:
    async with raw() as connection:
        index = await leaf_of(connection, logged.tenant_id, "e3")
        await connection.execute(
            update(AuditEvent.__table__)
            .where(
                AuditEvent.__table__.c.tenant_id == logged.tenant_id,
                AuditEvent.__table__.c.leaf_index == index,
            )
            .values({column: EDITED_COLUMNS[column]})
        )
    code, report = await verify(settings, tmp_path, logged.tenant_slug)
    assert code == 1
    assert (report["first_divergent_event"], report["first_divergent_event_id"]) == (index, "e3")
    assert any(
        problem.startswith(f"event {index}: ") and column in problem
        for problem in report["problems"]
    ), report["problems"]


async def test_an_event_moved_to_another_tenants_log_is_reported_in_both(
    app: FastAPI, logged: TenantAdmin, settings: Settings, tmp_path: Path, raw: Callable[[], Any]
) -> None:
    other = await make_tenant_admin(app)
    await audit_events(app, other.tenant_id)
    index = await stored_size(settings, other.tenant_id)  # the other log's next leaf
    async with raw() as connection:
        for table in ("audit_events", "audit_payloads"):
            await connection.execute(
                text(f"UPDATE {table} SET tenant_id = :o WHERE tenant_id = :t AND leaf_index = :i"),  # noqa: S608
                {"o": other.tenant_id, "t": logged.tenant_id, "i": index},
            )
    code, report = await verify(settings, tmp_path, logged.tenant_slug)
    assert (code, report["first_divergent_event"]) == (1, index)
    code, report = await verify(settings, tmp_path, other.tenant_slug)
    assert (code, report["first_divergent_event"]) == (1, index)
    assert any(f"event {index}: " in p and "tenant" in p for p in report["problems"])


async def test_a_document_rewritten_as_text_is_reported_at_its_event(
    logged: TenantAdmin, settings: Settings, tmp_path: Path, raw: Callable[[], Any]
) -> None:
    """SQLite's ``replace()`` answers text whatever it is given: the document of a failure,
    rewritten as a success, is stored as text. (PostgreSQL keeps bytes in a ``bytea``.)"""
    async with raw() as connection:
        index = await leaf_of(connection, logged.tenant_id, "e3")
        await connection.execute(
            text(rewrite_outcome(connection)), {"t": logged.tenant_id, "i": index}
        )
    code, report = await verify(settings, tmp_path, logged.tenant_slug)
    assert code == 1
    assert (report["first_divergent_event"], report["first_divergent_event_id"]) == (index, "e3")
    assert any(problem.startswith(f"event {index}: ") for problem in report["problems"])


def rewrite_outcome(connection: AsyncConnection) -> str:
    """An UPDATE of the document at leaf ``:i`` turning its failure into a success."""
    if connection.dialect.name == "sqlite":
        document = "replace(document, '\"failure\"', '\"success\"')"
    else:
        document = (
            "convert_to(replace(convert_from(document, 'UTF8'), '\"failure\"', "
            "'\"success\"'), 'UTF8')"
        )
    return (
        f"UPDATE audit_payloads SET document = {document} "  # noqa: S608
        "WHERE tenant_id = :t AND leaf_index = :i"
    )


async def test_the_cli_names_the_event_in_one_line_and_exits_1(
    logged: TenantAdmin, settings: Settings, tmp_path: Path, raw: Callable[[], Any]
) -> None:
    async with raw() as connection:
        index = await leaf_of(connection, logged.tenant_id, "e3")
        await connection.execute(
            text(rewrite_outcome(connection)), {"t": logged.tenant_id, "i": index}
        )
    env = keel_env(KEEL_DATABASE_URL=settings.effective_database_url)
    result = await invoke_keel_async(
        "audit", "verify", "--tenant", logged.tenant_slug, cwd=tmp_path, env=env
    )
    assert result.returncode == 1
    assert result.stderr == ""
    assert "Traceback" not in result.stdout
    assert "Error" not in result.stdout
    first, *details = result.stdout.splitlines()
    assert first.startswith(f"{logged.tenant_slug}: TAMPERED (")
    assert first.endswith(f"; first changed event: {index} (id 'e3')")
    assert details
    assert all(line.startswith("  - ") for line in details)


@pytest.mark.parametrize(("first", "second"), [(6, 9), (7, 10), (7, 8), (6, 7)])
async def test_swapped_events_are_reported_at_the_first(
    logged: TenantAdmin,
    settings: Settings,
    tmp_path: Path,
    raw: Callable[[], Any],
    first: int,
    second: int,
) -> None:
    """Two events swap places, every column and the document: each row agrees with itself,
    only the tree tells, and it names the first of the two, odd or even."""
    async with raw() as connection:
        moved_in = await connection.scalar(
            text("SELECT event_id FROM audit_events WHERE tenant_id = :t AND leaf_index = :i"),
            {"t": logged.tenant_id, "i": second},
        )
        await move_rows(connection, logged.tenant_id, {first: second, second: first})
    code, report = await verify(settings, tmp_path, logged.tenant_slug)
    assert code == 1
    assert report["first_divergent_event"] == first, report["problems"]
    assert report["first_divergent_event_id"] == moved_in
    assert any("tree node" in problem for problem in report["problems"])


@pytest.mark.parametrize("position", [7, 8])
async def test_an_event_inserted_in_the_middle_is_reported_at_its_place(
    logged: TenantAdmin, settings: Settings, tmp_path: Path, raw: Callable[[], Any], position: int
) -> None:
    """A forged event, its row agreeing with its document, inserted at ``position``: the
    events from there on move up one."""
    size = await stored_size(settings, logged.tenant_id)
    async with raw() as connection:
        await move_rows(
            connection, logged.tenant_id, {i: i + 1 for i in reversed(range(position, size))}
        )
        forged = await document(connection, logged.tenant_id, position + 1)
        forged.update(id="forged", data={"n": -1})
        raw_document = rfc8785.dumps(forged)
        parameters = {
            "t": logged.tenant_id, "i": position, "copy": position + 1, "d": raw_document,
            "h": leaf_hash(raw_document),
        }  # fmt: skip
        await connection.execute(
            text(
                "INSERT INTO audit_events (tenant_id, leaf_index, event_id, time, action, "
                "outcome, sensitivity, actor_type, actor_id, target_type, target_id, leaf_hash, "
                "request_hash, sequenced_at) SELECT tenant_id, :i, 'forged', time, action, "
                "outcome, sensitivity, actor_type, actor_id, target_type, target_id, :h, :h, "
                "sequenced_at FROM audit_events WHERE tenant_id = :t AND leaf_index = :copy"
            ),
            parameters,
        )
        await connection.execute(
            text(
                "INSERT INTO audit_payloads (tenant_id, leaf_index, document) VALUES (:t, :i, :d)"
            ),
            parameters,
        )
    code, report = await verify(settings, tmp_path, logged.tenant_slug)
    assert code == 1
    assert (report["first_divergent_event"], report["first_divergent_event_id"]) == (
        position,
        "forged",
    ), report["problems"]


async def test_a_changed_tree_node_blames_no_event(
    logged: TenantAdmin, settings: Settings, tmp_path: Path, raw: Callable[[], Any]
) -> None:
    """A node's hash changed, not an event: the signed heads prove the events intact."""
    async with raw() as connection:
        await connection.execute(
            text(
                "UPDATE audit_nodes SET hash = :h "
                'WHERE tenant_id = :t AND level = 1 AND "index" = 3'
            ),
            {"t": logged.tenant_id, "h": bytes(32)},
        )
    code, report = await verify(settings, tmp_path, logged.tenant_slug)
    assert code == 1
    assert report["first_divergent_event"] is None
    assert report["problems"] == ["tree node (1, 3) differs from the events it covers"]


#: Values of a type or size the writer never stores, as SQL for each database (PostgreSQL's
#: columns keep their types: there, a wrong size or a value out of range), and the event
#: each one is blamed on (``e3``'s leaf index, or none: a tree or key row, not an event).
STRANGE_VALUES: dict[str, tuple[str, str, str | None]] = {
    "document as a number": (
        "UPDATE audit_payloads SET document = 42 WHERE {e3}",
        "UPDATE audit_payloads SET document = '\\x3432' WHERE {e3}",
        "e3",
    ),
    "document nested too deep for a JSON parser": (
        "UPDATE audit_payloads SET document = CAST(printf('%.*c', 100000, '[') AS BLOB) WHERE {e3}",
        "UPDATE audit_payloads SET document = convert_to(repeat('[', 100000), 'UTF8') WHERE {e3}",
        "e3",
    ),
    "leaf hash as text": (
        "UPDATE audit_events SET leaf_hash = hex(leaf_hash) WHERE {e3}",
        "UPDATE audit_events SET leaf_hash = convert_to(encode(leaf_hash, 'hex'), 'UTF8') "
        "WHERE {e3}",
        "e3",
    ),
    "leaf hash cut short": (
        "UPDATE audit_events SET leaf_hash = substr(leaf_hash, 1, 5) WHERE {e3}",
        "UPDATE audit_events SET leaf_hash = substr(leaf_hash, 1, 5) WHERE {e3}",
        "e3",
    ),
    "time as a number": (
        "UPDATE audit_events SET time = 12345 WHERE {e3}",
        "UPDATE audit_events SET time = time + interval '1 microsecond' WHERE {e3}",
        "e3",
    ),
    "outcome as a number": (
        "UPDATE audit_events SET outcome = 1 WHERE {e3}",
        "UPDATE audit_events SET outcome = '1' WHERE {e3}",
        "e3",
    ),
    "actor id as bytes": (
        "UPDATE audit_events SET actor_id = CAST(actor_id AS BLOB) WHERE {e3}",
        "UPDATE audit_events SET actor_id = upper(actor_id) WHERE {e3}",
        "e3",
    ),
    "leaf index as text": (
        "UPDATE audit_events SET leaf_index = 'three' WHERE {e3}",
        "UPDATE audit_events SET leaf_index = leaf_index + 1000 WHERE {e3}",
        "e3",
    ),
    "tree node hash as text": (
        "UPDATE audit_nodes SET hash = hex(hash) WHERE {node}",
        "UPDATE audit_nodes SET hash = substr(hash, 1, 5) WHERE {node}",
        None,
    ),
    "tree node level as text": (
        "UPDATE audit_nodes SET level = 'one' WHERE {node}",
        "UPDATE audit_nodes SET level = -1 WHERE {node}",
        None,
    ),
    "signed head size as text": (
        "UPDATE audit_tree_heads SET tree_size = 'big' WHERE {head}",
        "UPDATE audit_tree_heads SET tree_size = -1 WHERE {head}",
        None,
    ),
    "signed head root cut short": (
        "UPDATE audit_tree_heads SET root_hash = substr(root_hash, 1, 5) WHERE {head}",
        "UPDATE audit_tree_heads SET root_hash = substr(root_hash, 1, 5) WHERE {head}",
        None,
    ),
    "signed head timestamp beyond JSON's integers": (
        "UPDATE audit_tree_heads SET timestamp = 9007199254740993 WHERE {head}",
        "UPDATE audit_tree_heads SET timestamp = 9007199254740993 WHERE {head}",
        None,
    ),
    "signature as text": (
        "UPDATE audit_tree_heads SET signature = hex(signature) WHERE {head}",
        "UPDATE audit_tree_heads SET signature = substr(signature, 2) WHERE {head}",
        None,
    ),
    "public key as text": (
        "UPDATE audit_signing_keys SET public_key = hex(public_key)",
        "UPDATE audit_signing_keys SET public_key = substr(public_key, 2)",
        None,
    ),
}


KEYS_SQL = "SELECT key_id, public_key FROM audit_signing_keys"


@pytest.mark.parametrize("case", list(STRANGE_VALUES))
async def test_a_value_of_any_type_is_reported_not_a_crash(
    logged: TenantAdmin, settings: Settings, tmp_path: Path, raw: Callable[[], Any], case: str
) -> None:
    on_sqlite, on_postgresql, blamed = STRANGE_VALUES[case]
    async with raw() as connection:
        index = await leaf_of(connection, logged.tenant_id, "e3")
        first_head = await connection.scalar(
            text("SELECT min(id) FROM audit_tree_heads WHERE tenant_id = :t"),
            {"t": logged.tenant_id},
        )
        # The signing keys are the platform's, not the tenant's: put back once checked.
        keys = (await connection.execute(text(KEYS_SQL))).all()
        statement = on_sqlite if connection.dialect.name == "sqlite" else on_postgresql
        where = {
            "e3": f"tenant_id = :t AND leaf_index = {index}",
            "node": 'tenant_id = :t AND level = 1 AND "index" = 2',
            "head": f"tenant_id = :t AND id = {first_head}",
        }
        await connection.execute(text(statement.format(**where)), {"t": logged.tenant_id})
    try:
        code, report = await verify(settings, tmp_path, logged.tenant_slug)
    finally:
        async with raw() as connection:
            for key_id, public_key in keys:
                await connection.execute(
                    text("UPDATE audit_signing_keys SET public_key = :p WHERE key_id = :k"),
                    {"p": public_key, "k": key_id},
                )
    assert code == 1
    assert report["problems"]
    assert not any("Error" in problem for problem in report["problems"]), report["problems"]
    if blamed is None:
        assert report["first_divergent_event"] is None, report["problems"]
    else:
        assert report["first_divergent_event"] == index, report["problems"]
