"""Retention, on SQLite and PostgreSQL: expired documents of the configured categories are
erased and their leaves kept, so every proof still verifies; each erasure is an audit event
that ``keel audit verify`` relies on, and a document deleted any other way is still caught."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from keel.audit.audit_actions import ERASE_ACTION
from keel.audit.service import AUDIT_RESOURCE, verify
from keel.audit.service.retention import (
    RetentionPolicy,
    erase_expired,
    leaf_ranges,
    run_retention,
)
from keel.audit.service.verify import verify_tenant
from keel.core.audit import ActionSpec, AuditOutbox, build_document, builtin_action, outbox_rows
from keel.settings import AuditSettings, Settings, SettingsError, load_settings
from keel_client.audit import (
    TreeHead,
    public_keys_from_jwks,
    verify_export_lines,
    verify_inclusion,
    verify_tree_head,
)
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.keel_cli import invoke_keel, invoke_keel_async
from tests.support.keel_process import keel_env
from tests.support.tenants import TenantAdmin, make_tenant_admin

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=200)
ACCESS_DAYS = 90


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings with access events kept 90 days, everything else forever."""
    return settings.model_copy(
        update={"audit": AuditSettings(retention_days={"access": ACCESS_DAYS})}
    )


@dataclass(frozen=True)
class History:
    admin: TenantAdmin
    #: Event id -> leaf index, by kind.
    old_views: dict[str, int]
    recent_views: dict[str, int]
    old_orders: dict[str, int]


@pytest.fixture
async def history(app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin) -> History:
    """Page views (``access``) and orders (``change``), some 200 days old, interleaved."""
    for action, category in (("shop.page.view", "access"), ("shop.order.place", "change")):
        response = await client.put(
            f"/audit/v1/actions/{action}",
            headers=admin.headers,
            json={"description": action, "category": category},
        )
        assert response.status_code == 201, response.text
    kinds = ["old_view"] * 2 + ["old_order", "old_view", "recent_view"] * 3 + ["old_view"]
    events = []
    for number, kind in enumerate(kinds):
        events.append(
            {
                "id": f"{kind}-{number}-{uuid.uuid4().hex[:6]}",
                "action": "shop.order.place" if kind == "old_order" else "shop.page.view",
                "time": (NOW if kind == "recent_view" else OLD).isoformat(),
                "actor": {"type": "user", "id": "u-1"},
                "data": {"page": f"/p/{number}"},
            }
        )
    response = await client.post(
        "/audit/v1/events/batch", headers=admin.headers, json={"events": events}
    )
    assert response.status_code == 200, response.text
    await audit_events(app, admin.tenant_id)  # the set-up's own events too
    by_kind: dict[str, dict[str, int]] = {"old_view": {}, "recent_view": {}, "old_order": {}}
    for kind, receipt in zip(kinds, response.json()["receipts"], strict=True):
        by_kind[kind][receipt["id"]] = receipt["leaf_index"]
    return History(admin, by_kind["old_view"], by_kind["recent_view"], by_kind["old_order"])


