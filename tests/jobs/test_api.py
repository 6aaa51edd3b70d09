"""The jobs protocol over HTTP (``/jobs/v1``), on SQLite and PostgreSQL: a producer
enqueues, a worker fetches a lease and acks or fails, and the answers to bad input, stale
leases and missing permissions are problem+json 4xx that change nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from keel.core.db import utcnow
from keel.core.errors import PROBLEM_CONTENT_TYPE
from keel.core.idempotency import RETENTION, IdempotencyKey
from keel.jobs.service import rescue_lapsed
from keel.jobs.signals import JOB_SIGNALS_RESOURCE
from tests.support.tenants import TenantAdmin, member

API = "/jobs/v1"


def queue_name() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


async def enqueue(
    client: httpx.AsyncClient, headers: dict[str, str], queue: str, **fields: Any
) -> dict[str, Any]:
    answer = await client.post(
        f"{API}/jobs", headers=headers, json={"queue": queue, "task": "t", **fields}
    )
    assert answer.status_code in (200, 201), answer.text
    document: dict[str, Any] = answer.json()
    return document


async def fetch(
    client: httpx.AsyncClient, headers: dict[str, str], *queues: str, **fields: Any
) -> list[dict[str, Any]]:
    body = {"queues": list(queues), "worker_id": "test-worker", **fields}
    answer = await client.post(f"{API}/fetch", headers=headers, json=body)
    assert answer.status_code == 200, answer.text
    jobs: list[dict[str, Any]] = answer.json()["jobs"]
    return jobs


def assert_problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM_CONTENT_TYPE
    document: dict[str, Any] = answer.json()
    return document


async def test_a_job_goes_from_enqueue_through_a_lease_to_completed(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    queue = queue_name()
    created = await enqueue(client, headers, queue, args=[42, {"to": "ada"}], tags=["report"])
    assert created["state"] == "available"
    assert created["duplicate"] is False

    [lease] = await fetch(client, headers, queue, lease_seconds=20)
    assert (lease["id"], lease["task"], lease["args"]) == (created["id"], "t", [42, {"to": "ada"}])
    assert lease["attempt"] == 1
    token = lease["lease_token"]

    beat = await client.post(
        f"{API}/jobs/{lease['id']}/heartbeat",
        headers=headers,
        json={"lease_token": token, "progress": {"done": 1, "total": 2}},
    )
    assert beat.status_code == 200, beat.text
    assert beat.json()["cancel_requested"] is False
    running = (await client.get(f"{API}/jobs/{lease['id']}", headers=headers)).json()
    assert (running["state"], running["progress"]) == ("running", {"done": 1, "total": 2})

    acked = await client.post(
        f"{API}/jobs/{lease['id']}/ack", headers=headers, json={"lease_token": token, "result": 7}
    )
    assert acked.status_code == 200, acked.text
    assert (acked.json()["state"], acked.json()["result"]) == ("completed", 7)
    assert await fetch(client, headers, queue) == []
    metrics = (await client.get("/metrics")).text
    assert f'keel_jobs_run_duration_seconds_count{{outcome="completed",queue="{queue}"}} 1.0' in (
        metrics
    )


async def test_an_enqueue_answers_the_job_as_it_was_stored(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    # The answer of a created job is built from the values it was inserted with, not read
    # back: it must say what a read of the job says, to the microsecond.
    queue = queue_name()
    for fields in ({}, {"args": {"to": "ada"}, "tags": ["a", "b"], "priority": -3},
                   {"run_at": (utcnow() + timedelta(hours=1)).isoformat(), "max_attempts": 2,
                    "timeout_seconds": 9, "max_backoff_seconds": 60}):  # fmt: skip
        answer = await client.post(
            f"{API}/jobs", headers=headers, json={"queue": queue, "task": "t", **fields}
        )
        assert answer.status_code == 201, answer.text
        created = answer.json()
        assert created.pop("duplicate") is False
        stored = await client.get(f"{API}/jobs/{created['id']}", headers=headers)
        assert created == stored.json()


async def test_queues_are_taken_in_the_order_the_worker_gives(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    first, second = queue_name(), queue_name()
    low = await enqueue(client, headers, second, priority=-5)
    high = await enqueue(client, headers, first, priority=5)
    leases = await fetch(client, headers, first, second, limit=10)
    assert [lease["id"] for lease in leases] == [high["id"], low["id"]]


async def test_a_fetch_of_one_queue_leases_by_priority_then_run_at(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """The claim order of a worker's usual fetch (one queue, one call to the database)."""
    queue = queue_name()
    now = utcnow()

    def ago(minutes: int) -> str:
        return (now - timedelta(minutes=minutes)).isoformat()

    last = await enqueue(client, headers, queue, priority=5, run_at=ago(3))
    second = await enqueue(client, headers, queue, priority=-1, run_at=ago(1))
    first = await enqueue(client, headers, queue, priority=-1, run_at=ago(2), args={"n": 1})
    await enqueue(
        client, headers, queue, priority=-9, run_at=(now + timedelta(hours=1)).isoformat()
    )
    leases = await fetch(client, headers, queue, limit=2)
    assert [lease["id"] for lease in leases] == [first["id"], second["id"]]
    assert (leases[0]["args"], leases[0]["attempt"]) == ({"n": 1}, 1)
    assert [lease["id"] for lease in await fetch(client, headers, queue, limit=10)] == [last["id"]]


