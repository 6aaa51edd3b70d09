"""Events recorded "now" (``record_event_now``): appended in group commits, or with the unit
of work's commit where appending at once cannot be; appends from several processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.audit.models import AuditEvent
from keel.audit.service import AUDIT_RESOURCE, AuditLog
from keel.audit.service.verify import Report, verify_tenant
from keel.audit.service.writer import MAX_MERGE_DELAY
from keel.core.audit import ActionSpec, AuditOutbox, build_document, outbox_rows, record_event_now
from keel.core.db import Database
from keel.core.tenancy import Tenant, bind_tenant
from keel.settings import Settings
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.tenants import TenantAdmin


async def issue_event(session: AsyncSession, tenant_id: str) -> dict[str, Any]:
    """A token-issued event, recorded now."""
    return await record_event_now(
        session,
        tenant_id=tenant_id,
        action="auth.token.issue",
        actor_type="service_account",
        actor_id="sa-1",
        data={"grant_type": "client_credentials", "scope": ""},
    )


@pytest.fixture
async def there(app: FastAPI, settings: Settings) -> AsyncIterator[AuditLog]:
    """The log as another process sees it: an engine of its own, sharing no lock with this
    one but the database's."""
    elsewhere = Database.from_settings(settings)
    try:
        yield AuditLog(app.state.keel.keyring, elsewhere.session)
    finally:
        await elsewhere.dispose()


async def verified(app: FastAPI, tenant_id: str) -> Report:
    """The report of ``keel audit verify`` on the tenant's log, which must be clean."""
    async with unit_of_work(app) as session:
        report = await verify_tenant(session, tenant_id)
    assert report.ok, report.problems
    return report


INVOICE_PAID = ActionSpec("billing.invoice.pay", "An invoice paid.", "finance")


def invoices(tenant_id: str, count: int) -> list[dict[str, Any]]:
    """``count`` documents of invoices paid, each with an id of its own."""
    return [
        build_document(
            tenant_id=tenant_id,
            action=INVOICE_PAID.name,
            spec=INVOICE_PAID,
            actor={"type": "user", "id": "u-1"},
            target={"type": "invoice", "id": f"inv-{n}"},
        )
        for n in range(count)
    ]


async def test_an_event_recorded_now_is_in_the_log_when_the_call_returns(
    app: FastAPI, admin: TenantAdmin
) -> None:
    async with unit_of_work(app) as session:
        document = await issue_event(session, admin.tenant_id)
        audit = app.state.keel.resources[AUDIT_RESOURCE]
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
            document = await issue_event(session, admin.tenant_id)
    events = await audit_events(app, admin.tenant_id, action_prefix="auth.token.issue")
    assert [event.document["id"] for event in events] == [document["id"]]


async def test_two_processes_appending_to_one_log_at_once_both_land(
    app: FastAPI, there: AuditLog, admin: TenantAdmin
) -> None:
    """Another engine is another process: it shares no lock in this one, only the database's
    (SQLite's write lock, PostgreSQL's advisory lock). Rounds of appends of mixed sizes at
    once: some go on a frontier gone stale and lose, with an integrity error or, on
    PostgreSQL, a deadlock against an append inserting the same rows in another order; each
    is retried, and every event lands once."""
    here = app.state.keel.resources[AUDIT_RESOURCE]
    sizes = [1, 3, 20, 2, 5, 40, 1, 1, 7, 2, 3, 9]
    indexes: list[int] = []
    for _ in range(10):
        rounds = await asyncio.gather(
            *(
                log.append(admin.tenant_id, invoices(admin.tenant_id, size))
                for log, size in zip((here, there) * 6, sizes, strict=True)
            )
        )
        indexes += [receipt.leaf_index for receipts in rounds for receipt in receipts]
    assert len(set(indexes)) == len(indexes) == 10 * sum(sizes)
    async with unit_of_work(app) as session:
        head = await here.latest_head(session, admin.tenant_id)
    assert head is not None
    assert head.tree_size > max(indexes)
    await verified(app, admin.tenant_id)


