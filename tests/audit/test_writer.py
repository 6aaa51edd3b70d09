"""Events recorded "now" (``record_event_now``): appended in group commits, or with the unit
of work's commit where appending at once cannot be."""

from __future__ import annotations

import asyncio
import uuid

from fastapi import FastAPI

from auth.conftest import TenantAdmin, audit_events, unit_of_work
from keel.core.audit import record_event_now
from keel.core.tenancy import Tenant


async def test_an_event_recorded_now_is_in_the_log_when_the_call_returns(
    app: FastAPI, admin: TenantAdmin
) -> None:
    async with unit_of_work(app) as session:
        document = await record_event_now(
            session,
            tenant_id=admin.tenant_id,
            action="auth.token.issue",
            actor_type="service_account",
            actor_id="sa-1",
            data={"grant_type": "client_credentials", "scope": ""},
        )
        audit = app.state.keel.resources["audit"]
        stored = await audit.event(session, admin.tenant_id, document["id"])
    assert stored.leaf_index >= 0


async def test_after_a_write_the_event_goes_with_the_commit_and_nothing_waits(
    app: FastAPI, admin: TenantAdmin
) -> None:
    """On SQLite a unit of work that wrote holds the writer's turn an append would wait for;
    the event then goes with the commit instead, atomically with the write."""
    slug = f"t-{uuid.uuid4().hex[:10]}"
    async with unit_of_work(app) as session:
        session.add(Tenant(slug=slug, name="written first"))
        await session.flush()
        async with asyncio.timeout(2):
            document = await record_event_now(
                session,
                tenant_id=admin.tenant_id,
                action="auth.token.issue",
                actor_type="service_account",
                actor_id="sa-1",
                data={"grant_type": "client_credentials", "scope": ""},
            )
    events = await audit_events(app, admin.tenant_id, action_prefix="auth.token.issue")
    assert [event.document["id"] for event in events] == [document["id"]]
