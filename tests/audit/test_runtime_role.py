"""Keel's runtime database role needs neither UPDATE nor DELETE on the log's tables: a role
without them serves the audit log end to end, and cannot change it."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from keel.app import create_app
from keel.audit.service import AUDIT_RESOURCE, AuditLog
from keel.audit.service.verify import verify_tenant
from keel.settings import Settings
from tests.support.apps import lifespan_of
from tests.support.keel_process import TEST_MASTER_KEY
from tests.support.tenants import make_tenant_admin

LOG_TABLES = ("audit_events", "audit_nodes", "audit_tree_heads")


@pytest.mark.postgres
async def test_the_log_runs_on_a_role_without_update_or_delete_on_it(
    postgres_url: str, tmp_path: Path
) -> None:
    role = f"keel_runtime_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(postgres_url)
    async with admin.begin() as connection:
        for statement in (
            f"CREATE ROLE {role} LOGIN",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
            f"REVOKE UPDATE, DELETE, TRUNCATE ON {', '.join(LOG_TABLES)} FROM {role}",
        ):
            await connection.execute(text(statement))
    url = make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
    settings = Settings(
        database_url=url, data_dir=tmp_path, master_key=TEST_MASTER_KEY, redis_url=None
    )
    try:
        app = create_app(settings)
        async with lifespan_of(app):
            tenant = await make_tenant_admin(app)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as http:
                registered = await http.put(
                    "/audit/v1/actions/billing.invoice.pay",
                    headers=tenant.headers,
                    json={"description": "Paid."},
                )
                assert registered.status_code == 201, registered.text
                events = [{"action": "billing.invoice.pay", "data": {"n": n}} for n in range(20)]
                appended = await http.post(
                    "/audit/v1/events/batch", headers=tenant.headers, json={"events": events}
                )
                assert appended.status_code == 200, appended.text
            audit = app.state.keel.resources[AUDIT_RESOURCE]
            assert isinstance(audit, AuditLog)
            await audit.sequence_outbox(tenant.tenant_id)  # Keel's own events: outbox deletes
            async with app.state.keel.database.session() as session:
                report = await verify_tenant(session, tenant.tenant_id)
            assert report.ok, report.problems
            assert report.tree_size > 20

        runtime = create_async_engine(url)
        try:
            for statement in (
                "UPDATE audit_events SET action = 'x.y.z'",
                "DELETE FROM audit_nodes",
                "DELETE FROM audit_tree_heads",
            ):
                with pytest.raises(DBAPIError, match="permission denied"):
                    async with runtime.begin() as connection:
                        await connection.execute(text(statement))
        finally:
            await runtime.dispose()
    finally:
        async with admin.begin() as connection:
            await connection.execute(text(f"DROP OWNED BY {role}"))
            await connection.execute(text(f"DROP ROLE {role}"))
        await admin.dispose()
