"""The hand-off (``keel.jobs.signals``): an enqueue of a job due now, while a fetch of the same
tenant waits in this process on its queue (no pause, no limit), inserts the job leased to that
fetch, which answers with it once the enqueue commits. Real requests over TCP, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from keel.app import create_app
from keel.jobs import service
from keel.jobs.models import Job, JobState
from keel.jobs.signals import JOB_SIGNALS_RESOURCE, JobSignals
from keel.settings import Settings
from tests.support.apps import lifespan_of
from tests.support.asgi import serve_over_tcp
from tests.support.tenants import TenantAdmin, make_tenant_admin


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[FastAPI, str]]:
    app = create_app(settings)
    async with lifespan_of(app), serve_over_tcp(app) as url:
        yield app, url


def signals_of(app: FastAPI) -> JobSignals:
    signals: JobSignals = app.state.keel.resources[JOB_SIGNALS_RESOURCE]
    return signals


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - the condition is another task's state
            await asyncio.sleep(0.01)


async def waiting_fetch(
    app: FastAPI, http: httpx.AsyncClient, admin: TenantAdmin, queue: str, **extra: Any
) -> asyncio.Task[httpx.Response]:
    """A fetch of ``admin``'s tenant, started and waiting (offered) on ``queue``."""
    body = {"queues": [queue], "wait_seconds": 5, "worker_id": "w-1", **extra}
    task = asyncio.ensure_future(http.post("/jobs/v1/fetch", json=body, headers=admin.headers))
    await until(lambda: signals_of(app).offered(admin.tenant_id, queue))
    return task


async def job_row(app: FastAPI, job_id: str) -> Job:
    async with app.state.keel.database.session() as session:
        job = await session.get(Job, job_id, execution_options={"all_tenants": True})
        assert job is not None
        return job


def new_queue() -> str:
    return f"h-{uuid.uuid4().hex[:8]}"


async def test_a_waiting_fetch_is_handed_the_job_leased_to_it(
    served: tuple[FastAPI, str],
) -> None:
    app, url = served
    admin = await make_tenant_admin(app)
    queue = new_queue()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        fetch = await waiting_fetch(app, http, admin, queue, limit=5, lease_seconds=60)
        keyed = {**admin.headers, "Idempotency-Key": uuid.uuid4().hex}
        body = {"queue": queue, "task": "t", "args": [1]}
        enqueued = await http.post("/jobs/v1/jobs", headers=keyed, json=body)
        assert enqueued.status_code == 201, enqueued.text
        answer = (await fetch).json()
        job = enqueued.json()
        # The enqueue's answer is the truth of its commit: the job runs, its first attempt.
        assert (job["state"], job["attempt"]) == ("running", 1)
        [lease] = answer["jobs"]
        assert (lease["id"], lease["attempt"], lease["args"]) == (job["id"], 1, [1])
        row = await job_row(app, job["id"])
        assert (row.state, row.worker_id) == (JobState.running, "w-1")
        assert row.lease_token == lease["lease_token"]
        assert row.attempted_at is not None
        assert row.lease_expires_at is not None
        assert 59 <= (row.lease_expires_at - row.attempted_at).total_seconds() <= 60
        # ... and what a read of the job says (the answer is built from the inserted values).
        stored = await http.get(f"/jobs/v1/jobs/{job['id']}", headers=admin.headers)
        assert {**job, "duplicate": None} == {**stored.json(), "duplicate": None}
        # The lease is an ordinary one: acked once, then refused.
        ack = {"acks": [{"id": job["id"], "lease_token": lease["lease_token"]}]}
        first = (await http.post("/jobs/v1/ack", json=ack, headers=admin.headers)).json()
        again = (await http.post("/jobs/v1/ack", json=ack, headers=admin.headers)).json()
        assert first["acked"] == [job["id"]]
        assert again["refused"][0]["status"] == 409
        assert (await job_row(app, job["id"])).state == JobState.completed
        # The key kept the answer the job was handed with (on PostgreSQL, in the job's own
        # statement): a retry replays it, and enqueues nothing.
        replay = await http.post("/jobs/v1/jobs", headers=keyed, json=body)
        assert (replay.status_code, replay.json()) == (201, job)
        listed = await http.get("/jobs/v1/jobs", headers=admin.headers, params={"queue": queue})
        assert [listed_job["id"] for listed_job in listed.json()["jobs"]] == [job["id"]]


