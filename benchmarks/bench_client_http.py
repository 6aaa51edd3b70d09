"""Throughput of ``keel_client.http.BaseAPIClient`` against a bare ``httpx.AsyncClient``.

One uvicorn server in a subprocess (a trivial JSON endpoint) so it does not share the client's
interpreter. Both clients run in this process against it, with the same concurrency and pool;
runs alternate (bare, ours, bare, ours, ...) so drift on a noisy machine hits both, and the
median of each is compared. The client's CPU time per request is reported too: with 20 pooled
connections httpcore's pool bookkeeping dominates both clients' cost, and on a loaded machine
the throughput ratio of a single run moves by +-0.1 around 1.0. ``BaseAPIClient`` runs with
everything on: retry policy and budget, circuit breaker, Prometheus metrics, deadline, request
IDs and (no-op) OpenTelemetry spans.

``python -m benchmarks client_http``
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import httpx

from benchmarks._figures import Figure, emit, machine
from keel_client.http import BaseAPIClient, BreakerPolicy, RetryBudget, RetryPolicy

CONCURRENCY = 20
REQUESTS_PER_RUN = 4_000
WARMUP_REQUESTS = 500
ROUNDS = 9
LIMITS = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)

# The server process: binds port 0, prints it, serves one JSON body. TCP_NODELAY on the
# listening socket (inherited on accept) keeps Nagle from delaying responses.
SERVER = r"""
import socket, sys, uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
config = uvicorn.Config(
    app, log_level="error", access_log=False, lifespan="off", loop=sys.argv[1], http=sys.argv[2]
)
uvicorn.Server(config).run(sockets=[sock])
"""


def start_server() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, "uvloop", "httptools"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ok").status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("benchmark server did not start")


async def drive(send: Callable[[], Awaitable[object]], requests: int) -> tuple[float, float]:
    """Requests per second of ``CONCURRENCY`` workers sending ``requests`` in total, and this
    process's CPU microseconds per request (the client's own cost, whatever the server does).
    """
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send()

    gc.collect()  # neither client pays for the other's garbage
    started = time.perf_counter()
    cpu_started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    cpu = time.process_time() - cpu_started
    return requests / (time.perf_counter() - started), cpu / requests * 1e6


async def main() -> None:
    process, url = start_server()
    try:
        async with (
            httpx.AsyncClient(base_url=url, limits=LIMITS) as bare,
            BaseAPIClient(
                url,
                limits=LIMITS,
                retry=RetryPolicy(),
                retry_budget=RetryBudget(),
                breaker=BreakerPolicy(),
            ) as ours,
        ):

            async def send_bare() -> object:
                response = await bare.get("/ok")
                response.raise_for_status()
                return response

            async def send_ours() -> object:
                return await ours.get("/ok")

            await drive(send_bare, WARMUP_REQUESTS)
            await drive(send_ours, WARMUP_REQUESTS)
            bare_runs: list[tuple[float, float]] = []
            our_runs: list[tuple[float, float]] = []
            for _ in range(ROUNDS):
                bare_runs.append(await drive(send_bare, REQUESTS_PER_RUN))
                our_runs.append(await drive(send_ours, REQUESTS_PER_RUN))
    finally:
        process.terminate()
        process.wait(10)

    bare_rate = statistics.median(rate for rate, _ in bare_runs)
    our_rate = statistics.median(rate for rate, _ in our_runs)
    bare_cpu = statistics.median(cpu for _, cpu in bare_runs)
    our_cpu = statistics.median(cpu for _, cpu in our_runs)
    emit(
        Figure(
            name="client_http.throughput",
            value=round(our_rate, 1),
            unit="req/s",
            peer="httpx.AsyncClient",
            ratio=round(our_rate / bare_rate, 3),
            extra={
                "peer_value": round(bare_rate, 1),
                "client_cpu_us_per_request": round(our_cpu, 1),
                "peer_client_cpu_us_per_request": round(bare_cpu, 1),
                "concurrency": CONCURRENCY,
                "requests_per_run": REQUESTS_PER_RUN,
                "rounds": ROUNDS,
                "target_ratio": 0.9,
                "machine": machine(),
            },
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