async def test_the_sequencer_and_another_process_appending_at_once_both_land(
    app: FastAPI, there: AuditLog, admin: TenantAdmin
) -> None:
    """The sequencer moves the outbox under the lock while another process appends on its
    frontier: should the sequencer lose an index (or a deadlock), it sequences the batch
    again rather than leave it for the next sweep with an error logged."""
    here = app.state.keel.resources[AUDIT_RESOURCE]
    queued: list[str] = []
    for _ in range(8):
        documents = invoices(admin.tenant_id, 30)
        queued += [document["id"] for document in documents]
        async with app.state.keel.database.engine.begin() as connection:
            await connection.execute(AuditOutbox.__table__.insert(), outbox_rows(documents))
        await asyncio.gather(
            here.sequence_outbox(admin.tenant_id),
            *(there.append(admin.tenant_id, invoices(admin.tenant_id, 3)) for _ in range(3)),
        )
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        stored = await session.execute(
            select(AuditEvent.event_id).where(AuditEvent.event_id.in_(queued))
        )
        assert len(set(stored.scalars())) == len(queued)
        left = await session.execute(
            select(AuditOutbox.event_id).where(AuditOutbox.event_id.in_(queued))
        )
        assert list(left.scalars()) == []
    await verified(app, admin.tenant_id)


async def test_heads_signed_while_another_process_appends_stay_in_order(
    app: FastAPI, there: AuditLog, admin: TenantAdmin
) -> None:
    """A head signed for the tree as it is (the group writer's, the heartbeat's) while another
    process appends on its frontier: no head may be stored after a head of a larger tree,
    which ``keel audit verify`` would rightly report as a log shown shrinking."""
    here = app.state.keel.resources[AUDIT_RESOURCE]
    await there.append(admin.tenant_id, invoices(admin.tenant_id, 1))  # its frontier known

    async def sign_heads() -> None:
        for _ in range(40):
            await here.sign_current_head(admin.tenant_id)

    async def append() -> None:
        for _ in range(40):
            await there.append(admin.tenant_id, invoices(admin.tenant_id, 2))

    await asyncio.gather(sign_heads(), append(), append())
    async with unit_of_work(app) as session:
        sizes = [head.tree_size for head in await here.heads(session, admin.tenant_id)]
    assert sizes == sorted(sizes)
    await verified(app, admin.tenant_id)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_append_on_its_frontier_waits_for_whoever_reads_the_tree(
    app: FastAPI, there: AuditLog, admin: TenantAdmin
) -> None:
    """On PostgreSQL an append on a remembered frontier reads no lock of its own, but takes
    the log's advisory lock shared in its one statement: a head signed, or a batch
    sequenced, under the lock held exclusively is never overtaken by it."""
    from sqlalchemy import text

    from keel.audit.service.storage import tenant_lock_key

    await there.append(admin.tenant_id, invoices(admin.tenant_id, 1))  # its frontier known
    async with app.state.keel.database.engine.connect() as holder:
        await holder.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": tenant_lock_key(admin.tenant_id)}
        )
        appending = asyncio.create_task(there.append(admin.tenant_id, invoices(admin.tenant_id, 2)))
        await asyncio.sleep(0.5)
        assert not appending.done()
        await holder.rollback()
    receipts = await asyncio.wait_for(appending, 10)
    assert len(receipts) == 2


