"""Jobs figures (issue 18): end-to-end jobs/s and idle enqueue-to-start latency, Keel's jobs
service against arq and procrastinate in the same run.

- ``jobs.<system>.throughput_per_s``: ``JOBS`` no-op jobs enqueued one call each by
  ``ENQUEUERS`` concurrent enqueuers in this process, to a worker already running and idle in
  its own process at concurrency 10; jobs/s from the first enqueue until the system's own store
  says every job is finished (polled every ``POLL_SECONDS``). Each job's success is checked
  after the clock stops.
- ``jobs.<system>.latency_p50_ms`` (p99 in ``extra``): ``LATENCY_JOBS`` jobs one at a time,
  each after the previous one started and a random pause of 10-510 ms (the worker idle); each from
  ``time.time()`` just before the enqueue call to the task's own ``time.time()`` at its start
  (pushed to a Redis list by the task, see :mod:`benchmarks._jobs_peers`).

Systems, one after the other, each on its own store, worker and warm-up (``WARMUP_JOBS``
timed like the latency jobs, not counted):

- ``procrastinate``: procrastinate on PostgreSQL (a database of its own, created and dropped
  here), ``procrastinate worker --concurrency=10``, deferring by task name;
- ``arq_shipped`` and ``arq_tuned``: arq on Redis (database ``REDIS_DB``, its keys deleted
  before and after), ``arq`` with ``max_jobs=10`` and ``poll_delay`` 0.5 s (the default) or
  0.01 s;
- ``keel_postgresql`` and ``keel_sqlite``: ``keel serve`` on PostgreSQL (a database of its
  own) or SQLite, the SDK's ``Worker`` at concurrency 10 over HTTP, the SDK's ``enqueue``.

The comparison figures ``jobs.throughput_per_s`` (ratio Keel / the faster peer; target at
least 1.0) and ``jobs.latency_p50_ms``, ``jobs.latency_p99_ms`` (ratio procrastinate / Keel,
lower is better; target at least 1.0) come from the PostgreSQL line; ``jobs.sqlite_*`` are
the same for the SQLite line.

``python -m benchmarks jobs`` (``make bench BENCH=jobs`` installs arq first) needs Redis and
PostgreSQL as the tests use them; ``BENCH_JOBS_SYSTEMS`` picks systems (see :data:`SYSTEMS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchmarks import _jobs_peers as peers
from benchmarks._databases import POSTGRES_ADMIN_DSN, postgres_database
from benchmarks._figures import Figure, emit, machine
from benchmarks._servers import (
    REPO_ROOT,
    Server,
    clean_env,
    free_port,
    keel_admin_key,
    keel_serve_command,
)
from benchmarks.bench_auth import BENCH_MASTER_KEY

JOBS = 5_000
ENQUEUERS = 10
LATENCY_JOBS = 200
WARMUP_JOBS = 20
POLL_SECONDS = 0.01
#: The pause before each latency job: random over more than arq's 0.5 s poll, so that a polling
#: worker is met at any point of its cycle (a fixed pause would meet it at the same point).
GAP_SECONDS = (0.01, 0.51)
#: Long enough for arq as shipped (200 jobs/s) with room for a slow machine.
THROUGHPUT_TIMEOUT = 300.0
REDIS_URL = os.environ.get("KEEL_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = 14
TARGET_THROUGHPUT_RATIO = 1.0
TARGET_LATENCY_RATIO = 1.0


class Failed(RuntimeError):
    pass


class System(Protocol):
    """One job system as the benchmark drives it: its clients in this process."""

    async def enqueue(self, mark: int | None) -> None: ...

    async def unfinished(self) -> int:
        """Jobs enqueued and not yet finished, as the system's store says."""
        ...

    async def succeeded(self) -> int:
        """Jobs finished with success so far (warm-up and latency jobs included)."""
        ...


@dataclass
class Measured:
    name: str
    label: str
    throughput_per_s: float = 0.0
    enqueue_per_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    #: How long each latency job's enqueue call took (its part before the call returned).
    calls_ms: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def percentile(self, share: float, values: list[float] | None = None) -> float:
        ordered = sorted(self.latencies_ms if values is None else values)
        index = max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))  # nearest rank
        return ordered[index]


