"""The scan: the ``storage.scan`` task on the jobs engine, a job per stored version of a
bucket that scans.

The handler streams the version's bytes (decrypted, segment by segment) to clamd's
``INSTREAM`` and records the verdict in one transaction:

- **clean**: the version becomes readable (``clean_at``); the bucket's ``on_clean`` job is
  enqueued for the fleet; in a non-versioned bucket the older versions go (rows, usage, then
  blobs), unless a lock, a legal hold or the minimum retention keeps them;
- **infected**: quarantined for good, ``reason`` the signature's name (for the owner only);
- **the scan failed** (clamd unreachable, timed out, over its limits, no scanner configured):
  the job runs again with the engine's backoff, and after its last attempt the version is
  ``rejected`` ("scan failed: ..."). A failure is never taken for clean.

A version no longer ``pending`` (a second run of the job, a version deleted meanwhile) is
left alone, so the handler is safe to run twice. A process killed mid-scan leaves the
version pending, hence unreadable; the job's lease lapses and it runs again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from keel.core.audit import record_event
from keel.core.context import AppContext, RetryTask, TaskRun
from keel.core.db import utcnow
from keel.core.lazy import lazy_module
from keel.core.logging import get_logger
from keel.core.tenancy import bind_tenant
from keel.storage.backends import BackendUnavailable, BlobNotFound
from keel.storage.metrics import storage_metrics
from keel.storage.models import ObjectState, StorageBucket, StorageObject
from keel.storage.scanning import ScanFailed, Verdict
from keel.storage.service import blobio, objects
from keel.storage.service.runtime import storage_runtime

log = get_logger(__name__)

#: The longest reason kept on a rejected version.
MAX_REASON_CHARS = 500

if TYPE_CHECKING:
    from keel.storage import encryption
else:  # Tink on first use: a tenth of a second of every start otherwise
    encryption = lazy_module("keel.storage.encryption")


async def _pending_version(
    context: AppContext, tenant_id: str, version_id: str
) -> StorageObject | None:
    async with context.database.session() as session:
        bind_tenant(session, tenant_id)
        version = await session.get(StorageObject, version_id)
    if version is None or version.state != ObjectState.pending:
        return None
    return version


async def _scan(context: AppContext, version: StorageObject) -> Verdict:
    """clamd's verdict on the version's plaintext; ``ScanFailed`` when there is none."""
    clamd = storage_runtime(context).clamd
    if clamd is None:
        raise ScanFailed("no scanner is configured (KEEL_STORAGE__CLAMD_ADDRESS)")
    try:
        return await clamd.scan(blobio.read_version(context, version))
    except BackendUnavailable as exc:
        raise ScanFailed(f"the blob store did not answer ({exc})") from None


async def scan_version(context: AppContext, run: TaskRun, args: Any) -> dict[str, Any]:
    """The ``storage.scan`` task: scan the version ``args["version_id"]`` and record the
    verdict (see the module's text)."""
    version_id = str(args["version_id"])
    version = await _pending_version(context, run.tenant_id, version_id)
    if version is None:
        return {"version_id": version_id, "outcome": "skipped"}
    started = time.perf_counter()
    try:
        verdict = await _scan(context, version)
    except ScanFailed as exc:
        # Over clamd's stream limit, another attempt cannot pass: rejected at once.
        if exc.retryable and not run.is_last_attempt:
            raise RetryTask(f"scan failed: {exc}") from None
        outcome = await _record(
            context,
            run.tenant_id,
            version.bucket_id,
            version_id,
            ObjectState.rejected,
            f"scan failed: {exc}",
        )
    except BlobNotFound:
        outcome = await _record(
            context,
            run.tenant_id,
            version.bucket_id,
            version_id,
            ObjectState.rejected,
            "the stored bytes are missing",
        )
    except encryption.DecryptionFailed as exc:
        outcome = await _record(
            context,
            run.tenant_id,
            version.bucket_id,
            version_id,
            ObjectState.rejected,
            f"the stored bytes do not authenticate ({exc})",
        )
    else:
        storage_metrics(context).scan_seconds.observe(time.perf_counter() - started)
        if verdict.clean:
            outcome = await _record(
                context, run.tenant_id, version.bucket_id, version_id, ObjectState.clean, None
            )
        else:
            outcome = await _record(
                context,
                run.tenant_id,
                version.bucket_id,
                version_id,
                ObjectState.infected,
                verdict.signature or "infected",
            )
    return {"version_id": version_id, "outcome": outcome}


async def _record(
    context: AppContext,
    tenant_id: str,
    bucket_id: str,
    version_id: str,
    state: ObjectState,
    reason: str | None,
) -> str:
    """Record the verdict unless the version is no longer pending; the outcome."""
    gone: list[str] = []
    async with context.database.session() as session:
        bind_tenant(session, tenant_id)
        # The bucket's lock first, then the version's (see objects.lock_bucket).
        await objects.lock_bucket(session, bucket_id)
        version = await session.get(
            StorageObject, version_id, with_for_update=True, populate_existing=True
        )
        if version is None or version.state != ObjectState.pending:
            return "skipped"
        bucket = await session.get(StorageBucket, version.bucket_id)
        assert bucket is not None  # a bucket with versions is never deleted
        now = utcnow()
        version.state = state
        version.reason = reason[:MAX_REASON_CHARS] if reason else None
        if state == ObjectState.clean:
            version.clean_at = now
        await session.flush()
        record_event(
            session,
            tenant_id=tenant_id,
            action="storage.object.scan",
            actor_type="system",
            actor_id="storage.scan",
            target_type="storage_object",
            target_id=version.id,
            reason=version.reason,
            data={
                "bucket": bucket.name,
                "key": version.key,
                "version_id": version.id,
                "verdict": state.value,
                "size": version.size,
                "content_type": version.content_type,
            },
        )
        if state == ObjectState.clean:
            gone = await objects.became_clean(session, tenant_id, bucket, version)
    storage_metrics(context).verdict(state.value)  # type: ignore[arg-type]
    log.info("storage.scanned", version_id=version_id, verdict=state.value)
    await blobio.delete_blobs(context, gone)
    return state.value
