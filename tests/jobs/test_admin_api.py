"""The operators' verbs of ``/jobs/v1``, on SQLite and PostgreSQL: queues (pause, resume,
limits, statistics), cancel and requeue, the dead letter queue and cron schedules. Every
change is audited; bad input is a problem+json 4xx."""

from __future__ import annotations

import uuid

import httpx
from fastapi import FastAPI

from tests.jobs.test_api import API, assert_problem, enqueue, fetch, queue_name
from tests.support.audit import audit_events
from tests.support.tenants import TenantAdmin, member


async def test_a_paused_queue_hands_out_nothing_until_it_resumes(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers, queue = admin.headers, queue_name()
    job = await enqueue(client, headers, queue)
    paused = await client.post(f"{API}/queues/{queue}/pause", headers=headers)
    assert paused.status_code == 200, paused.text
    assert paused.json()["paused"] is True
    assert await fetch(client, headers, queue) == []
    late = await enqueue(client, headers, queue)  # enqueues still land
    assert late["state"] == "available"
    resumed = await client.post(f"{API}/queues/{queue}/resume", headers=headers)
    assert resumed.json()["paused"] is False
    leases = await fetch(client, headers, queue, limit=10)
    assert {lease["id"] for lease in leases} == {job["id"], late["id"]}
    actions = [e.action for e in await audit_events(app, admin.tenant_id, action_prefix="jobs.")]
    assert actions[:2] == ["jobs.queue.resume", "jobs.queue.pause"]


async def test_queue_limits_are_set_shown_audited_and_removed(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers, queue = admin.headers, queue_name()
    for _ in range(3):
        await enqueue(client, headers, queue)
    limited = await client.patch(
        f"{API}/queues/{queue}", headers=headers, json={"concurrency_limit": 2}
    )
    assert limited.status_code == 200, limited.text
    assert (limited.json()["concurrency_limit"], limited.json()["rate_limit_per_second"]) == (
        2,
        None,
    )
    assert len(await fetch(client, headers, queue, limit=10)) == 2
    assert await fetch(client, headers, queue) == []
    overview = (await client.get(f"{API}/queues/{queue}", headers=headers)).json()
    assert overview["states"]["running"]["count"] == 2
    assert overview["states"]["available"]["count"] == 1
    listed = (await client.get(f"{API}/queues", headers=headers)).json()["queues"]
    assert queue in [q["name"] for q in listed]

    removed = await client.patch(
        f"{API}/queues/{queue}", headers=headers, json={"concurrency_limit": None}
    )
    assert removed.json()["concurrency_limit"] is None
    assert len(await fetch(client, headers, queue)) == 1
    [latest, first] = await audit_events(app, admin.tenant_id, action_prefix="jobs.queue.configure")
    assert first.data == {"concurrency_limit": {"before": None, "after": 2}}
    assert latest.data == {"concurrency_limit": {"before": 2, "after": None}}

    bad = await client.patch(
        f"{API}/queues/{queue}", headers=headers, json={"rate_limit_per_second": 0}
    )
    assert_problem(bad, 422)
    assert_problem(await client.get(f"{API}/queues/{queue_name()}", headers=headers), 404)


async def test_a_cancelled_running_job_is_told_at_its_heartbeat_and_cannot_be_acked(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    queue = queue_name()
    job = await enqueue(client, headers, queue)
    [lease] = await fetch(client, headers, queue)
    cancelled = await client.post(f"{API}/jobs/{job['id']}/cancel", headers=headers)
    assert cancelled.json()["state"] == "cancelled"
    beat = await client.post(
        f"{API}/jobs/{job['id']}/heartbeat",
        headers=headers,
        json={"lease_token": lease["lease_token"]},
    )
    assert beat.json() == {"cancel_requested": True, "lease_expires_at": None}
    refused = await client.post(
        f"{API}/jobs/{job['id']}/ack", headers=headers, json={"lease_token": lease["lease_token"]}
    )
    assert_problem(refused, 409)
    requeued = await client.post(f"{API}/jobs/{job['id']}/requeue", headers=headers)
    assert (requeued.json()["state"], requeued.json()["attempt"]) == ("available", 0)


async def test_dead_jobs_are_requeued_by_queue_or_by_id(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers, queue = admin.headers, queue_name()
    dead = []
    for _ in range(3):
        job = await enqueue(client, headers, queue, max_attempts=1)
        [lease] = await fetch(client, headers, queue)
        failed = await client.post(
            f"{API}/jobs/{job['id']}/fail",
            headers=headers,
            json={"lease_token": lease["lease_token"], "error": "boom"},
        )
        assert failed.json()["state"] == "discarded"
        dead.append(job["id"])
    one = await client.post(f"{API}/dead/requeue", headers=headers, json={"ids": [dead[0]]})
    assert one.json() == {"requeued": 1}
    rest = await client.post(f"{API}/dead/requeue", headers=headers, json={"queue": queue})
    assert rest.json() == {"requeued": 2}
    assert len(await fetch(client, headers, queue, limit=10)) == 3
    [event, *_] = await audit_events(app, admin.tenant_id, action_prefix="jobs.dead.requeue")
    assert event.data == {"queue": queue, "ids": None, "requeued": 2}


async def test_only_a_queue_admin_changes_a_queue(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    queue = queue_name()
    worker = await member(app, admin, f"jobs:{queue}:work", f"jobs:{queue}:read")
    job = await enqueue(client, admin.headers, queue)
    for verb in ("pause", "resume"):
        assert_problem(await client.post(f"{API}/queues/{queue}/{verb}", headers=worker), 403)
    assert_problem(await client.post(f"{API}/jobs/{job['id']}/cancel", headers=worker), 403)
    assert_problem(
        await client.post(f"{API}/dead/requeue", headers=worker, json={"queue": queue}), 403
    )
    assert_problem(await client.post(f"{API}/dead/requeue", headers=worker, json={}), 403)
    assert (await client.get(f"{API}/queues/{queue}", headers=worker)).status_code == 200


async def test_a_schedule_is_put_read_listed_and_deleted(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers, queue, name = admin.headers, queue_name(), f"nightly-{uuid.uuid4().hex[:6]}"
    body = {"cron": "0 2 * * *", "timezone": "Europe/Paris", "queue": queue, "task": "report"}
    created = await client.put(f"{API}/schedules/{name}", headers=headers, json=body)
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert (schedule["cron"], schedule["timezone"], schedule["enabled"]) == (
        "0 2 * * *",
        "Europe/Paris",
        True,
    )
    # 02:00 in Paris is 00:00 or 01:00 UTC.
    assert schedule["next_run_at"][11:16] in ("00:00", "01:00")
    replaced = await client.put(
        f"{API}/schedules/{name}", headers=headers, json={**body, "enabled": False}
    )
    assert (replaced.status_code, replaced.json()["enabled"]) == (200, False)
    names = [
        s["name"]
        for s in (await client.get(f"{API}/schedules", headers=headers)).json()["schedules"]
    ]
    assert name in names
    assert (await client.delete(f"{API}/schedules/{name}", headers=headers)).status_code == 204
    assert_problem(await client.get(f"{API}/schedules/{name}", headers=headers), 404)
    actions = [
        e.action for e in await audit_events(app, admin.tenant_id, action_prefix="jobs.schedule")
    ]
    assert actions == ["jobs.schedule.delete", "jobs.schedule.put", "jobs.schedule.put"]


async def test_a_cron_or_time_zone_that_does_not_parse_is_a_422(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for bad in ({"cron": "61 * * * *"}, {"cron": "every day"}, {"timezone": "Mars/Olympus"}):
        body = {"cron": "0 2 * * *", "queue": "q", "task": "t", **bad}
        answer = await client.put(
            f"{API}/schedules/s-{uuid.uuid4().hex[:6]}", headers=headers, json=body
        )
        assert_problem(answer, 422)
