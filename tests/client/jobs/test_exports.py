"""``keel_client.jobs``'s public names are exactly the curated list; the outbox's need
SQLAlchemy and are imported only when asked for; ``Keel`` and ``SyncKeel`` have ``.jobs``."""

from __future__ import annotations

import subprocess
import sys

from keel_client import Keel, SyncKeel
from keel_client.jobs import JobsClient, JobState, SyncJobsClient
from tests.support.tenants import TenantAdmin

EXPECTED = {
    "DEFAULT_QUEUE", "OUTBOX_TABLE", "Ack", "AckAnswer", "EnqueueOptions", "FetchAnswer",
    "JobSettings", "HeartbeatAnswer", "RefusedAck",
    "Job", "JobBatchRef", "JobContext",
    "JobError", "JobPage", "JobRef", "JobSpool", "JobState", "JobsClient", "Lease", "NewJob",
    "Retry",
    "Outbox", "OutboxJob", "OutboxRelay", "RejectedJob", "SpoolError", "SpoolFullError",
    "SpoolLockedError", "SyncJobsClient", "Task", "Worker", "WorkerStats", "current_job",
    "error_text", "is_rejected", "is_unreachable", "outbox_metadata", "traceback_text",
}  # fmt: skip


def test_the_public_names_are_the_curated_list() -> None:
    import keel_client.jobs

    assert set(keel_client.jobs.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(keel_client.jobs, name) is not None


def test_importing_the_package_does_not_import_sqlalchemy() -> None:
    code = "import sys, keel_client.jobs; print('sqlalchemy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stdout.strip() == "False"


async def test_keel_jobs_shares_the_pool(keel_url: str, admin: TenantAdmin, queue: str) -> None:
    async with Keel(keel_url, admin.api_key) as keel:
        assert isinstance(keel.jobs, JobsClient)
        assert keel.jobs.api is keel.api
        ref = await keel.jobs.enqueue("send_report", 1, queue=queue)
        assert ref.job is not None
        assert ref.job.state is JobState.AVAILABLE


async def test_sync_keel_jobs_blocks(keel_url: str, admin: TenantAdmin, queue: str) -> None:
    import asyncio

    def enqueue_and_read() -> JobState:
        with SyncKeel(keel_url, admin.api_key) as keel:
            assert isinstance(keel.jobs, SyncJobsClient)
            ref = keel.jobs.enqueue("send_report", 1, queue=queue)
            return keel.jobs.get(ref.id or "").state

    # The served Keel runs on this loop: the blocking face runs on a thread meanwhile.
    assert await asyncio.to_thread(enqueue_and_read) is JobState.AVAILABLE