# ---------------------------------------------------------------------------------------------
# Measuring one system
# ---------------------------------------------------------------------------------------------


async def _latencies(
    system: System, redis: Any, count: int, *, timeout: float
) -> tuple[list[float], list[float]]:
    """``count`` jobs one at a time: milliseconds from just before each enqueue to its start,
    and how long each enqueue call took (the part of the latency spent before it returned)."""
    rng = random.Random(18)
    out, calls = [], []
    for mark in range(count):
        await asyncio.sleep(rng.uniform(*GAP_SECONDS))
        before = time.time()
        await system.enqueue(mark)
        calls.append((time.time() - before) * 1000)
        popped = await redis.blpop([peers.STARTED_KEY], timeout=timeout)
        if popped is None:
            raise Failed(f"job {mark} did not start within {timeout} s")
        got, started = popped[1].decode().split()
        if int(got) != mark:
            raise Failed(f"job {got} started where job {mark} was expected")
        out.append((float(started) - before) * 1000)
    return out, calls


async def _settled(system: System, timeout: float = 30.0) -> None:
    """Wait until no job is unfinished (the last latency job's ack may still be on its way)."""
    deadline = time.perf_counter() + timeout
    while await system.unfinished() > 0:
        if time.perf_counter() > deadline:
            raise Failed(f"jobs still unfinished after {timeout} s")
        await asyncio.sleep(POLL_SECONDS)


async def _throughput(system: System, watched: dict[str, Server]) -> dict[str, Any]:
    """``JOBS`` jobs from ``ENQUEUERS`` concurrent enqueuers: the rates and what it cost."""
    import psutil

    await _settled(system)
    succeeded_before = await system.succeeded()
    remaining = iter(range(JOBS))
    enqueued_at: list[float] = []

    async def enqueuer() -> None:
        for _ in remaining:
            await system.enqueue(None)
        enqueued_at.append(time.perf_counter())

    cpu_before, stores_before = psutil.cpu_times(), _stores_cpu()
    own_before = {name: process.cpu_seconds() for name, process in watched.items()}
    me = psutil.Process()
    me_before = sum(me.cpu_times()[:2])
    started = time.perf_counter()
    deadline = started + THROUGHPUT_TIMEOUT
    enqueuers = asyncio.gather(*(enqueuer() for _ in range(ENQUEUERS)))
    try:
        while len(enqueued_at) < ENQUEUERS or await system.unfinished() > 0:
            if time.perf_counter() > deadline:
                raise Failed(f"{JOBS} jobs did not finish within {THROUGHPUT_TIMEOUT} s")
            if enqueuers.done() and enqueuers.exception() is not None:
                break
            await asyncio.sleep(POLL_SECONDS)
        finished = time.perf_counter()
    finally:
        await enqueuers
    cpu_after, stores_after = psutil.cpu_times(), _stores_cpu()
    own = {name: process.cpu_seconds() - own_before[name] for name, process in watched.items()}
    mine = sum(me.cpu_times()[:2]) - me_before
    stores = sum(used - stores_before.get(pid, 0.0) for pid, used in stores_after.items())
    seconds = finished - started
    succeeded = await system.succeeded() - succeeded_before
    if succeeded != JOBS:
        raise Failed(f"{succeeded} of {JOBS} jobs succeeded")
    busy = sum(
        getattr(cpu_after, name) - getattr(cpu_before, name)
        for name in ("user", "nice", "system", "irq", "softirq")
        if hasattr(cpu_after, name)
    )
    return {
        "throughput_per_s": JOBS / seconds,
        "enqueue_per_s": JOBS / (max(enqueued_at) - started),
        "seconds": round(seconds, 3),
        **{f"{name}_cpu_ms_per_job": round(used / JOBS * 1000, 3) for name, used in own.items()},
        "machine_busy_cores": round(busy / seconds, 2),
        "store_cores": round(stores / seconds, 2),
        # What neither the benchmark, its worker and server nor the stores used: other work.
        "others_cores": round(max(0.0, busy - mine - sum(own.values()) - stores) / seconds, 2),
    }