async def test_an_append_after_this_process_own_reads_no_tree_node(
    app: FastAPI, admin: TenantAdmin
) -> None:
    """The frontier this process committed is remembered: the next append, finding the tree
    at that size, reads no node; after another process appended, it reads them again."""
    audit = app.state.keel.resources[AUDIT_RESOURCE]

    def documents() -> list[dict[str, Any]]:
        return invoices(admin.tenant_id, 3)

    node_reads: list[str] = []
    engine = app.state.keel.database.engine.sync_engine

    def capture(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "FROM audit_nodes" in statement:
            node_reads.append(statement)

    # The tenant's own events (its admin's creation) are sequenced first, here: the
    # background sweep would otherwise append them in this process at any moment, and an
    # append of this process after the other one's remembers the grown tree's frontier.
    await audit.sequence_outbox(admin.tenant_id)
    await audit.append(admin.tenant_id, documents())
    sqlalchemy_event.listen(engine, "before_cursor_execute", capture)
    try:
        await audit.append(admin.tenant_id, documents())
        assert node_reads == []
        elsewhere = Database.from_settings(app.state.keel.settings)
        try:
            await AuditLog(app.state.keel.keyring, elsewhere.session).append(
                admin.tenant_id, documents()
            )
        finally:
            await elsewhere.dispose()
        node_reads.clear()
        receipts = await audit.append(admin.tenant_id, documents())
        assert node_reads  # the tree grew elsewhere: its frontier is read
    finally:
        sqlalchemy_event.remove(engine, "before_cursor_execute", capture)
    async with unit_of_work(app) as session:
        head = await audit.latest_head(session, admin.tenant_id)
    assert head is not None
    assert head.tree_size > receipts[-1].leaf_index


async def test_events_recorded_now_get_a_signed_head_within_the_merge_delay(
    app: FastAPI, admin: TenantAdmin
) -> None:
    """Group-committed batches sign no head of their own: the writer signs one covering them
    within MAX_MERGE_DELAY, and a reader asking for the head meanwhile gets one signed anew."""
    audit = app.state.keel.resources[AUDIT_RESOURCE]
    async with unit_of_work(app) as session:
        first = await issue_event(session, admin.tenant_id)
    async with unit_of_work(app) as session:
        index = (await audit.event(session, admin.tenant_id, first["id"])).leaf_index
        fresh = await audit.fresh_head(session, admin.tenant_id)
    assert fresh is not None
    assert fresh.tree_size > index

    async with unit_of_work(app) as session:
        second = await issue_event(session, admin.tenant_id)
    async with unit_of_work(app) as session:
        index = (await audit.event(session, admin.tenant_id, second["id"])).leaf_index
    async with asyncio.timeout(MAX_MERGE_DELAY + 3):
        while True:  # the writer's own head, without anyone asking
            async with unit_of_work(app) as session:
                head = await audit.latest_head(session, admin.tenant_id)
            if head is not None and head.tree_size > index:
                break
            await asyncio.sleep(0.05)


async def test_a_log_appended_by_both_paths_and_two_processes_verifies(
    app: FastAPI, there: AuditLog, admin: TenantAdmin
) -> None:
    """Appends planned on this process's frontier (on SQLite, one call on the connection's
    thread), appends that find the tree grown by another process, and events recorded now
    with deferred heads make one log that `keel audit verify` accepts."""
    here = app.state.keel.resources[AUDIT_RESOURCE]

    def documents(count: int) -> list[dict[str, Any]]:
        return invoices(admin.tenant_id, count)

    for round_ in range(6):
        await here.append(admin.tenant_id, documents(round_ + 1), sign=round_ % 2 == 0)
        await here.append(admin.tenant_id, documents(3))
        if round_ % 3 == 2:
            await there.append(admin.tenant_id, documents(2))
        async with unit_of_work(app) as session:
            await issue_event(session, admin.tenant_id)
    repeated = documents(1)
    first = await here.append(admin.tenant_id, repeated)
    again = await here.append(admin.tenant_id, repeated)  # stored: its first receipt
    assert again == first
    async with unit_of_work(app) as session:
        head = await here.fresh_head(session, admin.tenant_id)
    report = await verified(app, admin.tenant_id)
    assert head is not None
    assert report.tree_size == head.tree_size


@pytest.mark.postgres
async def test_an_append_that_loses_a_deadlock_is_retried(empty_postgres_url: str) -> None:
    """Two appends at once, one without the lock, may insert the same rows in other orders:
    PostgreSQL then aborts one as a deadlock, which :meth:`AuditLog.append` must retry as it
    retries a taken index, not fail. A real deadlock, made on purpose, is such a race."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.ext.asyncio import create_async_engine

    from keel.audit.service.storage import lost_a_race

    engine = create_async_engine(empty_postgres_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE rows (id int PRIMARY KEY, n int)"))
            await connection.execute(text("INSERT INTO rows VALUES (1, 0), (2, 0)"))
        both_hold_one = asyncio.Barrier(2)
        update = text("UPDATE rows SET n = 1 WHERE id = :id")

        async def update_both(first: int, second: int) -> None:
            async with engine.begin() as connection:
                await connection.execute(update, {"id": first})
                await both_hold_one.wait()
                await connection.execute(update, {"id": second})

        outcomes = await asyncio.gather(
            update_both(1, 2), update_both(2, 1), return_exceptions=True
        )
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        assert len(errors) == 1
        assert isinstance(errors[0], DBAPIError)
        assert lost_a_race(errors[0])
        assert not lost_a_race(RuntimeError("another failure"))
        async with engine.begin() as connection:
            with pytest.raises(DBAPIError) as division:
                await connection.execute(text("SELECT 1/0"))
        assert not lost_a_race(division.value)
    finally:
        await engine.dispose()
