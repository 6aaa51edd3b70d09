"""The no-op task of ``bench_jobs`` for each job system, and the worker set-ups that run it.

Each worker runs in its own process, started through the system's own command line:

- arq: ``arq benchmarks._jobs_peers.ArqShipped`` (arq's defaults: ``poll_delay=0.5``) or
  ``arq benchmarks._jobs_peers.ArqTuned`` (``poll_delay=0.01``), both ``max_jobs=10``;
- procrastinate: ``procrastinate --app=benchmarks._jobs_peers.procrastinate_app worker
  --concurrency=10`` (LISTEN/NOTIFY on, its default);
- Keel: ``python -m keel_client.jobs run benchmarks._jobs_peers:keel_worker`` (the SDK's
  ``Worker``, concurrency 10).

The task is the same everywhere: a job without a ``mark`` does nothing (the throughput
figure); a job with one records ``time.time()`` when it starts and pushes ``"<mark> <time>"``
onto the Redis list :data:`STARTED_KEY`, where the benchmark waits for it (the latency
figure). The settings come from the environment (``BENCH_JOBS_REDIS_URL``,
``BENCH_JOBS_POSTGRES_DSN``), set by ``bench_jobs`` for the worker processes.

Only the standard library is imported at module level: each worker imports only its own
system.
"""

from __future__ import annotations

import os
import time
from typing import Any

#: The Redis list a marked job's start is pushed onto.
STARTED_KEY = "keel-bench-jobs:started"
TASK = "noop"
#: arq's queue (its default name) in the benchmark's own Redis database.
ARQ_QUEUE = "arq:queue"
CONCURRENCY = 10

_redis: Any = None


def redis_url() -> str:
    return os.environ["BENCH_JOBS_REDIS_URL"]


async def _record_start(mark: int, started: float, redis: Any = None) -> None:
    """Push the start time of a marked job; the worker's own Redis client where it has one."""
    global _redis
    if redis is None:
        if _redis is None:
            import redis.asyncio

            _redis = redis.asyncio.Redis.from_url(redis_url())
        redis = _redis
    await redis.rpush(STARTED_KEY, f"{mark} {started!r}")


# ---------------------------------------------------------------------------------------------
# arq
# ---------------------------------------------------------------------------------------------


async def arq_noop(ctx: dict[str, Any], mark: int | None = None) -> None:
    started = time.time()
    if mark is not None:
        await _record_start(mark, started, ctx["redis"])


def _arq_redis_settings() -> Any:
    from arq.connections import RedisSettings

    return RedisSettings.from_dsn(redis_url()) if "BENCH_JOBS_REDIS_URL" in os.environ else None


class ArqShipped:
    """arq's worker as shipped: its defaults, ``max_jobs=10`` (the default too)."""

    functions: list[Any] = []
    redis_settings = None
    max_jobs = CONCURRENCY


def _arq_functions() -> list[Any]:
    from arq.worker import func

    return [func(arq_noop, name=TASK)]


class ArqTuned(ArqShipped):
    """The same worker polling every 10 ms instead of 500 ms (the issue's tuned setting)."""

    poll_delay = 0.01


def _configure_arq() -> None:
    """Fill the settings classes in (arq reads class attributes) when arq is importable."""
    try:
        functions = _arq_functions()
    except ImportError:
        return
    # arq reads each settings class's own attributes, not inherited ones.
    for settings in (ArqShipped, ArqTuned):
        settings.functions = functions
        settings.redis_settings = _arq_redis_settings()
        settings.max_jobs = CONCURRENCY


_configure_arq()


# ---------------------------------------------------------------------------------------------
# procrastinate
# ---------------------------------------------------------------------------------------------


def make_procrastinate_app(dsn: str) -> Any:
    """The procrastinate app with the no-op task, on ``dsn`` (``None`` without procrastinate)."""
    try:
        import procrastinate
    except ImportError:
        return None
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name=TASK)
    async def noop(mark: int | None = None) -> None:
        started = time.time()
        if mark is not None:
            await _record_start(mark, started)

    return app


#: What ``procrastinate --app=benchmarks._jobs_peers.procrastinate_app worker`` runs.
procrastinate_app = make_procrastinate_app(os.environ.get("BENCH_JOBS_POSTGRES_DSN", ""))


# ---------------------------------------------------------------------------------------------
# Keel
# ---------------------------------------------------------------------------------------------


def make_keel_worker() -> Any:
    """The SDK's worker with the no-op task on the default queue, concurrency 10; its client
    comes from ``KEEL_URL`` and ``KEEL_TOKEN`` when it runs."""
    from keel_client.jobs import Worker

    worker = Worker(concurrency=CONCURRENCY)

    @worker.task(TASK)
    async def noop(mark: int | None = None) -> None:
        started = time.time()
        if mark is not None:
            await _record_start(mark, started)

    return worker


def __getattr__(name: str) -> Any:
    """``keel_worker`` (what ``python -m keel_client.jobs run
    benchmarks._jobs_peers:keel_worker`` runs), made on first use: the other workers never
    import the SDK."""
    if name == "keel_worker":
        worker = make_keel_worker()
        globals()["keel_worker"] = worker
        return worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
