"""The enqueue spool: while Keel is unreachable enqueues are journaled locally and succeed;
once Keel answers they are replayed in order, each once (its own ``Idempotency-Key``)."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import FastAPI

from keel_client.jobs import JobsClient
from tests.client.jobs.conftest import quick_client, serving
from tests.support.keel_process import free_port
from tests.support.tenants import TenantAdmin


async def all_jobs(jobs: JobsClient, queue: str) -> list[object]:
    args: list[object] = []
    after: str | None = None
    while True:
        page = await jobs.list_jobs(queue, limit=500, after=after)
        args += [job.args for job in page.jobs]
        if page.next is None:
            return args
        after = page.next


async def test_with_keel_stopped_1000_enqueues_succeed_and_arrive_once_in_order(
    app: FastAPI, admin: TenantAdmin, tmp_path: Path, queue: str
) -> None:
    """Done when of issue 18 (SDK spool). Real HTTP on a port Keel is not yet listening on."""
    port = free_port()
    async with quick_client(f"http://127.0.0.1:{port}", admin.api_key) as jobs:
        # fsync=False: the same journal without a disk flush per job (3 s of CI for 1,000).
        spool = await jobs.open_spool(
            tmp_path / "spool", fsync=False, backoff_base=0.05, backoff_max=0.2
        )
        started = time.monotonic()
        refs = [await jobs.enqueue("step", n, queue=queue) for n in range(1000)]
        spooled_in = time.monotonic() - started
        assert all(ref.is_spooled for ref in refs)
        assert spool.pending == 1000
        async with serving(app, port):
            started = time.monotonic()
            assert await jobs.flush(timeout=20.0)
            replayed_in = time.monotonic() - started
            assert await all_jobs(jobs, queue) == [[n] for n in range(1000)]
    print(f"spooled 1000 in {spooled_in:.2f} s, replayed in {replayed_in:.2f} s")
