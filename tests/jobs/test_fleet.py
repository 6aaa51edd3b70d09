"""The jobs service as a fleet runs it, with real processes on SQLite and PostgreSQL: ``keel
serve`` (restarted mid-burst), ``keel worker`` replicas firing cron schedules, and SDK workers
(``python -m keel_client.jobs run tests.jobs.fleet_worker:worker``) recording what ran when.

- a restart of Keel during a burst of 5,000 enqueues loses none that was acknowledged and
  duplicates none (the producers retry with their ``Idempotency-Key``);
- a cron every second, with several replicas firing, runs exactly 20 times in 20 seconds;
- a concurrency limit of 3 is never exceeded by three workers of 4 slots each;
- a rate limit of 10 jobs a second holds within 10% over 10 seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.databases import database_for
from tests.support.keel_cli import initialise
from tests.support.keel_process import (
    KEEL,
    REPOSITORY,
    KeelServer,
    free_port,
    keel_env,
    stop_process,
    wait_for,
)


@dataclass
class Fleet:
    """One Keel deployment of this module's tests and the processes started on it."""

    cwd: Path
    env: dict[str, str]
    port: int
    api_key: str
    server: KeelServer | None = None
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30.0)

    def start_server(self) -> None:
        log = self.cwd / f"serve-{time.monotonic_ns()}.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [KEEL, "serve", "--port", str(self.port)],
                cwd=self.cwd,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.server = KeelServer(process, self.url, log)
        self.server.wait_ready()

    def kill_server(self) -> None:
        """``kill -9``: nothing is flushed, nothing is said goodbye to."""
        assert self.server is not None
        self.server.process.send_signal(signal.SIGKILL)
        self.server.process.wait(10)

    def start(self, *command: str, **variables: str) -> subprocess.Popen[bytes]:
        """A child in the deployment's directory and environment (plus ``variables``)."""
        env = {**self.env, "KEEL_URL": self.url, "KEEL_TOKEN": self.api_key, **variables}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), env.get("PYTHONPATH")]))
        path = self.cwd / f"{Path(command[0]).name}-{time.monotonic_ns()}.log"
        with path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=self.cwd, env=env, stdout=subprocess.DEVNULL, stderr=log
            )
        self.others.append(process)
        self.logs[process.pid] = path
        return process

    def log_of(self, process: subprocess.Popen[bytes]) -> str:
        return self.logs[process.pid].read_text()

    def start_workers(self, count: int, queue: str, record: Path, concurrency: int) -> None:
        """``count`` worker processes, returned once each has started fetching: on a loaded
        machine one worker may otherwise drain a batch before the others have imported."""
        started = [
            self.start(
                sys.executable,
                *("-m", "keel_client.jobs", "run", "tests.jobs.fleet_worker:worker"),
                FLEET_QUEUES=queue,
                FLEET_CONCURRENCY=str(concurrency),
                FLEET_RECORD=str(record),
            )
            for _ in range(count)
        ]
        wait_for(
            lambda: all("fetching from" in self.log_of(process) for process in started),
            timeout=60,
            message="a worker did not start fetching",
        )

    def stop_others(self) -> None:
        for process in self.others:
            stop_process(process)
        self.others.clear()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    cwd = tmp_path_factory.mktemp(f"fleet-{request.param}")
    with database_for(request, "keel_fleet") as url:
        env = keel_env(KEEL_LOG_LEVEL="warning")
        if url is not None:
            env["KEEL_DATABASE_URL"] = url
        deployment = Fleet(cwd, env, free_port(), initialise(cwd, env))
        deployment.start_server()
        try:
            yield deployment
        finally:
            deployment.stop_others()
            if deployment.server is not None:
                stop_process(deployment.server.process)


@pytest.fixture
def queue() -> str:
    return f"fleet-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "record.txt"


@pytest.fixture(autouse=True)
def _stop_children(fleet: Fleet) -> Iterator[None]:
    yield
    fleet.stop_others()