def _stores_cpu() -> dict[int, float]:
    """CPU seconds so far of every PostgreSQL and Redis server process, by pid (they serve
    other clients too: what others ask of them counts as the benchmark's here)."""
    import psutil

    out = {}
    for process in psutil.process_iter(["name", "cpu_times"]):
        name, times = process.info["name"] or "", process.info["cpu_times"]
        if times is not None and (name.startswith("postgres") or name.startswith("redis")):
            out[process.pid] = times.user + times.system
    return out


async def _measure(
    name: str, label: str, system: System, watched: dict[str, Server], redis: Any
) -> Measured:
    """Warm-up, throughput, latency; ``watched``: the processes whose CPU time per job is
    reported (the worker, and Keel's server)."""
    await redis.delete(peers.STARTED_KEY)
    print(f"# {name}: warm-up", file=sys.stderr, flush=True)
    await _latencies(system, redis, WARMUP_JOBS, timeout=120.0)
    load_before = _load_average()
    print(f"# {name}: {JOBS} jobs", file=sys.stderr, flush=True)
    rates = await _throughput(system, watched)
    print(f"# {name}: {LATENCY_JOBS} jobs one at a time", file=sys.stderr, flush=True)
    latencies, calls = await _latencies(system, redis, LATENCY_JOBS, timeout=30.0)
    measured = Measured(
        name, label, rates.pop("throughput_per_s"), rates.pop("enqueue_per_s"), latencies,
        calls, {**rates, "load_average": [load_before, _load_average()]},
    )  # fmt: skip
    print(
        f"# {name}: {measured.throughput_per_s:.0f} jobs/s, enqueue {measured.enqueue_per_s:.0f}/s,"
        f" latency p50 {measured.percentile(0.5):.2f} ms p99 {measured.percentile(0.99):.2f} ms",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    return measured


def _load_average() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


@contextlib.contextmanager
def _worker(name: str, command: list[str], root: Path, env: dict[str, str]) -> Iterator[Server]:
    """A worker process (no port: it only connects out); its output in ``<root>/<name>.log``."""
    env = {**env, "PYTHONPATH": str(REPO_ROOT)}
    with Server(command, port=0, cwd=root, env=env, log_path=root / f"{name}.log") as worker:
        try:
            yield worker
        except Exception as exc:
            raise Failed(f"{exc}; {name} worker log: {worker.log_tail()}") from exc


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


# ---------------------------------------------------------------------------------------------
# arq
# ---------------------------------------------------------------------------------------------


class Arq:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def enqueue(self, mark: int | None) -> None:
        job = await (self.pool.enqueue_job(peers.TASK, mark) if mark is not None
                     else self.pool.enqueue_job(peers.TASK))  # fmt: skip
        if job is None:
            raise Failed("arq refused a job")

    async def unfinished(self) -> int:
        # A job stays in the queue's sorted set until its worker has finished it.
        return int(await self.pool.zcard(peers.ARQ_QUEUE))

    async def succeeded(self) -> int:
        count = 0
        async for _key in self.pool.scan_iter(match="arq:result:*", count=1000):
            count += 1
        return count


async def _clear_redis(redis: Any) -> None:
    keys = [key async for key in redis.scan_iter(match="arq:*", count=1000)]
    keys.append(peers.STARTED_KEY)
    for start in range(0, len(keys), 1000):
        await redis.delete(*keys[start : start + 1000])


async def _run_arq(root: Path, redis_url: str, settings: str, name: str, label: str) -> Measured:
    import redis.asyncio
    from arq import create_pool
    from arq.connections import RedisSettings

    client = redis.asyncio.Redis.from_url(redis_url)
    await _clear_redis(client)
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    env = clean_env(BENCH_JOBS_REDIS_URL=redis_url)
    try:
        with _worker(name, [_script("arq"), f"benchmarks._jobs_peers.{settings}"], root, env) as w:
            return await _measure(name, label, Arq(pool), {"worker": w}, client)
    finally:
        await pool.aclose()
        await _clear_redis(client)
        await client.aclose()


# ---------------------------------------------------------------------------------------------
# procrastinate
# ---------------------------------------------------------------------------------------------


class Procrastinate:
    def __init__(self, app: Any, connection: Any) -> None:
        self.task = app.configure_task(name=peers.TASK)
        self.connection = connection

    async def enqueue(self, mark: int | None) -> None:
        await (self.task.defer_async(mark=mark) if mark is not None
               else self.task.defer_async())  # fmt: skip

    async def unfinished(self) -> int:
        return int(
            await self.connection.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
            )
        )

    async def succeeded(self) -> int:
        return int(
            await self.connection.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
            )
        )


