"""The enqueue spool: while Keel is unreachable enqueues are journaled locally and succeed;
once Keel answers they are replayed in order, each once (its own ``Idempotency-Key``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from fastapi import FastAPI

from keel_client.http import TransportError
from keel_client.jobs import JobsClient, JobSpool, RejectedJob, SpoolLockedError
from keel_client.jobs._spool import BATCH_PATH, SpooledRequest
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


async def spool_while_down(admin: TenantAdmin, directory: Path, queue: str, numbers: range) -> None:
    """Enqueue ``numbers`` with Keel unreachable: they wait in the spool at ``directory``."""
    async with quick_client(f"http://127.0.0.1:{free_port()}", admin.api_key) as down:
        await down.open_spool(directory, fsync=False, backoff_base=60.0, backoff_max=60.0)
        for n in numbers:
            assert (await down.enqueue("step", n, queue=queue)).is_spooled
        await down.aclose(flush_timeout=0)


async def test_a_group_sent_again_after_a_crash_is_the_same_jobs(
    jobs: JobsClient, admin: TenantAdmin, tmp_path: Path, queue: str
) -> None:
    """The replay sent a group, Keel stored it, the process died before acknowledging it;
    more jobs were spooled since. The next replay sends the same group under the same key."""
    directory = tmp_path / "spool"
    await spool_while_down(admin, directory, queue, range(20))
    group_sent = asyncio.Event()

    async def send_then_die(request: SpooledRequest) -> None:
        await jobs._send(request)
        if request.path == BATCH_PATH:
            group_sent.set()
            await asyncio.sleep(3600)  # "killed" here: the lines are never acknowledged

    dying = JobSpool(directory, send=send_then_die, fsync=False)
    await dying.start()
    await asyncio.wait_for(group_sent.wait(), 10.0)
    await dying.aclose()
    await spool_while_down(admin, directory, queue, range(20, 25))

    replay = JobSpool(directory, send=jobs._send, fsync=False)
    await replay.start()
    assert await replay.flush(timeout=10.0)
    await replay.aclose()
    assert await all_jobs(jobs, queue) == [[n] for n in range(25)]


async def test_a_refused_job_in_a_group_is_dropped_alone(
    jobs: JobsClient, admin: TenantAdmin, tmp_path: Path, queue: str
) -> None:
    async with quick_client(f"http://127.0.0.1:{free_port()}", admin.api_key) as down:
        await down.open_spool(tmp_path / "spool", fsync=False, backoff_base=60.0)
        await down.enqueue("step", 0, queue=queue)
        await down.enqueue("not a task name!", queue=queue)
        await down.enqueue("step", 2, queue=queue)
        await down.aclose(flush_timeout=0)
    refused: list[RejectedJob] = []
    replay = JobSpool(tmp_path / "spool", send=jobs._send, fsync=False,
                      on_rejected=refused.append)  # fmt: skip
    await replay.start()
    assert await replay.flush(timeout=10.0)
    await replay.aclose()
    assert [(r.status, r.request.body["task"]) for r in refused] == [(422, "not a task name!")]
    assert await all_jobs(jobs, queue) == [[0], [2]]


async def test_one_process_per_spool_directory(admin: TenantAdmin, tmp_path: Path) -> None:
    async with quick_client("http://127.0.0.1:9", admin.api_key) as first:
        await first.open_spool(tmp_path / "spool")
        async with quick_client("http://127.0.0.1:9", admin.api_key) as second:
            with pytest.raises(SpoolLockedError, match="jobs spool"):
                await second.open_spool(tmp_path / "spool")


async def test_without_a_spool_an_unreachable_keel_raises(admin: TenantAdmin) -> None:
    async with quick_client(f"http://127.0.0.1:{free_port()}", admin.api_key) as jobs:
        with pytest.raises(TransportError):
            await jobs.enqueue("step", 1)