def records(path: Path) -> list[tuple[str, str, float, float, int]]:
    """``(task, job id, start, end, pid)`` of every task that ran."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        task, job_id, start, end, pid = line.split()
        rows.append((task, job_id, float(start), float(end), int(pid)))
    return rows


def all_jobs(http: httpx.Client, queue: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"queue": queue, "limit": 500}
        if after:
            params["after"] = after
        page = http.get("/jobs/v1/jobs", params=params)
        assert page.status_code == 200, page.text
        jobs += page.json()["jobs"]
        after = page.json()["next"]
        if after is None:
            return jobs


def test_a_restart_during_a_burst_of_5000_enqueues_loses_and_duplicates_none(
    fleet: Fleet, queue: str
) -> None:
    total = 5000
    keys = [str(uuid.uuid4()) for _ in range(total)]
    acknowledged: dict[int, str] = {}
    a_third_in = asyncio.Event()

    async def enqueue_one(http: httpx.AsyncClient, number: int) -> None:
        body = {"queue": queue, "task": "tick", "args": [number]}
        while True:
            with contextlib.suppress(httpx.TransportError):
                answer = await http.post(
                    "/jobs/v1/jobs", json=body, headers={"Idempotency-Key": keys[number]}
                )
                if answer.status_code in (200, 201):
                    acknowledged[number] = answer.json()["id"]
                    if len(acknowledged) >= total // 3:
                        a_third_in.set()
                    return
                assert answer.status_code == 503, answer.text  # starting up: retry
            await asyncio.sleep(0.05)

    async def producers() -> None:
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(
            base_url=fleet.url, headers=fleet.headers, timeout=10.0, limits=limits
        ) as http:
            numbers = iter(range(total))

            async def producer() -> None:
                for number in numbers:
                    await enqueue_one(http, number)

            await asyncio.gather(*(producer() for _ in range(8)))

    async def restart_midway() -> None:
        await a_third_in.wait()
        await asyncio.to_thread(fleet.kill_server)
        await asyncio.to_thread(fleet.start_server)

    async def burst() -> None:
        await asyncio.gather(producers(), restart_midway())

    asyncio.run(burst())
    assert len(acknowledged) == total
    with fleet.http() as http:
        stored = all_jobs(http, queue)
    assert len(stored) == total  # every acknowledged enqueue, once
    assert {job["id"] for job in stored} == set(acknowledged.values())
    assert sorted(job["args"][0] for job in stored) == list(range(total))


def test_a_cron_every_second_fires_exactly_20_times_in_20_seconds_across_replicas(
    fleet: Fleet, queue: str, record: Path
) -> None:
    for _ in range(2):  # two replicas of the background work (`keel serve` too on SQLite)
        replica = fleet.start(KEEL, "worker", KEEL_LOG_LEVEL="info")
        wait_for(
            lambda replica=replica: "worker.started" in fleet.log_of(replica),
            timeout=30,
            message="keel worker did not start",
        )
    fleet.start_workers(1, queue, record, concurrency=10)
    name = f"every-second-{uuid.uuid4().hex[:6]}"
    with fleet.http() as http:
        put = http.put(
            f"/jobs/v1/schedules/{name}",
            json={"cron": "* * * * * *", "queue": queue, "task": "tick"},
        )
        assert put.status_code == 201, put.text
        first = datetime.fromisoformat(put.json()["next_run_at"]).timestamp()
        time.sleep(max(0.0, first + 21.5 - time.time()))
        assert http.delete(f"/jobs/v1/schedules/{name}").status_code == 204
        jobs = all_jobs(http, queue)
    ticks = Counter(job["unique_key"] for job in jobs)
    assert max(ticks.values()) == 1, "a tick fired twice"
    # The tick is the end of the unique key: cron:<name>:<tick>.
    fired = sorted(
        datetime.fromisoformat(job["unique_key"].split(":", 2)[2]).timestamp() for job in jobs
    )
    in_window = [moment for moment in fired if first <= moment < first + 20]
    assert len(in_window) == 20, fired
    # They ran, each once, on the worker.
    ran = wait_for(
        lambda: (rows := records(record)) and len(rows) >= len(in_window) and rows,
        timeout=10,
        message="the fired jobs did not all run",
    )
    assert max(Counter(row[1] for row in ran).values()) == 1


def test_a_concurrency_limit_of_3_holds_across_three_workers(
    fleet: Fleet, queue: str, record: Path
) -> None:
    jobs = 24
    with fleet.http() as http:
        limited = http.patch(f"/jobs/v1/queues/{queue}", json={"concurrency_limit": 3})
        assert limited.status_code == 200, limited.text
        fleet.start_workers(3, queue, record, concurrency=4)
        batch = [{"queue": queue, "task": "hold", "args": [0.25]} for _ in range(jobs)]
        assert http.post("/jobs/v1/jobs/batch", json={"jobs": batch}).status_code == 201
    rows = wait_for(
        lambda: len(found := records(record)) >= jobs and found,
        timeout=30,
        message="the jobs did not all run",
    )
    events = sorted([(start, 1) for _, _, start, _, _ in rows] + [(end, -1) for *_, end, _ in rows])
    running, most = 0, 0
    for _, change in events:  # at one instant an end sorts before a start
        running += change
        most = max(most, running)
    assert most == 3, "the limit was exceeded, or never reached"
    assert len({pid for *_, pid in rows}) >= 2, "the jobs were not shared between workers"


def test_a_rate_limit_of_10_a_second_holds_within_10_percent_over_10_seconds(
    fleet: Fleet, queue: str, record: Path
) -> None:
    jobs = 140
    with fleet.http() as http:
        limited = http.patch(f"/jobs/v1/queues/{queue}", json={"rate_limit_per_second": 10})
        assert limited.status_code == 200, limited.text
        batch = [{"queue": queue, "task": "tick"} for _ in range(jobs)]
        assert http.post("/jobs/v1/jobs/batch", json={"jobs": batch}).status_code == 201
        fleet.start_workers(2, queue, record, concurrency=10)
    rows = wait_for(
        lambda: len(found := records(record)) >= 115 and found,
        timeout=30,
        message="too few jobs ran",
    )
    starts = sorted(start for _, _, start, _, _ in rows)
    first = starts[0]
    in_ten_seconds = sum(1 for moment in starts if first <= moment < first + 10)
    assert 90 <= in_ten_seconds <= 110, in_ten_seconds