async def _run_procrastinate(root: Path, dsn: str, redis_url: str) -> Measured:
    import asyncpg
    import redis.asyncio

    app = peers.make_procrastinate_app(dsn)
    client = redis.asyncio.Redis.from_url(redis_url)
    connection = await asyncpg.connect(dsn)
    env = clean_env(BENCH_JOBS_REDIS_URL=redis_url, BENCH_JOBS_POSTGRES_DSN=dsn)
    command = [
        _script("procrastinate"), "--app=benchmarks._jobs_peers.procrastinate_app",
        "worker", f"--concurrency={peers.CONCURRENCY}",
    ]  # fmt: skip
    try:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            with _worker("procrastinate", command, root, env) as worker:
                return await _measure(
                    "procrastinate", _procrastinate_label(), Procrastinate(app, connection),
                    {"worker": worker}, client,
                )  # fmt: skip
    finally:
        await connection.close()
        await client.delete(peers.STARTED_KEY)
        await client.aclose()


def _procrastinate_label() -> str:
    from importlib.metadata import version

    return (
        f"procrastinate {version('procrastinate')} (psycopg {version('psycopg')}), "
        f"worker --concurrency={peers.CONCURRENCY}, LISTEN/NOTIFY"
    )


# ---------------------------------------------------------------------------------------------
# Keel
# ---------------------------------------------------------------------------------------------

_UNFINISHED = "('scheduled', 'available', 'running', 'retryable')"


class KeelPostgres:
    """Enqueues through the SDK; reads the jobs table of Keel's database directly (a count,
    as for procrastinate), so that watching costs the server nothing."""

    def __init__(self, client: Any, connection: Any) -> None:
        self.client = client
        self.connection = connection

    async def enqueue(self, mark: int | None) -> None:
        await (self.client.enqueue(peers.TASK, mark) if mark is not None
               else self.client.enqueue(peers.TASK))  # fmt: skip

    async def unfinished(self) -> int:
        query = f"SELECT count(*) FROM jobs WHERE state IN {_UNFINISHED}"  # noqa: S608
        return int(await self.connection.fetchval(query))

    async def succeeded(self) -> int:
        return int(
            await self.connection.fetchval("SELECT count(*) FROM jobs WHERE state = 'completed'")
        )


class KeelSqlite(KeelPostgres):
    """The same on the embedded default: the SQLite file read read-only (WAL: no lock on
    the server's writes)."""

    def __init__(self, client: Any, path: Path) -> None:
        import sqlite3

        super().__init__(client, None)
        self.database = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def _count(self, where: str) -> int:
        return int(self.database.execute(f"SELECT count(*) FROM jobs WHERE {where}").fetchone()[0])  # noqa: S608

    async def unfinished(self) -> int:
        return self._count(f"state IN {_UNFINISHED}")

    async def succeeded(self) -> int:
        return self._count("state = 'completed'")


