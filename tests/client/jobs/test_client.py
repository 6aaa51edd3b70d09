"""``JobsClient`` against a real Keel: enqueue (idempotency, unique keys, batches), read,
cancel, and the worker's calls (fetch, heartbeat, ack, fail) with their lease rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keel_client.http import ClientError
from keel_client.jobs import JobsClient, JobState, NewJob


class TestEnqueue:
    async def test_enqueue_stores_the_job_with_its_settings(
        self, jobs: JobsClient, queue: str
    ) -> None:
        run_at = datetime.now(UTC) + timedelta(hours=1)
        ref = await jobs.enqueue(
            "send_report", 42, "pdf", queue=queue, priority=5, run_at=run_at,
            max_attempts=3, timeout_seconds=60, tags=["billing"],
        )  # fmt: skip
        assert not ref.is_spooled
        assert ref.id is not None
        job = await jobs.get(ref.id)
        assert (job.task, job.queue, job.args) == ("send_report", queue, [42, "pdf"])
        assert (job.priority, job.max_attempts, job.timeout_seconds) == (5, 3, 60)
        assert job.state is JobState.SCHEDULED
        assert job.tags == ["billing"]

    async def test_keyword_arguments_travel_as_an_object(
        self, jobs: JobsClient, queue: str
    ) -> None:
        ref = await jobs.enqueue("send_report", kwargs={"report_id": 7}, queue=queue)
        assert ref.job is not None
        assert ref.job.args == {"report_id": 7}

    async def test_the_same_idempotency_key_is_one_job(self, jobs: JobsClient, queue: str) -> None:
        first = await jobs.enqueue("send_report", 1, queue=queue, idempotency_key="order-1")
        again = await jobs.enqueue("send_report", 1, queue=queue, idempotency_key="order-1")
        assert first.id == again.id
        assert len((await jobs.list_jobs(queue)).jobs) == 1

    async def test_every_enqueue_carries_a_new_idempotency_key(
        self, jobs: JobsClient, queue: str
    ) -> None:
        first = await jobs.enqueue("send_report", 1, queue=queue)
        second = await jobs.enqueue("send_report", 1, queue=queue)
        assert first.idempotency_key != second.idempotency_key
        assert first.id != second.id

    async def test_a_unique_key_answers_the_live_job(self, jobs: JobsClient, queue: str) -> None:
        first = await jobs.enqueue("send_report", 1, queue=queue, unique_key="report-1")
        second = await jobs.enqueue("send_report", 1, queue=queue, unique_key="report-1")
        assert not first.is_duplicate
        assert second.is_duplicate
        assert second.id == first.id

    async def test_enqueue_many_answers_the_ids_in_order(
        self, jobs: JobsClient, queue: str
    ) -> None:
        batch = await jobs.enqueue_many([NewJob("step", [n], queue=queue) for n in range(50)])
        assert batch.ids is not None
        page = await jobs.list_jobs(queue, limit=100)
        assert [job.id for job in page.jobs] == batch.ids
        assert [job.args for job in page.jobs] == [[n] for n in range(50)]

    async def test_a_bad_job_is_a_client_error_not_spooled(
        self, jobs: JobsClient, queue: str
    ) -> None:
        with pytest.raises(ClientError) as caught:
            await jobs.enqueue("not a task name!", queue=queue)
        assert caught.value.status == 422

    def test_run_at_must_be_timezone_aware(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            NewJob("t", run_at=datetime(2030, 1, 1)).to_wire()


class TestWorkerCalls:
    async def test_fetch_heartbeat_ack(self, jobs: JobsClient, queue: str) -> None:
        ref = await jobs.enqueue("send_report", 3, queue=queue)
        [lease] = await jobs.fetch([queue], worker_id="w1", limit=5, lease_seconds=10)
        assert (lease.id, lease.args, lease.attempt) == (ref.id, [3], 1)
        answer = await jobs.heartbeat(lease, progress={"done": 1})
        assert not answer.cancel_requested
        done = await jobs.ack(lease, {"pages": 2})
        assert done.state is JobState.COMPLETED
        assert (await jobs.get(lease.id)).result == {"pages": 2}

    async def test_a_failure_is_kept_with_its_traceback(self, jobs: JobsClient, queue: str) -> None:
        await jobs.enqueue("send_report", 3, queue=queue, max_attempts=1)
        [lease] = await jobs.fetch([queue], worker_id="w1")
        failed = await jobs.fail(lease, "ValueError: no rows", traceback="Traceback ...")
        assert failed.state is JobState.DISCARDED
        assert [(e.attempt, e.error) for e in failed.errors] == [(1, "ValueError: no rows")]

    async def test_a_cancelled_job_answers_cancel_requested_at_the_heartbeat(
        self, jobs: JobsClient, queue: str
    ) -> None:
        ref = await jobs.enqueue("send_report", 3, queue=queue)
        assert ref.id is not None
        [lease] = await jobs.fetch([queue], worker_id="w1")
        await jobs.cancel(ref.id)
        assert (await jobs.heartbeat(lease)).cancel_requested

    async def test_a_stale_lease_token_is_refused(self, jobs: JobsClient, queue: str) -> None:
        await jobs.enqueue("send_report", 3, queue=queue)
        [lease] = await jobs.fetch([queue], worker_id="w1")
        stale = lease.model_copy(update={"lease_token": "not-the-token"})
        with pytest.raises(ClientError) as caught:
            await jobs.ack(stale)
        assert caught.value.status == 409

    async def test_an_empty_fetch_waits_then_answers_nothing(
        self, jobs: JobsClient, queue: str
    ) -> None:
        assert await jobs.fetch([queue], worker_id="w1", wait_seconds=0.2) == []
