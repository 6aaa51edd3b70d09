"""Config SDK figures (issue #7): how fast a change reaches the fleet, and what ``get`` costs.

- ``config.sdk_propagation_p50_ms`` / ``config.sdk_propagation_p99_ms``: from the start of a
  ``PATCH /config/v1/apps/billing/envs/production`` (one key changed) to the moment the last
  of ``WATCHERS`` ``ConfigClient`` objects has the new revision in memory and has called its
  change callback (the event, the change set applied from it, or an ``If-None-Match``
  snapshot read when the event does not carry the values, the swap, the callbacks). Each
  client writes its local copy after its callbacks, in a worker thread, while the other
  clients are still being reached: that work shares this process and is inside the figure,
  though not on a client's own path. One real ``keel serve`` on the embedded SQLite (its in-process
  broadcast); the clients and the writer share this process, in another process than the
  server, so both ends are timed on one monotonic clock. ``WRITES`` writes, one at a time,
  in ``ROUNDS`` rounds alternating with the peer's (drift on a shared machine meets both).
  Peer, in the same run: ``WATCHERS`` bare ``keel_client.changes.watch_changes``
  streams on another environment of the same application, timed until each has the event:
  the server's fan-out and the SSE client alone, without the snapshot read. One set of
  streams is open at a time (every write wakes every open stream of the tenant; the server
  filters by environment after waking). Watchers connect in waves of ``START_WAVE``.
- ``config.sdk_get_ns``: ``ConfigClient.get(key, default)`` on a started client, ns per
  call. Peer, in the same run: ``dict.get`` on a plain dict of the same values.

Every ratio is SDK / peer (lower is better for all three).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks._figures import Figure, emit
from benchmarks._servers import HOST, clean_env
from benchmarks.bench_auth import BENCH_MASTER_KEY, _api, _running_keel
from benchmarks.bench_config import SERVICES, SNAPSHOT, _prepare, _reader_token
from keel_client.changes import watch_changes
from keel_client.config import ConfigClient
from keel_client.http import BaseAPIClient, BearerToken

WATCHERS = 100
WRITES = 30
ROUNDS = 3
#: Issue 23: propagation to the SDK's watchers at most 1.1x that to bare streams.
TARGET_RATIO = 1.1
#: Clients started at once (a fleet rolls out in waves; see tests/client/config).
START_WAVE = 10
GET_CALLS = 1_000_000
GET_ROUNDS = 7
TARGET_P99_MS = 200.0
PEER_ENV = "staging"
PEER_SNAPSHOT = "/config/v1/apps/billing/envs/staging"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


class _Arrivals:
    """When each watcher saw each revision (or event), on this process's monotonic clock."""

    def __init__(self) -> None:
        self.seen: dict[int, list[float]] = {}
        self.complete: dict[int, asyncio.Event] = {}

    def expect(self, revision: int) -> asyncio.Event:
        self.seen[revision] = []
        self.complete[revision] = asyncio.Event()
        return self.complete[revision]

    def arrived(self, revision: int) -> None:
        arrivals = self.seen.get(revision)
        if arrivals is None:
            return
        arrivals.append(time.perf_counter())
        if len(arrivals) == WATCHERS:
            self.complete[revision].set()


async def _peer_watch(api: BaseAPIClient, arrivals: _Arrivals, ready: asyncio.Event) -> None:
    async for change in watch_changes(api, f"{PEER_SNAPSHOT}/watch", yield_ready=True):
        if change.is_ready:
            ready.set()
        elif "revision" in change.data:
            arrivals.arrived(int(change.data["revision"]))


async def _timed_writes(
    base_url: str, admin_key: str, path: str, revision: int, arrivals: _Arrivals
) -> dict[str, list[float]]:
    """A round's writes to ``path`` (now at ``revision``), one at a time: the time until
    every watcher saw each, and each watcher's time, in ms."""
    result: dict[str, list[float]] = {"all": [], "each": []}
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
    ) as http:
        for write in range(WRITES // ROUNDS):
            done = arrivals.expect(revision + 1)
            started = time.perf_counter()
            answer = await http.patch(path, json={"set": {"workers": 1000 + write}})
            answer.raise_for_status()
            if answer.json()["revision"]["number"] != revision + 1:
                raise RuntimeError(f"{path} moved on without this benchmark: another writer?")
            revision += 1
            async with asyncio.timeout(30):
                await done.wait()
            each = [(at - started) * 1000 for at in arrivals.seen[revision]]
            result["all"].append(max(each))
            result["each"].extend(each)
            await asyncio.sleep(0.05)
    return result


async def _sdk_propagation(base_url: str, token: str, admin_key: str) -> dict[str, list[float]]:
    arrivals = _Arrivals()
    root = Path(tempfile.mkdtemp(prefix="keel-bench-config-sdk-copies-"))
    clients = [
        ConfigClient("billing", "production", base_url, auth=token, cache_path=root / f"{i}.json")
        for i in range(WATCHERS)
    ]
    wave = asyncio.Semaphore(START_WAVE)

    async def start(client: ConfigClient) -> None:
        async with wave:
            await client.start()
        client.on_change(lambda change: arrivals.arrived(change.revision))

    try:
        await asyncio.gather(*(start(client) for client in clients))
        return await _timed_writes(base_url, admin_key, SNAPSHOT, clients[0].revision, arrivals)
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
        shutil.rmtree(root, ignore_errors=True)


async def _peer_propagation(base_url: str, token: str, admin_key: str) -> dict[str, list[float]]:
    arrivals = _Arrivals()
    peers = [BaseAPIClient(base_url, auth=BearerToken(token)) for _ in range(WATCHERS)]
    ready = [asyncio.Event() for _ in peers]
    tasks: list[asyncio.Task[None]] = []
    try:
        for first in range(0, WATCHERS, START_WAVE):  # in waves, as the clients start
            wave = range(first, min(WATCHERS, first + START_WAVE))
            tasks.extend(
                asyncio.create_task(_peer_watch(peers[i], arrivals, ready[i])) for i in wave
            )
            await asyncio.gather(*(ready[i].wait() for i in wave))
        async with httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}
        ) as http:
            current = (await http.get(PEER_SNAPSHOT)).json()["revision"]
        return await _timed_writes(base_url, admin_key, PEER_SNAPSHOT, current, arrivals)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(api.aclose() for api in peers))


