"""``keel jobs ...`` as an operator runs it, on SQLite and PostgreSQL: queues and statistics,
the dead letter queue, requeue, cancel, pause and resume, limits and schedules; every change
audited; bad input one line with exit code 2."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from keel.core.audit import AuditOutbox
from keel.core.db import Database
from keel.core.tenancy import DEFAULT_TENANT, get_tenant_by_slug
from keel.jobs.service import NewJob, claim, enqueue_many, fail
from keel.settings import load_settings
from tests.support.keel_cli import Deployment, initialised_deployment


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    name = f"keel_jobs_{uuid.uuid4().hex[:12]}"
    with initialised_deployment(request, tmp_path, name) as found:
        yield found


def database_of(deployment: Deployment) -> Database:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in deployment.env.items():
            patch.setenv(name, value)
        patch.chdir(deployment.cwd)
        return Database.from_settings(load_settings())


def put_jobs(deployment: Deployment, queue: str, count: int, *, dead: int = 0) -> list[str]:
    """``count`` jobs on ``queue`` of the default tenant, the first ``dead`` of them failed for
    good (each with one attempt and the error ``boom``)."""

    async def run() -> list[str]:
        database = database_of(deployment)
        try:
            async with database.session() as session:
                tenant = (await get_tenant_by_slug(session, DEFAULT_TENANT)).id
                news = [NewJob(queue, "t", [n], max_attempts=1) for n in range(count)]
                ids = await enqueue_many(session, tenant, news)
            async with database.session() as session:
                for lease in await claim(session, tenant, [queue], worker_id="w", limit=dead):
                    await fail(session, tenant, lease.job_id, lease.lease_token, "boom")
            return ids
        finally:
            await database.dispose()

    return asyncio.run(run())


def audited_actions(deployment: Deployment) -> list[str]:
    """The jobs actions the commands recorded, oldest first (still in the audit outbox: no
    ``keel serve`` ran to sequence them into the log)."""

    async def run() -> list[str]:
        database = database_of(deployment)
        try:
            async with database.session() as session:
                documents = await session.scalars(
                    select(AuditOutbox.document).order_by(AuditOutbox.seq)
                )
                actions = [json.loads(document)["action"] for document in documents]
            return [action for action in actions if action.startswith("jobs.")]
        finally:
            await database.dispose()

    return asyncio.run(run())


def test_an_operator_sees_queues_and_empties_the_dead_letter_queue(
    deployment: Deployment,
) -> None:
    ids = put_jobs(deployment, "emails", 5, dead=2)
    table = deployment.ok("jobs", "queues").splitlines()
    assert table[0].split("\t")[:8] == [
        "queue",
        "paused",
        "limit",
        "rate/s",
        "available",
        "scheduled",
        "running",
        "retryable",
    ]
    row = table[1].split("\t")
    assert row[:5] == ["emails", "no", "-", "-", "3"]
    assert row[8] == "2"
    stats = json.loads(deployment.ok("jobs", "stats", "--json"))
    assert (stats["available"], stats["discarded"]) == (3, 2)

    dead = deployment.ok("jobs", "dead").splitlines()
    assert sorted(line.split("\t")[0] for line in dead) == sorted(ids[:2])
    assert all(line.endswith("\tboom") for line in dead)
    assert json.loads(deployment.ok("jobs", "show", ids[0]))["errors"][0]["error"] == "boom"

    assert "job " in deployment.ok("jobs", "requeue", ids[0])
    assert deployment.ok("jobs", "requeue", "--all-dead", "--queue", "emails").strip() == (
        "1 dead jobs requeued"
    )
    assert deployment.ok("jobs", "dead").strip() == ""
    assert deployment.ok("jobs", "cancel", ids[4]).strip() == f"job {ids[4]} cancelled"
    assert audited_actions(deployment) == [
        "jobs.job.requeue",
        "jobs.dead.requeue",
        "jobs.job.cancel",
    ]


def test_an_operator_pauses_limits_and_schedules(deployment: Deployment) -> None:
    assert deployment.ok("jobs", "pause", "emails").strip() == "queue emails paused"
    assert deployment.ok(
        "jobs", "limit", "emails", "--concurrency", "3", "--rate", "10"
    ).strip() == ("queue emails: concurrency 3, rate 10/s")
    [queue] = json.loads(deployment.ok("jobs", "queues", "--json"))
    assert (queue["paused"], queue["concurrency_limit"], queue["rate_limit_per_second"]) == (
        True,
        3,
        10.0,
    )
    deployment.ok("jobs", "limit", "emails", "--rate", "none")
    deployment.ok("jobs", "resume", "emails")
    [queue] = json.loads(deployment.ok("jobs", "queues", "--json"))
    assert (queue["paused"], queue["concurrency_limit"], queue["rate_limit_per_second"]) == (
        False,
        3,
        None,
    )

    created = deployment.ok(
        "jobs",
        "schedules",
        "set",
        "nightly",
        "--cron",
        "0 2 * * *",
        "--timezone",
        "Europe/Paris",
        "--task",
        "report",
        "--args",
        '{"kind": "daily"}',
    )
    assert created.startswith("schedule nightly created; next run ")
    [listed] = deployment.ok("jobs", "schedules", "list").splitlines()
    assert listed.split("\t")[:5] == ["nightly", "0 2 * * *", "Europe/Paris", "default", "report"]
    assert deployment.ok("jobs", "schedules", "delete", "nightly").strip() == (
        "schedule nightly deleted"
    )
    assert audited_actions(deployment) == [
        "jobs.queue.pause",
        "jobs.queue.configure",
        "jobs.queue.configure",
        "jobs.queue.resume",
        "jobs.schedule.put",
        "jobs.schedule.delete",
    ]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("jobs", "schedules", "set", "s", "--cron", "61 * * * *", "--task", "t"), "cron"),
        (
            (
                "jobs",
                "schedules",
                "set",
                "s",
                "--cron",
                "* * * * *",
                "--task",
                "t",
                "--timezone",
                "Mars/Base",
            ),
            "zone",
        ),
        (
            ("jobs", "schedules", "set", "s", "--cron", "* * * * *", "--task", "t", "--args", "{"),
            "JSON",
        ),
        (("jobs", "limit", "q", "--concurrency", "many"), "number"),
        (("jobs", "limit", "q"), "--concurrency"),
        (("jobs", "requeue"), "--all-dead"),
        (("jobs", "show", "no-such-job"), "no-such-job"),
        (("jobs", "pause", "not a queue"), "not a queue"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    deployment: Deployment, args: tuple[str, ...], says: str
) -> None:
    assert says.lower() in deployment.refused(*args).lower()