async def stored(client: httpx.AsyncClient, admin: TenantAdmin, event_id: str) -> Any:
    response = await client.get(f"/audit/v1/events/{event_id}", headers=admin.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def keys(client: httpx.AsyncClient) -> Any:
    return public_keys_from_jwks((await client.get("/audit/v1/keys")).json())


def test_leaf_indexes_are_recorded_as_ranges() -> None:
    assert leaf_ranges([]) == []
    assert leaf_ranges([7, 0, 1, 2, 5, 6, 9, 2]) == [(0, 2), (5, 7), (9, 9)]


def test_a_category_without_a_period_keeps_the_default() -> None:
    policy = RetentionPolicy({"access": 90, "finance": 0}, default_days=365)
    assert policy.cutoff("access", NOW) == NOW - timedelta(days=90)
    assert policy.cutoff("finance", NOW) is None  # 0: kept forever
    assert policy.cutoff("change", NOW) == policy.cutoff(None, NOW) == NOW - timedelta(days=365)
    assert RetentionPolicy({"access": 0}).keeps_everything
    assert builtin_action(ERASE_ACTION) is not None


def test_retention_periods_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_AUDIT__RETENTION_DAYS", '{"access": 90, "security": 730}')
    monkeypatch.setenv("KEEL_AUDIT__DEFAULT_RETENTION_DAYS", "3650")
    audit = load_settings().audit
    assert audit.retention_days == {"access": 90, "security": 730}
    assert audit.default_retention_days == 3650
    for value, message in (
        ("90", "KEEL_AUDIT__RETENTION_DAYS: "),
        ("{not json", "KEEL_AUDIT__RETENTION_DAYS: must be a JSON object"),
        ('{"Access": 9}', "'Access' is not an action category"),
        ('{"access": -1}', "KEEL_AUDIT__RETENTION_DAYS__ACCESS: "),
    ):
        monkeypatch.setenv("KEEL_AUDIT__RETENTION_DAYS", value)
        with pytest.raises(SettingsError, match=message):
            load_settings()


async def test_retention_erases_only_expired_documents_of_the_configured_categories(
    app: FastAPI, client: httpx.AsyncClient, history: History
) -> None:
    admin = history.admin
    other = await make_tenant_admin(app)  # its leaves have the same indexes
    await audit_events(app, other.tenant_id)
    (run,) = await run_retention(app.state.keel, tenant_id=admin.tenant_id)
    assert run.erased == len(history.old_views) == 6
    (erasure,) = run.erasures
    assert erasure.category == "access"
    assert erasure.leaf_ranges == leaf_ranges(history.old_views.values())
    assert len(erasure.leaf_ranges) == 5  # interleaved with orders and recent views
    assert NOW - timedelta(days=ACCESS_DAYS) <= erasure.cutoff < datetime.now(UTC)

    for event_id in history.old_views:
        erased = await stored(client, admin, event_id)
        assert erased["erased"] is True
        assert "data" not in erased
        assert "actor" not in erased
    for event_id in [*history.recent_views, *history.old_orders]:
        assert (await stored(client, admin, event_id))["data"]["page"].startswith("/p/")

    # The erasure is in the log, recorded by Keel with what it erased.
    (recorded,) = await audit_events(app, admin.tenant_id, action_prefix=ERASE_ACTION)
    assert recorded.event_id == run.event_id
    assert recorded.actor_type == "system"
    assert recorded.data["erased"] == 6
    assert recorded.data["categories"][0]["leaf_ranges"] == [
        list(pair) for pair in erasure.leaf_ranges
    ]

    # An erased event still proves its place in the log by its leaf hash.
    trusted = await keys(client)
    head = TreeHead.from_json(
        (await client.get("/audit/v1/tree/head", headers=admin.headers)).json()
    )
    verify_tree_head(head, trusted)
    for event_id, index in history.old_views.items():
        proof = (
            await client.get(
                "/audit/v1/proofs/inclusion", params={"event_id": event_id}, headers=admin.headers
            )
        ).json()
        leaf = base64.b64decode((await stored(client, admin, event_id))["leaf_hash"])
        hashes = [base64.b64decode(item) for item in proof["proof"]]
        verify_inclusion(leaf, index, proof["tree_size"], hashes, head.root_hash)

    exported = (await client.get("/audit/v1/export", headers=admin.headers)).text.splitlines()
    assert verify_export_lines(exported, trusted) > len(history.old_views)
    nulls = {json.loads(line)["leaf_index"] for line in exported[1:-1] if '"event":null' in line}
    assert nulls == set(history.old_views.values())

    async with unit_of_work(app) as session:
        report = await verify_tenant(session, admin.tenant_id)
    assert report.ok, report.problems
    assert report.erased == 6
    async with unit_of_work(app) as session:
        untouched = await verify_tenant(session, other.tenant_id)
    assert untouched.ok, untouched.problems
    assert untouched.erased == 0

    # Nothing is left to erase: a second run erases and records nothing.
    (again,) = await run_retention(app.state.keel, tenant_id=admin.tenant_id)
    assert (again.erased, again.event_id) == (0, None)
    assert len(await audit_events(app, admin.tenant_id, action_prefix=ERASE_ACTION)) == 1


async def test_a_dry_run_finds_the_same_documents_and_changes_nothing(
    app: FastAPI, client: httpx.AsyncClient, history: History
) -> None:
    admin = history.admin
    (run,) = await run_retention(app.state.keel, tenant_id=admin.tenant_id, dry_run=True)
    assert (run.is_dry_run, run.erased, run.event_id) == (True, 6, None)
    assert run.erasures[0].leaf_ranges == leaf_ranges(history.old_views.values())
    for event_id in history.old_views:
        assert "erased" not in await stored(client, admin, event_id)
    assert await audit_events(app, admin.tenant_id, action_prefix=ERASE_ACTION) == []


async def test_a_batch_limit_splits_a_backlog_into_recorded_transactions(
    app: FastAPI, history: History
) -> None:
    context = app.state.keel
    limited = context.settings.audit.model_copy(update={"retention_batch_size": 4})
    context.settings = context.settings.model_copy(update={"audit": limited})
    runs = await run_retention(context, tenant_id=history.admin.tenant_id)
    assert [run.erased for run in runs] == [4, 2]
    assert runs[0].has_more
    assert not runs[1].has_more
    assert len(await audit_events(app, history.admin.tenant_id, action_prefix=ERASE_ACTION)) == 2
    async with unit_of_work(app) as session:
        assert (await verify_tenant(session, history.admin.tenant_id)).erased == 6


async def test_erasure_events_are_never_erased_themselves(app: FastAPI, history: History) -> None:
    """Years later, with every category expired, the erasure records stay: they are what
    explains the missing documents."""
    admin = history.admin
    await run_retention(app.state.keel, tenant_id=admin.tenant_id)
    await audit_events(app, admin.tenant_id)
    everything = RetentionPolicy({}, default_days=1)
    async with unit_of_work(app) as session:
        later = await erase_expired(
            session, admin.tenant_id, everything, now=NOW + timedelta(days=3650)
        )
    assert later.erased > len(history.recent_views) + len(history.old_orders)
    await audit_events(app, admin.tenant_id)
    erasures = await audit_events(app, admin.tenant_id, action_prefix=ERASE_ACTION)
    assert len(erasures) == 2
    assert all(erasure.document is not None for erasure in erasures)
    async with unit_of_work(app) as session:
        report = await verify_tenant(session, admin.tenant_id)
    assert report.ok, report.problems


async def test_verify_accepts_an_erasure_still_in_the_outbox_but_not_one_that_came_early(
    app: FastAPI, settings: Settings, history: History
) -> None:
    """The transaction that erases commits its record to the outbox: until the sequencer
    moves it into the log, that record is what covers the missing documents."""
    admin = history.admin
    old_order = min(history.old_orders.values())
    recent_view = min(history.recent_views.values())
    record = build_document(
        tenant_id=admin.tenant_id,
        action=ERASE_ACTION,
        spec=builtin_action(ERASE_ACTION),  # type: ignore[arg-type]
        data={
            "categories": [
                {
                    "category": "change",
                    "cutoff": (NOW - timedelta(days=30)).isoformat(),
                    "leaf_ranges": [[old_order, old_order], [recent_view, recent_view]],
                }
            ]
        },
    )
    engine = create_async_engine(settings.effective_database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(AuditOutbox.__table__.insert(), outbox_rows([record]))
            await connection.execute(
                text("DELETE FROM audit_payloads WHERE tenant_id = :t AND leaf_index IN (:a, :b)"),
                {"t": admin.tenant_id, "a": old_order, "b": recent_view},
            )
    finally:
        await engine.dispose()
    async with unit_of_work(app) as session:
        report = await verify_tenant(session, admin.tenant_id)
    assert report.erased == 1  # the old order: older than the cutoff
    assert report.problems == [f"event {recent_view}: its document was erased before it expired"]
    assert report.first_divergent_event == recent_view


async def test_verify_reads_one_moment_of_a_log_that_grows_meanwhile(
    app: FastAPI, history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``keel audit verify`` next to a running server: events sequenced while it reads are
    neither events deleted at the end nor nodes over no event."""
    admin, audit = history.admin, app.state.keel.resources[AUDIT_RESOURCE]
    check_nodes = verify._check_nodes

    async def appending_meanwhile(*args: Any) -> None:
        spec = ActionSpec("shop.page.view", "A page viewed.", "access")
        documents = [
            build_document(tenant_id=admin.tenant_id, action=spec.name, spec=spec) for _ in range(3)
        ]
        await audit.append(admin.tenant_id, documents)
        await check_nodes(*args)

    monkeypatch.setattr(verify, "_check_nodes", appending_meanwhile)
    async with unit_of_work(app) as session:
        report = await verify_tenant(session, admin.tenant_id)
    assert report.ok, report.problems


async def cli(settings: Settings, tmp_path: Path, *args: str) -> Any:
    """``keel audit <args>``, in-process (:mod:`support.keel_cli`)."""
    env = keel_env(
        KEEL_DATABASE_URL=settings.effective_database_url,
        KEEL_AUDIT__RETENTION_DAYS=json.dumps({"access": ACCESS_DAYS}),
    )
    return await invoke_keel_async("audit", *args, cwd=tmp_path, env=env)


async def test_keel_audit_retention_erases_and_verify_catches_only_a_document_deleted_otherwise(
    settings: Settings, tmp_path: Path, history: History
) -> None:
    slug = history.admin.tenant_slug
    dry = await cli(settings, tmp_path, "retention", "--tenant", slug, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["erased"] == 6

    done = await cli(settings, tmp_path, "retention", "--tenant", slug)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{slug}: erased 6 documents (access: 6 before ")

    # A document deleted without an erasure record (DELETE is allowed on this table): it
    # is the one problem ``keel audit verify`` reports, the erased ones are accepted.
    old_order = min(history.old_orders.values())
    engine = create_async_engine(settings.effective_database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("DELETE FROM audit_payloads WHERE tenant_id = :t AND leaf_index = :i"),
                {"t": history.admin.tenant_id, "i": old_order},
            )
    finally:
        await engine.dispose()
    tampered = await cli(settings, tmp_path, "verify", "--tenant", slug, "--json")
    assert tampered.returncode == 1
    report = json.loads(tampered.stdout)
    assert report["problems"] == [f"event {old_order}: its document is missing"]
    assert (report["first_divergent_event"], report["erased"]) == (old_order, 6)


def test_bad_retention_input_exits_2_with_one_line(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'keel.db'}"
    periods = {"KEEL_AUDIT__RETENTION_DAYS": '{"access": 1}'}
    cases = [
        (["--tenant", "no-such-tenant"], periods, "keel: no tenant 'no-such-tenant'"),
        (["--days", "3"], periods, "keel: No such option: --days"),
        (
            [],
            {"KEEL_AUDIT__RETENTION_DAYS": "{access: 1}"},
            "keel: invalid settings: KEEL_AUDIT__RETENTION_DAYS: must be a JSON object",
        ),
    ]
    results = [
        invoke_keel(
            "audit",
            "retention",
            *args,
            cwd=tmp_path,
            env=keel_env(KEEL_DATABASE_URL=database, **variables),
        )
        for args, variables, _ in cases
    ]
    for result, (_, _, message) in zip(results, cases, strict=True):
        assert result.returncode == 2, (result.stdout, result.stderr)
        assert result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
