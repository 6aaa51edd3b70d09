"""Natural batching against a real Keel: concurrent enqueues of one client share requests
(each caller still gets its own job, an invalid job fails its caller alone, the spool still
takes them), and a worker's acks go together, with its fetches or on their own, and all of
them before it stops. Requests are counted on the client's own transport."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel_client.http import ClientError, RetryPolicy
from keel_client.jobs import Ack, JobRef, JobsClient, JobState, NewJob, Worker
from tests.client.jobs.conftest import quick_client, serving
from tests.client.jobs.test_spool import all_jobs
from tests.support.keel_process import free_port
from tests.support.tenants import TenantAdmin

SINGLE = "POST /jobs/v1/jobs"
BATCH = "POST /jobs/v1/jobs/batch"
FETCH = "POST /jobs/v1/fetch"
ACKS = "POST /jobs/v1/ack"
ONE_ACK = "POST /jobs/v1/jobs/*/ack"


class CountingTransport(httpx.AsyncBaseTransport):
    """The real transport, counting requests by method and path (a job's id as ``*``)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = re.sub(r"^/jobs/v1/jobs/[^/]+/", "/jobs/v1/jobs/*/", request.url.path)
        self.requests[f"{request.method} {path}"] += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def counting_client(url: str, api_key: str) -> tuple[JobsClient, CountingTransport]:
    transport = CountingTransport()
    client = JobsClient(
        url, auth=api_key, transport=transport, breaker=None, timeout=5.0,
        retry=RetryPolicy(max_retries=1, backoff_base=0.01, backoff_max=0.05),
    )  # fmt: skip
    return client, transport


@pytest.fixture
async def counted(keel_url: str, admin: TenantAdmin) -> Any:
    client, transport = counting_client(keel_url, admin.api_key)
    async with client:
        yield client, transport


async def jobs_by_id(jobs: JobsClient, queue: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    after: str | None = None
    while True:
        page = await jobs.list_jobs(queue, limit=500, after=after)
        found.update({job.id: job for job in page.jobs})
        if page.next is None:
            return found
        after = page.next


class TestEnqueueBatching:
    async def test_200_concurrent_enqueues_are_one_request_each_caller_with_its_own_job(
        self, counted: tuple[JobsClient, CountingTransport], queue: str
    ) -> None:
        jobs, transport = counted
        refs = await asyncio.gather(*(jobs.enqueue("step", n, queue=queue) for n in range(200)))
        # The first waits for the loop's next turn, and the 199 of the same moment join it.
        assert transport.requests == {BATCH: 1}
        assert jobs.batcher.requests == 1
        assert len({ref.id for ref in refs}) == 200
        stored = await jobs_by_id(jobs, queue)
        assert len(stored) == 200
        # Each caller's id is its own job: the one with its arguments.
        assert all(stored[ref.id or ""].args == [n] for n, ref in enumerate(refs))
        assert all(ref.state is JobState.AVAILABLE and not ref.is_duplicate for ref in refs)

    async def test_an_enqueue_with_nothing_in_flight_goes_at_once_alone(
        self, counted: tuple[JobsClient, CountingTransport], queue: str
    ) -> None:
        jobs, transport = counted
        first = await jobs.enqueue("step", 1, queue=queue)
        second = await jobs.enqueue("step", 2, queue=queue)
        assert transport.requests == {SINGLE: 2}
        assert first.job is not None  # the whole job, as the single enqueue answers it
        assert (first.job.args, first.state) == ([1], JobState.AVAILABLE)
        assert second.id != first.id

    async def test_an_invalid_job_fails_its_caller_alone(
        self, counted: tuple[JobsClient, CountingTransport], queue: str
    ) -> None:
        jobs, transport = counted
        tasks = ["step"] * 20
        tasks[13] = "not a task name!"  # Keel refuses the whole batch with a 422 for it
        answers = await asyncio.gather(
            *(jobs.enqueue(task, n, queue=queue) for n, task in enumerate(tasks)),
            return_exceptions=True,
        )
        refused = answers.pop(13)
        assert isinstance(refused, ClientError)
        assert refused.status == 422
        refs = [answer for answer in answers if isinstance(answer, JobRef)]
        assert len(refs) == 19
        stored = await jobs_by_id(jobs, queue)
        assert sorted(job.args[0] for job in stored.values()) == [n for n in range(20) if n != 13]
        assert {ref.id for ref in refs} == set(stored)
        # The refused batch, then halves down to the bad job: a few requests, not 19.
        assert transport.requests[BATCH] >= 2
        assert transport.requests[SINGLE] + transport.requests[BATCH] <= 14, transport.requests

    async def test_a_unique_key_in_a_batch_answers_the_live_job(
        self, counted: tuple[JobsClient, CountingTransport], queue: str
    ) -> None:
        jobs, transport = counted
        later = datetime.now(UTC) + timedelta(hours=1)
        refs = await asyncio.gather(
            *(jobs.enqueue("report", 7, queue=queue, unique_key="report-7") for _ in range(5)),
            jobs.enqueue("report", 8, queue=queue, run_at=later),
        )
        assert transport.requests[BATCH] == 1
        *same, scheduled = refs
        assert len({ref.id for ref in same}) == 1
        assert [ref.is_duplicate for ref in same] == [False, True, True, True, True]
        assert scheduled.state is JobState.SCHEDULED
        assert len(await jobs_by_id(jobs, queue)) == 2

    async def test_an_idempotency_key_of_its_own_sends_the_enqueue_alone(
        self, counted: tuple[JobsClient, CountingTransport], queue: str
    ) -> None:
        jobs, transport = counted
        refs = await asyncio.gather(
            *(jobs.enqueue("step", n, queue=queue, idempotency_key=f"k-{n}") for n in range(10))
        )
        assert transport.requests == {SINGLE: 10}
        assert [ref.idempotency_key for ref in refs] == [f"k-{n}" for n in range(10)]

    async def test_concurrent_enqueues_with_keel_down_are_spooled_and_arrive_once_in_order(
        self, app: FastAPI, admin: TenantAdmin, tmp_path: Path, queue: str
    ) -> None:
        port = free_port()
        async with quick_client(f"http://127.0.0.1:{port}", admin.api_key) as jobs:
            await jobs.open_spool(tmp_path / "spool", fsync=False, backoff_base=0.05,
                                  backoff_max=0.2)  # fmt: skip
            refs = await asyncio.gather(*(jobs.enqueue("step", n, queue=queue) for n in range(50)))
            assert all(ref.is_spooled for ref in refs)
            async with serving(app, port):
                assert await jobs.flush(timeout=10.0)
                assert await all_jobs(jobs, queue) == [[n] for n in range(50)]

    async def test_closing_the_client_answers_the_enqueues_in_line(
        self, keel_url: str, admin: TenantAdmin, queue: str
    ) -> None:
        jobs = quick_client(keel_url, admin.api_key)
        pending = [asyncio.create_task(jobs.enqueue("step", n, queue=queue)) for n in range(30)]
        await asyncio.sleep(0)  # every enqueue is in flight or in line
        await jobs.aclose()
        refs = await asyncio.gather(*pending)
        assert len({ref.id for ref in refs}) == 30
        async with quick_client(keel_url, admin.api_key) as reader:
            assert len(await jobs_by_id(reader, queue)) == 30


class TestAcksTogether:
    async def test_ack_many_takes_the_current_leases_and_refuses_the_others_alone(
        self, counted: tuple[JobsClient, CountingTransport], queue: str
    ) -> None:
        jobs, _ = counted
        await jobs.enqueue_many([NewJob("step", [n], queue=queue) for n in range(3)])
        first, second, third = await jobs.fetch([queue], worker_id="w1", limit=3)
        stale = second.model_copy(update={"lease_token": "not-the-token"})
        unknown = third.model_copy(update={"id": "no-such-job"})
        answer = await jobs.ack_many([Ack(first, {"n": 0}), Ack(stale), Ack(unknown)])
        assert answer.acked == [first.id]
        assert {refused.id: refused.status for refused in answer.refused} == {
            "no-such-job": 404, second.id: 409
        }  # fmt: skip
        assert (await jobs.get(first.id)).result == {"n": 0}
        assert (await jobs.get(second.id)).state is JobState.RUNNING
        # The fetch carries the other two acks and leases nothing more.
        fetched = await jobs.ack_and_fetch([Ack(second), Ack(third)], [queue], worker_id="w1")
        assert (sorted(fetched.acked), fetched.jobs) == (sorted([second.id, third.id]), [])

    async def test_a_worker_acks_in_batches_and_completes_every_job_once(
        self, counted: tuple[JobsClient, CountingTransport], queue: str
    ) -> None:
        jobs, transport = counted
        await jobs.enqueue_many([NewJob("noop", [n], queue=queue) for n in range(200)])
        worker = Worker(jobs, queues=[queue], concurrency=20, poll_wait=0.5)
        ran: Counter[int] = Counter()

        @worker.task("noop")
        async def noop(n: int) -> int:
            ran[n] += 1
            return n

        transport.requests.clear()
        running = asyncio.create_task(worker.run(install_signal_handlers=False))
        deadline = time.monotonic() + 20.0
        while worker.stats.completed < 200:
            assert time.monotonic() < deadline, worker.stats
            await asyncio.sleep(0.02)
        worker.stop()
        await asyncio.wait_for(running, 10.0)
        requests = dict(transport.requests)
        stored = await jobs_by_id(jobs, queue)
        assert all(job.state is JobState.COMPLETED for job in stored.values())
        assert sorted(job.result for job in stored.values()) == list(range(200))
        assert all(job.attempt == 1 for job in stored.values())
        assert ran == Counter(range(200))
        # 200 jobs, 200 acks: none alone, and fewer requests in all than jobs.
        assert requests.get(ONE_ACK, 0) == 0
        assert requests.get(FETCH, 0) + requests.get(ACKS, 0) < 100, requests
        print(f"200 jobs: {requests}")

    async def test_an_idle_worker_sends_a_quick_jobs_ack_with_its_next_fetch(
        self, counted: tuple[JobsClient, CountingTransport], queue: str
    ) -> None:
        jobs, transport = counted
        worker = Worker(jobs, queues=[queue], concurrency=10, poll_wait=5.0)

        @worker.task("noop")
        async def noop(n: int) -> int:
            return n

        running = asyncio.create_task(worker.run(install_signal_handlers=False))
        try:
            for n in range(5):  # one at a time, the worker idle in its fetch before each
                await asyncio.sleep(0.1)
                ref = await jobs.enqueue("noop", [n], queue=queue)
                deadline = time.monotonic() + 10.0
                while (await jobs.get(ref.id)).state is not JobState.COMPLETED:
                    assert time.monotonic() < deadline, transport.requests
                    await asyncio.sleep(0.01)
        finally:
            worker.stop()
            await asyncio.wait_for(running, 10.0)
        # Each job: the fetch it was leased to, then the next fetch carrying its ack (one
        # each on their own before; a loaded machine may let a job outlast the wait).
        assert transport.requests.get(ACKS, 0) <= 2, transport.requests
        assert transport.requests.get(ONE_ACK, 0) == 0, transport.requests

    async def test_stop_sends_the_acks_still_queued(self, jobs: JobsClient, queue: str) -> None:
        # The acks wait a minute to go, and the fetch after the first long-polls (30 s):
        # only the shutdown sends them.
        worker = Worker(jobs, queues=[queue], concurrency=4, poll_wait=30.0, ack_delay=60.0)

        @worker.task("noop")
        async def noop(n: int) -> int:
            # Longer than the worker waits for a job to end before it fetches again (its
            # ack would then go with that fetch).
            await asyncio.sleep(0.1)
            return n

        batch = await jobs.enqueue_many([NewJob("noop", [n], queue=queue) for n in range(3)])
        assert batch.ids is not None
        running = asyncio.create_task(worker.run(install_signal_handlers=False))
        deadline = time.monotonic() + 10.0
        while worker.stats.completed < 3:
            assert time.monotonic() < deadline, worker.stats
            await asyncio.sleep(0.02)
        assert {(await jobs.get(id)).state for id in batch.ids} == {JobState.RUNNING}
        worker.stop()
        await asyncio.wait_for(running, 10.0)
        assert [(await jobs.get(id)).result for id in batch.ids] == [0, 1, 2]

    async def test_a_result_keel_refuses_costs_its_own_ack_only(
        self, counted: tuple[JobsClient, CountingTransport], queue: str
    ) -> None:
        """Keel refuses the ack of a result over its limit alone (413 among the refused):
        the other jobs of the same request of acks complete."""
        jobs, transport = counted
        worker = Worker(jobs, queues=[queue], concurrency=10, poll_wait=0.5, ack_delay=0.2)

        @worker.task("echo")
        async def echo(size: int) -> str:
            return "x" * size

        sizes = [10, 10, 100_000, 10, 10]
        batch = await jobs.enqueue_many([NewJob("echo", [size], queue=queue) for size in sizes])
        assert batch.ids is not None
        running = asyncio.create_task(worker.run(install_signal_handlers=False))
        deadline = time.monotonic() + 10.0
        while True:
            states = [(await jobs.get(id)).state for id in batch.ids]
            if states.count(JobState.COMPLETED) == 4:
                break
            assert time.monotonic() < deadline, (states, transport.requests)
            await asyncio.sleep(0.05)
        worker.stop()
        await asyncio.wait_for(running, 10.0)
        done = JobState.COMPLETED
        assert states == [done, done, JobState.RUNNING, done, done]