async def test_a_failure_is_retried_later_and_the_last_one_is_dead_with_its_error(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    queue = queue_name()
    job = await enqueue(client, headers, queue, max_attempts=2)
    [lease] = await fetch(client, headers, queue)
    failed = await client.post(
        f"{API}/jobs/{job['id']}/fail",
        headers=headers,
        json={
            "lease_token": lease["lease_token"],
            "error": "ValueError: no",
            "retry_in_seconds": 0,
        },
    )
    assert failed.status_code == 200, failed.text
    assert failed.json()["state"] == "retryable"
    [again] = await fetch(client, headers, queue)
    assert again["attempt"] == 2
    dead = await client.post(
        f"{API}/jobs/{job['id']}/fail",
        headers=headers,
        json={"lease_token": again["lease_token"], "error": "ValueError: still", "traceback": "tb"},
    )
    document = dead.json()
    assert document["state"] == "discarded"
    assert [(e["attempt"], e["error"]) for e in document["errors"]] == [
        (1, "ValueError: no"),
        (2, "ValueError: still"),
    ]
    listed = await client.get(
        f"{API}/jobs", headers=headers, params={"queue": queue, "state": "discarded"}
    )
    assert [j["id"] for j in listed.json()["jobs"]] == [job["id"]]


async def test_a_stale_lease_can_neither_ack_nor_overwrite_the_new_attempt(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    queue = queue_name()
    job = await enqueue(client, headers, queue)
    [old] = await fetch(client, headers, queue, lease_seconds=1)
    # The lease lapses; the rescue (`keel worker`'s, every second) makes the job available.
    await asyncio.sleep(1.1)
    async with app.state.keel.database.session() as session:
        assert await rescue_lapsed(session)
    new = await fetch(client, headers, queue)
    assert new[0]["attempt"] == 2
    for verb, extra in (("ack", {"result": "stale"}), ("fail", {"error": "stale"})):
        refused = await client.post(
            f"{API}/jobs/{job['id']}/{verb}",
            headers=headers,
            json={"lease_token": old["lease_token"], **extra},
        )
        assert assert_problem(refused, 409)["type"] == "urn:keel:problem:conflict"
    beat = await client.post(
        f"{API}/jobs/{job['id']}/heartbeat",
        headers=headers,
        json={"lease_token": old["lease_token"]},
    )
    assert_problem(beat, 409)
    current = (await client.get(f"{API}/jobs/{job['id']}", headers=headers)).json()
    assert (current["state"], current["attempt"], current["result"]) == ("running", 2, None)
    done = await client.post(
        f"{API}/jobs/{job['id']}/ack",
        headers=headers,
        json={"lease_token": new[0]["lease_token"], "result": "fresh"},
    )
    assert done.json()["result"] == "fresh"


async def test_an_idle_fetch_wakes_when_a_job_is_enqueued_not_at_its_recheck(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    signals = app.state.keel.resources[JOB_SIGNALS_RESOURCE]
    signals.recheck_seconds = 60.0  # only the wake can end this wait early
    queue = queue_name()
    waiting = asyncio.create_task(fetch(client, headers, queue, wait_seconds=20))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    started = time.monotonic()
    job = await enqueue(client, headers, queue)
    [lease] = await asyncio.wait_for(waiting, timeout=10)
    assert lease["id"] == job["id"]
    assert time.monotonic() - started < 5


async def test_a_fetch_with_nothing_due_answers_empty_after_its_wait(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    started = time.monotonic()
    assert await fetch(client, headers, queue_name(), wait_seconds=0.3) == []
    assert time.monotonic() - started >= 0.3


async def test_an_idempotency_key_replays_the_first_answer_and_enqueues_once(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    queue = queue_name()
    keyed = {**headers, "Idempotency-Key": str(uuid.uuid4())}
    body = {"queue": queue, "task": "t", "args": [1]}
    answers = await asyncio.gather(
        *(client.post(f"{API}/jobs", headers=keyed, json=body) for _ in range(5))
    )
    assert {answer.status_code for answer in answers} == {201}
    assert len({answer.json()["id"] for answer in answers}) == 1
    listed = await client.get(f"{API}/jobs", headers=headers, params={"queue": queue})
    assert len(listed.json()["jobs"]) == 1

    other = await client.post(f"{API}/jobs", headers=keyed, json={**body, "args": [2]})
    assert "another request" in assert_problem(other, 422)["detail"]


async def test_a_unique_key_answers_the_live_job(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    queue = queue_name()
    first = await enqueue(client, headers, queue, unique={"key": "report-7"})
    again = await client.post(
        f"{API}/jobs",
        headers=headers,
        json={"queue": queue, "task": "t", "unique": {"key": "report-7"}},
    )
    assert again.status_code == 200
    assert (again.json()["id"], again.json()["duplicate"]) == (first["id"], True)


async def test_a_batch_of_ten_thousand_is_one_call(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    queue = queue_name()
    jobs = [{"queue": queue, "task": "t", "args": [n]} for n in range(10_000)]
    answer = await client.post(f"{API}/jobs/batch", headers=headers, json={"jobs": jobs})
    assert answer.status_code == 201, answer.text
    ids = answer.json()["ids"]
    assert len(set(ids)) == 10_000
    leases = await fetch(client, headers, queue, limit=100)
    assert len(leases) == 100


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"queue": "no spaces", "task": "t"}, 422),
        ({"queue": "q", "task": "../etc"}, 422),
        ({"queue": "q", "task": "t", "max_attempts": 0}, 422),
        ({"queue": "q", "task": "t", "run_at": "2026-01-01T00:00:00"}, 422),
        ({"queue": "q", "task": "t", "args": ["x" * 70_000]}, 413),
        ({"queue": "q", "task": "t", "surprise": 1}, 422),
    ],
)
async def test_bad_jobs_are_refused_with_a_problem(
    client: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any], status: int
) -> None:
    assert_problem(await client.post(f"{API}/jobs", headers=headers, json=body), status)


@pytest.mark.parametrize("path", ["/jobs", "/jobs/batch", "/fetch", "/ack"])
async def test_the_hot_routes_refuse_a_bad_body_as_every_route_does(
    client: httpx.AsyncClient, headers: dict[str, str], path: str
) -> None:
    """The routes served directly (keel.core.direct) read and check their body as FastAPI
    does: not JSON 400, not declared JSON 415, missing or off the schema 422 (located under
    ``body``), and no credential 401 before any of that but the JSON's own parse."""
    url = f"{API}{path}"
    json_type = {**headers, "content-type": "application/json"}
    assert_problem(await client.post(url, headers=json_type, content=b"{not json"), 400)
    text_type = {**headers, "content-type": "text/plain"}
    assert_problem(await client.post(url, headers=text_type, content=b'{"queue": "q"}'), 415)
    assert_problem(await client.post(url, headers=json_type), 422)
    off_schema = assert_problem(await client.post(url, headers=headers, json={"x": 1}), 422)
    assert all(error["location"][0] == "body" for error in off_schema["errors"]), off_schema
    assert_problem(await client.post(url, json={"x": 1}), 401)


async def test_a_made_up_lease_token_or_job_is_refused(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    queue = queue_name()
    job = await enqueue(client, headers, queue)
    await fetch(client, headers, queue)
    made_up = await client.post(
        f"{API}/jobs/{job['id']}/ack", headers=headers, json={"lease_token": "guess"}
    )
    assert_problem(made_up, 409)
    missing = await client.post(
        f"{API}/jobs/{uuid.uuid4()}/ack", headers=headers, json={"lease_token": "guess"}
    )
    assert_problem(missing, 404)
    oversize = await client.post(
        f"{API}/jobs/{job['id']}/ack",
        headers=headers,
        json={"lease_token": "guess", "result": "x" * 20_000},
    )
    assert_problem(oversize, 413)


async def test_permissions_are_per_queue_and_per_verb(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    emails, other = queue_name(), queue_name()
    producer = await member(app, admin, f"jobs:{emails}:enqueue")
    worker = await member(app, admin, "jobs:*:work")
    await enqueue(client, producer, emails)
    refused = await client.post(f"{API}/jobs", headers=producer, json={"queue": other, "task": "t"})
    assert f"jobs:{other}:enqueue" in assert_problem(refused, 403)["detail"]
    assert_problem(
        await client.post(
            f"{API}/fetch", headers=producer, json={"queues": [emails], "worker_id": "w"}
        ),
        403,
    )
    [lease] = await fetch(client, worker, emails)
    assert_problem(await client.get(f"{API}/jobs/{lease['id']}", headers=producer), 403)
    assert_problem(
        await client.post(f"{API}/jobs", headers=worker, json={"queue": emails, "task": "t"}), 403
    )
    acked = await client.post(
        f"{API}/jobs/{lease['id']}/ack", headers=worker, json={"lease_token": lease["lease_token"]}
    )
    assert acked.status_code == 200, acked.text


async def test_acks_in_one_request_are_each_accepted_or_refused_alone(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str], admin: TenantAdmin
) -> None:
    queue, other = queue_name(), queue_name()
    for _ in range(3):
        await enqueue(client, headers, queue)
    await enqueue(client, headers, other)
    leases = await fetch(client, headers, queue, limit=3)
    [foreign] = await fetch(client, headers, other)
    worker = await member(app, admin, f"jobs:{queue}:work")
    acks = [
        {"id": leases[0]["id"], "lease_token": leases[0]["lease_token"], "result": {"n": 0}},
        {"id": leases[1]["id"], "lease_token": "stale"},
        {"id": str(uuid.uuid4()), "lease_token": "x"},
        {"id": foreign["id"], "lease_token": foreign["lease_token"]},
        {"id": leases[2]["id"], "lease_token": leases[2]["lease_token"], "result": "x" * 20_000},
    ]
    answer = await client.post(f"{API}/ack", headers=worker, json={"acks": acks})
    assert answer.status_code == 200, answer.text
    assert answer.json()["acked"] == [leases[0]["id"]]
    refused = {item["id"]: item["status"] for item in answer.json()["refused"]}
    assert refused == {
        leases[1]["id"]: 409,
        acks[2]["id"]: 404,
        foreign["id"]: 403,
        leases[2]["id"]: 413,
    }
    done = (await client.get(f"{API}/jobs/{leases[0]['id']}", headers=headers)).json()
    assert (done["state"], done["result"]) == ("completed", {"n": 0})
    for untouched in (leases[1]["id"], foreign["id"], leases[2]["id"]):
        job = (await client.get(f"{API}/jobs/{untouched}", headers=headers)).json()
        assert job["state"] == "running"

    # The next fetch carries the rest of the worker's acks: one request for both.
    piggyback = [{"id": leases[1]["id"], "lease_token": leases[1]["lease_token"]}]
    await enqueue(client, headers, queue)
    body = {"queues": [queue], "worker_id": "w", "ack": piggyback}
    fetched = await client.post(f"{API}/fetch", headers=headers, json=body)
    assert fetched.json()["acked"] == [leases[1]["id"]]
    assert len(fetched.json()["jobs"]) == 1
    metrics = (await client.get("/metrics")).text
    assert f'keel_jobs_run_duration_seconds_count{{outcome="completed",queue="{queue}"}} 2.0' in (
        metrics
    )


@pytest.mark.parametrize("limited", [False, True], ids=["open", "limited"])
async def test_a_fetch_settles_each_ack_it_carries_alone(
    app: FastAPI,
    client: httpx.AsyncClient,
    headers: dict[str, str],
    admin: TenantAdmin,
    limited: bool,
) -> None:
    """A fetch's acks, on the queue it fetches or not, each completed or refused as
    ``POST /ack`` would; the first part of that is one call to the database with the claim
    (:func:`~keel.jobs.service.fetch_at_once`), whose leftovers (and a limited queue's
    claim) go the unit-of-work way."""
    queue, elsewhere, forbidden = queue_name(), queue_name(), queue_name()
    if limited:
        configured = await client.patch(
            f"{API}/queues/{queue}", headers=headers, json={"concurrency_limit": 4}
        )
        assert configured.status_code == 200, configured.text
    for _ in range(4):
        await enqueue(client, headers, queue)
    await enqueue(client, headers, elsewhere)
    await enqueue(client, headers, forbidden)
    leases = await fetch(client, headers, queue, limit=4)
    [other] = await fetch(client, headers, elsewhere)
    [foreign] = await fetch(client, headers, forbidden)
    worker = await member(app, admin, f"jobs:{queue}:work", f"jobs:{elsewhere}:work")
    for _ in range(3):
        await enqueue(client, headers, queue)
    acks = [
        {"id": leases[0]["id"], "lease_token": leases[0]["lease_token"], "result": {"n": [0]}},
        {"id": leases[1]["id"], "lease_token": leases[2]["lease_token"]},  # another job's
        {"id": str(uuid.uuid4()), "lease_token": "x"},
        {"id": other["id"], "lease_token": other["lease_token"], "result": "elsewhere"},
        {"id": foreign["id"], "lease_token": foreign["lease_token"]},
        {"id": leases[2]["id"], "lease_token": leases[2]["lease_token"], "result": "x" * 20_000},
        {"id": leases[3]["id"], "lease_token": leases[3]["lease_token"]},
    ]
    body = {"queues": [queue], "worker_id": "w", "limit": 10, "ack": acks}
    answer = await client.post(f"{API}/fetch", headers=worker, json=body)
    assert answer.status_code == 200, answer.text
    assert sorted(answer.json()["acked"]) == sorted([leases[0]["id"], other["id"], leases[3]["id"]])
    refused = {item["id"]: item["status"] for item in answer.json()["refused"]}
    assert refused == {
        leases[1]["id"]: 409,
        acks[2]["id"]: 404,
        foreign["id"]: 403,
        leases[2]["id"]: 413,
    }
    # Two of the four running jobs ended: a limit of 4 leaves room for two of the three new.
    assert len(answer.json()["jobs"]) == (2 if limited else 3)
    expected = {
        leases[0]["id"]: ("completed", {"n": [0]}),
        other["id"]: ("completed", "elsewhere"),
        leases[3]["id"]: ("completed", None),
        leases[1]["id"]: ("running", None),
        leases[2]["id"]: ("running", None),
        foreign["id"]: ("running", None),
    }
    for job_id, (state, result) in expected.items():
        job = (await client.get(f"{API}/jobs/{job_id}", headers=headers)).json()
        assert (job["state"], job["result"]) == (state, result), job_id
    # A refused ack changed nothing: the right token still completes the job.
    again = [{"id": leases[1]["id"], "lease_token": leases[1]["lease_token"]}]
    body = {"queues": [queue], "worker_id": "w", "ack": again}
    answer = await client.post(f"{API}/fetch", headers=worker, json=body)
    assert (answer.json()["acked"], answer.json()["refused"]) == ([leases[1]["id"]], [])


async def test_a_batch_says_which_jobs_were_duplicates(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    queue = queue_name()
    first = await enqueue(client, headers, queue, unique={"key": "k-1"})
    jobs = [
        {"queue": queue, "task": "t", "unique": {"key": "k-1"}},
        {"queue": queue, "task": "t"},
        {"queue": queue, "task": "t", "unique": {"key": "k-2"}},
    ]
    answer = (await client.post(f"{API}/jobs/batch", headers=headers, json={"jobs": jobs})).json()
    assert answer["duplicates"] == [True, False, False]
    assert answer["ids"][0] == first["id"]


async def test_an_expired_idempotency_key_not_yet_pruned_is_a_new_key(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str], admin: TenantAdmin
) -> None:
    queue, key = queue_name(), str(uuid.uuid4())
    keyed = {**headers, "Idempotency-Key": key}
    first = await client.post(f"{API}/jobs", headers=keyed, json={"queue": queue, "task": "t"})
    async with app.state.keel.database.session() as session:
        await session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == key)
            .values(created_at=utcnow() - RETENTION - timedelta(minutes=1))
            .execution_options(all_tenants=True)
        )
    again = await client.post(f"{API}/jobs", headers=keyed, json={"queue": queue, "task": "t"})
    assert again.status_code == 201, again.text
    assert again.json()["id"] != first.json()["id"]
    replay = await client.post(f"{API}/jobs", headers=keyed, json={"queue": queue, "task": "t"})
    assert replay.json()["id"] == again.json()["id"]