async def _run_keel(root: Path, name: str, database_url: str | None, redis_url: str) -> Measured:
    """``keel serve`` on ``database_url`` (SQLite in ``<root>/<name>`` when ``None``), the
    SDK worker in its own process, enqueues through the SDK's ``JobsClient``."""
    import asyncpg
    import redis.asyncio

    from keel_client.jobs import JobsClient

    cwd = root / name
    cwd.mkdir()
    data_dir = cwd / "data"
    overrides = {"KEEL_DATA_DIR": str(data_dir), "KEEL_MASTER_KEY": BENCH_MASTER_KEY}
    if database_url is not None:
        overrides["KEEL_DATABASE_URL"] = database_url
    env = clean_env(**overrides)
    admin_key = await asyncio.to_thread(keel_admin_key, cwd, env)
    port = free_port()
    client = redis.asyncio.Redis.from_url(redis_url)
    with Server(keel_serve_command(port), port=port, cwd=cwd, env=env) as server:
        await asyncio.to_thread(server.wait_http, "/health/ready")
        worker_env = clean_env(
            KEEL_URL=server.url, KEEL_TOKEN=admin_key, BENCH_JOBS_REDIS_URL=redis_url
        )
        command = [
            sys.executable, "-m", "keel_client.jobs", "run",
            "benchmarks._jobs_peers:keel_worker",
        ]  # fmt: skip
        jobs = JobsClient(server.url, auth=admin_key)
        connection = None
        try:
            if database_url is not None:
                connection = await asyncpg.connect(_plain_dsn(database_url))
                system: System = KeelPostgres(jobs, connection)
            else:
                system = KeelSqlite(jobs, data_dir / "keel.db")
            with _worker(name, command, root, worker_env) as worker:
                try:
                    label = _keel_label(database_url)
                    watched = {"worker": worker, "server": server}
                    measured = await _measure(name, label, system, watched, client)
                except Exception as exc:
                    raise Failed(f"{exc}; keel serve log: {server.log_tail()}") from exc
                return measured
        finally:
            await jobs.aclose()
            if connection is not None:
                await connection.close()
            await client.delete(peers.STARTED_KEY)
            await client.aclose()


def _keel_label(database_url: str | None) -> str:
    from importlib.metadata import version

    database = "PostgreSQL" if database_url is not None else "SQLite (embedded default)"
    return (
        f"keel serve {version('keel')} on {database}, 1 process; keel_client.jobs.Worker "
        f"(concurrency={peers.CONCURRENCY}) over HTTP"
    )


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _plain_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://")


async def _reachable(redis_url: str) -> str | None:
    """Why the run cannot happen (Redis or PostgreSQL down), or ``None``."""
    import asyncpg
    import redis.asyncio

    try:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await client.ping()
        finally:
            await client.aclose()
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
        await connection.close()
    except (OSError, redis.asyncio.RedisError, asyncpg.PostgresError) as exc:
        return f"Redis at {redis_url} or PostgreSQL at {POSTGRES_ADMIN_DSN} unreachable: {exc!r}"
    return None


def _arq_label(poll_delay: float) -> str:
    from importlib.metadata import version

    return (
        f"arq {version('arq')} (redis-py {version('redis')}), max_jobs={peers.CONCURRENCY}, "
        f"poll_delay={poll_delay}"
    )


#: Every system, in the order of the run; ``BENCH_JOBS_SYSTEMS=keel_sqlite,arq_tuned`` runs
#: some (for working on one; the figures of docs/benchmarks.md come from a run of all).
SYSTEMS = ("procrastinate", "arq_shipped", "arq_tuned", "keel_postgresql", "keel_sqlite")


def _selected() -> list[str]:
    chosen = os.environ.get("BENCH_JOBS_SYSTEMS", "").strip()
    if not chosen:
        return list(SYSTEMS)
    names = [name.strip() for name in chosen.split(",") if name.strip()]
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        raise Failed(f"BENCH_JOBS_SYSTEMS names unknown systems {sorted(unknown)}; {SYSTEMS}")
    return [name for name in SYSTEMS if name in names]


def _has_arq() -> bool:
    try:
        import arq  # noqa: F401
    except ImportError:
        print("bench_jobs: arq is not installed (make bench-tools): no arq lines",
              file=sys.stderr, flush=True)  # fmt: skip
        return False
    return True


def _run_one(name: str, root: Path, redis_url: str) -> Measured:
    if name == "procrastinate":
        with postgres_database("keel_bench_jobs_procrastinate") as url:
            return asyncio.run(_run_procrastinate(root, _plain_dsn(url), redis_url))
    if name == "arq_shipped":
        return asyncio.run(_run_arq(root, redis_url, "ArqShipped", name, _arq_label(0.5)))
    if name == "arq_tuned":
        label = _arq_label(peers.ArqTuned.poll_delay)
        return asyncio.run(_run_arq(root, redis_url, "ArqTuned", name, label))
    if name == "keel_postgresql":
        with postgres_database("keel_bench_jobs") as url:
            return asyncio.run(_run_keel(root, name, url, redis_url))
    assert name == "keel_sqlite"
    return asyncio.run(_run_keel(root, name, None, redis_url))


