"""The jobs metrics: depth and oldest age per queue and state, run durations and failures,
on a registry of their own and as a running Keel exposes them at ``/metrics``."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from keel.app import create_app
from keel.core.db import Database
from keel.jobs.metrics import JobsMetrics
from keel.jobs.service import NewJob, claim, complete, enqueue_many, fail, queue_stats
from keel.settings import Settings
from tests.support.apps import lifespan_of


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_depths_durations_and_failures_by_queue(database: Database, tenant_id: str) -> None:
    queue = f"m-{uuid.uuid4().hex[:8]}"
    async with database.session() as session:
        ids = await enqueue_many(
            session, tenant_id, [NewJob(queue, "t"), NewJob(queue, "t"), NewJob(queue, "t")]
        )
    registry = CollectorRegistry()
    metrics = JobsMetrics(registry)
    async with database.session() as session:
        first, second = await claim(session, tenant_id, [queue], worker_id="w", limit=2)
    async with database.session() as session:
        done = await complete(session, tenant_id, first.job_id, first.lease_token)
        failed = await fail(
            session, tenant_id, second.job_id, second.lease_token, "x", discard=True
        )
    metrics.observe_attempt_end(done)
    metrics.observe_attempt_end(failed)
    async with database.session() as session:
        metrics.set_depths(await queue_stats(session, None))

    depth = samples(registry, "keel_jobs")
    assert depth[(("queue", queue), ("state", "available"))] == 1
    assert depth[(("queue", queue), ("state", "completed"))] == 1
    assert depth[(("queue", queue), ("state", "discarded"))] == 1
    ages = samples(registry, "keel_jobs_oldest_age_seconds")
    assert 0 <= ages[(("queue", queue), ("state", "available"))] < 60
    runs = samples(registry, "keel_jobs_run_duration_seconds_count")
    assert runs[(("outcome", "completed"), ("queue", queue))] == 1
    assert runs[(("outcome", "failed"), ("queue", queue))] == 1
    failures = samples(registry, "keel_jobs_failures_total")
    assert failures == {(("outcome", "discarded"), ("queue", queue)): 1}
    assert ids[2] not in {first.job_id, second.job_id}


async def test_a_running_keel_exposes_the_queue_gauges(
    settings: Settings, database: Database, tenant_id: str
) -> None:
    queue = f"m-{uuid.uuid4().hex[:8]}"
    async with database.session() as session:
        await enqueue_many(session, tenant_id, [NewJob(queue, "t")])
    app = create_app(settings.model_copy(update={"services": ["jobs"]}))
    async with lifespan_of(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as http:
            wanted = f'keel_jobs{{queue="{queue}",state="available"}} 1.0'
            deadline = time.monotonic() + 10
            text = ""
            while time.monotonic() < deadline:  # the refresh runs at start-up, then every 10 s
                text = (await http.get("/metrics")).text
                if wanted in text:
                    break
                await asyncio.sleep(0.05)
    assert wanted in text
    assert "keel_jobs_run_duration_seconds" in text
