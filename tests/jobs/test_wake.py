"""Waking long-polling fetches, as real connections see them: a worker that goes away while it
waits is leased nothing, and on PostgreSQL without Redis a fetch waiting on one replica wakes
when another replica commits a job (``LISTEN``/``NOTIFY``), not at its next recheck."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from keel.app import create_app
from keel.jobs.signals import JOB_SIGNALS_RESOURCE
from keel.settings import Settings
from tests.support.apps import lifespan_of
from tests.support.asgi import serve_over_tcp
from tests.support.tenants import TenantAdmin, make_tenant_admin


async def test_a_worker_that_goes_away_while_it_waits_is_leased_nothing(
    settings: Settings,
) -> None:
    app = create_app(settings)
    async with lifespan_of(app), serve_over_tcp(app) as url:
        admin = await make_tenant_admin(app)
        queue = f"gone-{uuid.uuid4().hex[:8]}"
        signals = app.state.keel.resources[JOB_SIGNALS_RESOURCE]
        signals.recheck_seconds = 0.2  # it looks often: the disconnect is what must stop it
        body = {"queues": [queue], "wait_seconds": 20, "worker_id": "doomed"}
        # The other calls get a loaded machine's room; only the fetch's wait for its answer is
        # given up on purpose (its connect keeps the room: a loaded machine took over 0.5 s).
        gives_up = httpx.Timeout(30.0, read=0.5)
        async with httpx.AsyncClient(base_url=url, headers=admin.headers, timeout=30) as http:
            with pytest.raises(httpx.ReadTimeout):  # the worker gives up: its connection closes
                await http.post("/jobs/v1/fetch", json=body, timeout=gives_up)
            await asyncio.sleep(0.5)  # the server has noticed by now
            job = (await http.post("/jobs/v1/jobs", json={"queue": queue, "task": "t"})).json()
            await asyncio.sleep(0.6)  # three rechecks: a fetch still waiting would take it
            state = (await http.get(f"/jobs/v1/jobs/{job['id']}")).json()["state"]
    assert state == "available"


async def enqueue(http: httpx.AsyncClient, admin: TenantAdmin, queue: str) -> dict[str, Any]:
    answer = await http.post(
        "/jobs/v1/jobs", headers=admin.headers, json={"queue": queue, "task": "t"}
    )
    assert answer.status_code == 201, answer.text
    document: dict[str, Any] = answer.json()
    return document


@pytest.mark.postgres
async def test_postgres_replicas_without_redis_wake_each_other_by_notify(
    postgres_url: str, tmp_path: Any
) -> None:
    settings = Settings(
        database_url=postgres_url,
        data_dir=tmp_path / ".keel",
        redis_url=None,
        master_key="dGVzdC1vbmx5LW1hc3Rlci1rZXktMzItYnl0ZXMhISE=",
        public_url="http://keel.test",
    )
    one, other = create_app(settings), create_app(settings)
    async with lifespan_of(one), lifespan_of(other):
        admin = await make_tenant_admin(one)
        queue = f"notify-{uuid.uuid4().hex[:8]}"
        other.state.keel.resources[JOB_SIGNALS_RESOURCE].recheck_seconds = 60.0
        transports = [httpx.ASGITransport(app=app) for app in (one, other)]
        async with (
            httpx.AsyncClient(transport=transports[0], base_url="http://keel.test") as producer,
            httpx.AsyncClient(transport=transports[1], base_url="http://keel.test") as worker,
        ):
            await asyncio.sleep(0.5)  # the listeners are up
            body = {"queues": [queue], "wait_seconds": 20, "worker_id": "w"}
            waiting = asyncio.create_task(
                worker.post("/jobs/v1/fetch", headers=admin.headers, json=body)
            )
            await asyncio.sleep(0.3)
            started = time.monotonic()
            job = await enqueue(producer, admin, queue)
            answer = await asyncio.wait_for(waiting, timeout=15)
            took = time.monotonic() - started
    assert [lease["id"] for lease in answer.json()["jobs"]] == [job["id"]]
    assert took < 5, took