def measure_all(root: Path) -> list[Measured]:
    redis_url = f"{REDIS_URL}/{REDIS_DB}"
    reason = asyncio.run(_reachable(redis_url))
    if reason is not None:
        raise Failed(reason)
    names = _selected()
    if not _has_arq():
        names = [name for name in names if not name.startswith("arq")]
    return [_run_one(name, root, redis_url) for name in names]


def _round(value: float) -> float:
    return round(value, 3 if value < 10 else 1)


def figures(measured: list[Measured]) -> list[Figure]:
    out = []
    for system in measured:
        common = {"machine": machine(), "jobs": JOBS, "enqueuers": ENQUEUERS}
        out.append(emit(Figure(
            f"jobs.{system.name}.throughput_per_s", _round(system.throughput_per_s), "jobs/s",
            extra={"system": system.label, "enqueue_per_s": _round(system.enqueue_per_s),
                   **system.extra, **common},
        )))  # fmt: skip
        out.append(emit(Figure(
            f"jobs.{system.name}.latency_p50_ms", _round(system.percentile(0.5)), "ms",
            extra={
                "system": system.label, "p99_ms": _round(system.percentile(0.99)),
                "enqueue_call_p50_ms": _round(system.percentile(0.5, system.calls_ms)),
                "mean_ms": _round(statistics.fmean(system.latencies_ms)),
                "max_ms": _round(max(system.latencies_ms)), "jobs": LATENCY_JOBS,
                "gap_ms": [GAP_SECONDS[0] * 1000, GAP_SECONDS[1] * 1000],
            },
        )))  # fmt: skip
    by_name = {system.name: system for system in measured}
    for keel_name, prefix in (("keel_postgresql", "jobs."), ("keel_sqlite", "jobs.sqlite_")):
        if keel_name in by_name:
            out.extend(_comparisons(by_name[keel_name], by_name, prefix))
    return out


def _comparisons(keel: Measured, by_name: dict[str, Measured], prefix: str) -> list[Figure]:
    """Keel against the issue's peers: the faster of arq (tuned) and procrastinate for jobs/s,
    procrastinate for latency."""
    out = []
    everyone = {name: _round(system.throughput_per_s) for name, system in by_name.items()}
    rivals = [by_name[name] for name in ("arq_tuned", "procrastinate") if name in by_name]
    if rivals:
        faster = max(rivals, key=lambda system: system.throughput_per_s)
        ratio = keel.throughput_per_s / faster.throughput_per_s
        out.append(emit(Figure(
            f"{prefix}throughput_per_s", _round(keel.throughput_per_s), "jobs/s",
            faster.label, round(ratio, 3),
            {"peer_per_s": _round(faster.throughput_per_s), "all_per_s": everyone,
             "target_ratio": TARGET_THROUGHPUT_RATIO,
             "met": ratio >= TARGET_THROUGHPUT_RATIO, "system": keel.label},
        )))  # fmt: skip
    peer = by_name.get("procrastinate")
    if peer is not None:
        for share, label in ((0.5, "p50"), (0.99, "p99")):
            value, peer_value = keel.percentile(share), peer.percentile(share)
            ratio = peer_value / value  # lower is better: at least 1.0 is no worse
            out.append(emit(Figure(
                f"{prefix}latency_{label}_ms", _round(value), "ms", peer.label, round(ratio, 3),
                {"peer_ms": _round(peer_value),
                 "all_ms": {name: _round(system.percentile(share))
                            for name, system in by_name.items()},
                 "target_ratio": TARGET_LATENCY_RATIO, "met": ratio >= TARGET_LATENCY_RATIO,
                 "ratio_is": "procrastinate / Keel (lower latency is better)",
                 "system": keel.label},
            )))  # fmt: skip
    return out


def main() -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="keel-bench-jobs-"))
    try:
        measured = measure_all(root)
    except Failed as exc:
        print(f"bench_jobs failed: {exc}", file=sys.stderr, flush=True)
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures(measured)


if __name__ == "__main__":
    main()