def _get_costs(client: ConfigClient) -> dict[str, list[float]]:
    plain = dict(client.values)
    sdk_get, dict_get = client.get, plain.get
    costs: dict[str, list[float]] = {"sdk": [], "peer": []}
    for _ in range(GET_ROUNDS):
        started = time.perf_counter_ns()
        for _ in range(GET_CALLS):
            sdk_get("feature_3", False)
        costs["sdk"].append((time.perf_counter_ns() - started) / GET_CALLS)
        started = time.perf_counter_ns()
        for _ in range(GET_CALLS):
            dict_get("feature_3", False)
        costs["peer"].append((time.perf_counter_ns() - started) / GET_CALLS)
    return costs


async def _measure(base_url: str, token: str, admin_key: str) -> dict[str, Any]:
    # One set of streams at a time: every write wakes every open stream of the tenant.
    measured: dict[str, Any] = {"sdk": [], "sdk_each": [], "peer": [], "peer_each": []}
    for _ in range(ROUNDS):
        sdk = await _sdk_propagation(base_url, token, admin_key)
        peer = await _peer_propagation(base_url, token, admin_key)
        measured["sdk"] += sdk["all"]
        measured["sdk_each"] += sdk["each"]
        measured["peer"] += peer["all"]
        measured["peer_each"] += peer["each"]
    async with ConfigClient("billing", "production", base_url, auth=token, persist=False) as one:
        measured["get"] = _get_costs(one)
    return measured


def main() -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="keel-bench-config-sdk-"))
    env = clean_env(KEEL_MASTER_KEY=BENCH_MASTER_KEY, KEEL_SERVICES=SERVICES)
    try:
        with _running_keel(root, env) as (server, admin_key):
            _prepare(server.port, admin_key)
            _api(server.port, "POST", "/config/v1/apps/billing/envs", admin_key, {"name": PEER_ENV})
            token = _reader_token(server.port, admin_key)
            base_url = f"http://{HOST}:{server.port}"
            measured = asyncio.run(_measure(base_url, token, admin_key))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sdk, peer = measured["sdk"], measured["peer"]
    p50, p99 = _percentile(sdk, 0.5), _percentile(sdk, 0.99)
    peer_p50, peer_p99 = _percentile(peer, 0.5), _percentile(peer, 0.99)
    common = {
        "watchers": WATCHERS,
        "writes": len(sdk),
        "each_watcher_p50_ms": round(_percentile(measured["sdk_each"], 0.5), 2),
        "each_watcher_p99_ms": round(_percentile(measured["sdk_each"], 0.99), 2),
        "database": "sqlite",
        "server": "keel serve, 1 worker, in-process broadcast",
    }
    get_sdk = statistics.median(measured["get"]["sdk"])
    get_peer = statistics.median(measured["get"]["peer"])
    get_ratio = statistics.median(
        s / p for s, p in zip(measured["get"]["sdk"], measured["get"]["peer"], strict=True)
    )
    peer_name = f"{WATCHERS} bare watch_changes streams (event only, no snapshot read)"
    return [
        emit(Figure(
            "config.sdk_propagation_p50_ms", round(p50, 2), "ms", peer_name,
            round(p50 / peer_p50, 3), {**common, "peer_p50_ms": round(peer_p50, 2)},
        )),
        emit(Figure(
            "config.sdk_propagation_p99_ms", round(p99, 2), "ms", peer_name,
            round(p99 / peer_p99, 3),
            {**common, "peer_p99_ms": round(peer_p99, 2), "max_ms": round(max(sdk), 2),
             "target_ms": TARGET_P99_MS, "met": p99 <= TARGET_P99_MS,
             "issue_23_target_ratio": TARGET_RATIO, "met_issue_23": p99 / peer_p99 <= TARGET_RATIO},
        )),
        emit(Figure(
            "config.sdk_get_ns", round(get_sdk, 1), "ns/op", "dict.get on a plain dict",
            round(get_ratio, 3),
            {"peer_ns": round(get_peer, 1), "calls_per_round": GET_CALLS, "rounds": GET_ROUNDS},
        )),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