@pytest.mark.parametrize(
    "extra",
    [{}, {"unique": {"key": "once"}}],
    ids=["one statement on PostgreSQL", "in a unit of work"],
)
async def test_a_handed_fetch_answers_before_the_enqueue_that_handed_it(
    settings: Settings, extra: dict[str, Any]
) -> None:
    """The worker starts the job while the enqueuer reads its answer: the server sends the
    fetch's answer first (a job's start is what its enqueue waits for)."""
    app = create_app(settings)
    answered: list[str] = []

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        async def sent(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.append(scope["path"])
            await send(message)

        await app(scope, receive, sent)

    async with lifespan_of(app), serve_over_tcp(recording) as url:  # type: ignore[arg-type]
        admin = await make_tenant_admin(app)
        queue = new_queue()
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            fetch = await waiting_fetch(app, http, admin, queue)
            answered.clear()
            body = {"queue": queue, "task": "t", **extra}
            enqueued = await http.post("/jobs/v1/jobs", json=body, headers=admin.headers)
            assert enqueued.status_code == 201, enqueued.text
            assert [lease["id"] for lease in (await fetch).json()["jobs"]] == [
                enqueued.json()["id"]
            ]
    assert answered == ["/jobs/v1/fetch", "/jobs/v1/jobs"]


async def test_a_batch_hands_each_fetch_no_more_than_its_limit(
    served: tuple[FastAPI, str],
) -> None:
    app, url = served
    admin = await make_tenant_admin(app)
    queue = new_queue()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        fetch = await waiting_fetch(app, http, admin, queue, limit=2)
        jobs = [{"queue": queue, "task": "t"} for _ in range(3)]
        batch = await http.post("/jobs/v1/jobs/batch", json={"jobs": jobs}, headers=admin.headers)
        assert batch.status_code == 201, batch.text
        leased = [lease["id"] for lease in (await fetch).json()["jobs"]]
        ids = batch.json()["ids"]
        assert leased == ids[:2]
        states = [(await job_row(app, job_id)).state for job_id in ids]
        assert states == [JobState.running, JobState.running, JobState.available]


async def test_no_hand_off_to_another_tenant_or_queue_or_past_a_pause_or_limit(
    served: tuple[FastAPI, str],
) -> None:
    app, url = served
    admin, other = await make_tenant_admin(app), await make_tenant_admin(app)
    queue, paused, limited = new_queue(), new_queue(), new_queue()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        answer = await http.post(f"/jobs/v1/queues/{paused}/pause", headers=admin.headers)
        assert answer.status_code == 200, answer.text
        answer = await http.patch(
            f"/jobs/v1/queues/{limited}", json={"concurrency_limit": 5}, headers=admin.headers
        )
        assert answer.status_code == 200, answer.text
        fetch = asyncio.ensure_future(
            http.post(
                "/jobs/v1/fetch",
                json={"queues": [queue, paused], "wait_seconds": 1.5, "worker_id": "w"},
                headers=admin.headers,
            )
        )
        await until(lambda: signals_of(app).offered(admin.tenant_id, queue))
        enqueued = []
        for who, name in ((other, queue), (admin, paused), (admin, new_queue())):
            job = await http.post(
                "/jobs/v1/jobs", json={"queue": name, "task": "t"}, headers=who.headers
            )
            enqueued.append(job.json())
        assert (await fetch).json()["jobs"] == []
        assert [job["state"] for job in enqueued] == ["available"] * 3
        # A limited queue is claimed under its lock, never handed; the wake still brings it.
        fetch = await waiting_fetch(app, http, admin, limited)
        job = (
            await http.post(
                "/jobs/v1/jobs", json={"queue": limited, "task": "t"}, headers=admin.headers
            )
        ).json()
        assert job["state"] == "available"
        assert [lease["id"] for lease in (await fetch).json()["jobs"]] == [job["id"]]


async def test_an_enqueue_that_rolls_back_hands_nothing(served: tuple[FastAPI, str]) -> None:
    """A replayed ``Idempotency-Key`` fails at its insert: the write, hand-off included, is
    rolled back, and the fetch it took keeps waiting for the next job."""
    app, url = served
    admin = await make_tenant_admin(app)
    queue = new_queue()
    key = {**admin.headers, "Idempotency-Key": uuid.uuid4().hex}
    body = {"queue": queue, "task": "t"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        first = (await http.post("/jobs/v1/jobs", json=body, headers=key)).json()
        claimed = await http.post(  # a worker takes it, so the fetch below waits
            "/jobs/v1/fetch", json={"queues": [queue], "worker_id": "x"}, headers=admin.headers
        )
        assert [lease["id"] for lease in claimed.json()["jobs"]] == [first["id"]]
        fetch = await waiting_fetch(app, http, admin, queue)
        replay = await http.post("/jobs/v1/jobs", json=body, headers=key)
        assert replay.status_code == 201
        assert replay.json() == first
        await asyncio.sleep(0.2)
        assert not fetch.done()  # handed nothing: still waiting
        await until(lambda: signals_of(app).offered(admin.tenant_id, queue))
        second = (await http.post("/jobs/v1/jobs", json=body, headers=admin.headers)).json()
        assert [lease["id"] for lease in (await fetch).json()["jobs"]] == [second["id"]]
        assert second["state"] == "running"
        async with app.state.keel.database.session() as session:
            ids = await session.scalars(
                select(Job.id).where(Job.queue == queue).execution_options(all_tenants=True)
            )
            assert sorted(ids) == sorted([first["id"], second["id"]])


async def test_handed_jobs_a_fetch_cannot_answer_are_given_back(
    served: tuple[FastAPI, str],
) -> None:
    """:func:`service.release`: the first attempt of a job nobody started is not counted, and
    a lease no longer current is left alone."""
    app, url = served
    admin = await make_tenant_admin(app)
    queue = new_queue()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        fetch = await waiting_fetch(app, http, admin, queue)
        job = (
            await http.post(
                "/jobs/v1/jobs", json={"queue": queue, "task": "t"}, headers=admin.headers
            )
        ).json()
        [lease] = (await fetch).json()["jobs"]
    database = app.state.keel.database
    claim = service.Claim(
        job["id"], queue, "t", [], 1, 20, 300, lease["lease_token"], lease["lease_expires_at"]
    )
    stale = service.Claim(
        job["id"], queue, "t", [], 1, 20, 300, "not-the-lease", lease["lease_expires_at"]
    )
    async with database.session() as session:
        await service.release(session, admin.tenant_id, [stale])
    assert (await job_row(app, job["id"])).state == JobState.running
    async with database.session() as session:
        await service.release(session, admin.tenant_id, [claim])
    row = await job_row(app, job["id"])
    assert (row.state, row.attempt, row.lease_token, row.worker_id) == (
        JobState.available,
        0,
        None,
        None,
    )
