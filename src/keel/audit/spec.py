"""The audit service as Keel mounts and runs it."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy import select

from keel.audit.models import AuditSigningKey
from keel.audit.service import AUDIT_RESOURCE, AuditLog
from keel.audit.service.writer import GroupWriter
from keel.core.audit import on_recorded, use_event_writer
from keel.core.context import AppContext
from keel.core.db import DatabaseUnavailable
from keel.core.logging import get_logger
from keel.core.services import ServiceSpec

log = get_logger(__name__)

#: Outboxes are swept this often even when no commit woke the sequencer (another process
#: recorded, or a wake-up was lost).
SWEEP_SECONDS = 1.0
#: A woken sequencer waits this long for more commits: one tree update and one signed head
#: then cover every event recorded meanwhile.
LINGER_SECONDS = 0.02
#: A log's head is signed again when its latest is older than this, appends or not.
HEARTBEAT_SECONDS = 600.0
#: Expired documents are erased this often.
RETENTION_SECONDS = 24 * 3600.0


async def start_audit(context: AppContext) -> None:
    audit = AuditLog(context.keyring, context.database.session)
    async with context.database.session() as session:
        await audit.signing_key(session)  # created on the first start, sealed at rest
    context.resources[AUDIT_RESOURCE] = audit


async def audit_ready(context: AppContext) -> None:
    """The log's tables answer and its signing key exists (``keel doctor`` runs this too,
    without starting the service)."""
    async with context.database.session() as session:
        if await session.scalar(select(AuditSigningKey.key_id).limit(1)) is None:
            raise RuntimeError("the audit log has no signing key yet")


async def sequence_recorded_events(context: AppContext) -> None:
    """Sequence the outbox into the log, woken by every commit that recorded events."""
    audit = context.resources[AUDIT_RESOURCE]
    assert isinstance(audit, AuditLog)
    woken = asyncio.Event()
    loop = asyncio.get_running_loop()
    tenants: set[str] = set()

    def wake(recorded: set[str]) -> None:  # runs inside a commit: only note and signal
        tenants.update(recorded)
        loop.call_soon_threadsafe(woken.set)

    undo = on_recorded(wake)
    try:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation that stops this loop when it lands as the timeout fires.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SWEEP_SECONDS):
                    await woken.wait()
            if tenants:  # let the commits right behind this one join its batch
                await asyncio.sleep(LINGER_SECONDS)
            woken.clear()
            try:
                pending = set(tenants) or set(await audit.tenants_with_outbox())
            except DatabaseUnavailable:  # noted where it was met; the next sweep looks again
                continue
            except Exception:  # a failed round must not end the loop
                log.exception("audit.sequence.failed")
                continue
            tenants.clear()
            for tenant_id in sorted(pending):
                try:
                    await audit.sequence_outbox(tenant_id)
                except DatabaseUnavailable:  # the rows stay for the next sweep
                    break
                except Exception:  # a failed round must not end the loop; the rows stay
                    log.exception("audit.sequence.failed", tenant=tenant_id)
    finally:
        undo()


async def write_events_now(context: AppContext) -> None:
    """Group-commit the events recorded with ``record_event_now`` in this process."""
    audit = context.resources[AUDIT_RESOURCE]
    assert isinstance(audit, AuditLog)
    writer = GroupWriter(audit)
    undo = use_event_writer(context.database.engine, writer)
    try:
        await writer.run()
    finally:
        undo()


async def sign_heads_on_a_timer(context: AppContext) -> None:
    """Sign a fresh head of every log whose latest head is older than ``HEARTBEAT_SECONDS``:
    even a log nobody writes to shows, by a recent timestamp, that it is alive and unforked."""
    audit = context.resources[AUDIT_RESOURCE]
    assert isinstance(audit, AuditLog)
    while True:
        try:
            for tenant_id in await audit.tenants_with_stale_heads(HEARTBEAT_SECONDS):
                await audit.sign_current_head(tenant_id)
        except Exception:  # a failed round must not end the loop
            log.exception("audit.heartbeat.failed")
        await asyncio.sleep(HEARTBEAT_SECONDS / 10)


async def erase_expired_payloads_daily(context: AppContext) -> None:
    """Retention (``KEEL_AUDIT__RETENTION_DAYS``): erase expired documents once a day."""
    from keel.audit.service.retention import run_retention

    while True:
        try:
            await run_retention(context)
        except Exception:  # a failed round must not end the loop; the next one retries
            log.exception("audit.retention.failed")
        await asyncio.sleep(RETENTION_SECONDS)


service = ServiceSpec(
    name="audit",
    router="keel.audit.router:build_router",
    ready_check=audit_ready,
    startup=start_audit,
    companions=(sequence_recorded_events, write_events_now),
    background=(sign_heads_on_a_timer, erase_expired_payloads_daily),
    model_modules=("keel.audit.models",),
)
