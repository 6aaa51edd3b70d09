"""Flags SDK figures (issue #8): toggle propagation to a running ``FlagsClient``, and the
client's cost over the engine.

- ``flags.sdk_toggle_propagation_p50_ms``: from sending ``POST …/flags/{key}/toggle`` to a
  running ``FlagsClient`` (in this process) serving the new value, against a real
  ``keel serve`` (its own process, embedded SQLite), over ``TOGGLES`` toggles alternating on
  and off; p50, with p99 in ``extra`` (target p99 < 200 ms). The path: the server commits
  and publishes, the watch stream carries the change, the client reads the snapshot with
  ``If-None-Match``, recompiles the changed flag and swaps its store; the time is taken in
  the client's change callback, which runs right after the swap. Peer, in the same run: the
  toggle request's own round trip (its response), so the ratio says how much later than the
  writer's answer every reader has the change.
- ``flags.sdk_is_enabled_per_s``: ``FlagsClient.is_enabled`` per CPU second, events on (as
  shipped: one evaluation count per call), over ``CONTEXTS`` contexts on a flag with a rule
  (``ends_with``) and a 50/50 rollout. Peer, in the same run and alternating slices:
  ``FlagStore.evaluate`` on the same compiled store (the engine alone, whose rates
  ``bench_flags.py`` compares with other SDKs); the ratio is what the client adds (the
  default-type check, the evaluation count under a lock). The rate with events off is in
  ``extra``.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks._figures import Figure, emit, machine
from benchmarks._servers import HOST, clean_env
from benchmarks.bench_auth import BENCH_MASTER_KEY, _api, _running_keel
from keel_client.flags import FlagsChange, FlagsClient, FlagStore

TOGGLES = 50
#: A pause between toggles, so each is its own change (not coalesced with the next).
PAUSE_SECONDS = 0.05
TARGET_P99_MS = 200.0
CONTEXTS = 2_000
SLICES = 15
ENV = "production"
FLAG = "checkout"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def _prepare(port: int, admin_key: str) -> None:
    _api(port, "POST", "/flags/v1/envs", admin_key, {"key": ENV})
    _api(port, "POST", "/flags/v1/flags", admin_key, {"key": FLAG, "type": "boolean"})
    state = {
        "on": True,
        "off_variation": "off",
        "rules": [
            {
                "id": "corp",
                "clauses": [{"attribute": "email", "op": "ends_with", "values": ["@corp.com"]}],
                "serve": {"variation": "on"},
            }
        ],
        "fallthrough": {
            "rollout": {
                "variations": [
                    {"variation": "on", "weight": 50_000},
                    {"variation": "off", "weight": 50_000},
                ]
            }
        },
    }
    _api(port, "PUT", f"/flags/v1/envs/{ENV}/flags/{FLAG}", admin_key, state)


async def _propagation(base_url: str, admin_key: str) -> dict[str, list[float]]:
    corp = {"key": "user-1", "email": "ana@corp.com"}
    arrived: asyncio.Queue[tuple[float, bool]] = asyncio.Queue()
    propagation: list[float] = []
    requests: list[float] = []
    async with (
        FlagsClient(ENV, base_url, auth=admin_key, persist=False, send_events=False) as flags,
        httpx.AsyncClient(
            base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
        ) as http,
    ):

        def changed(change: FlagsChange) -> None:
            arrived.put_nowait((time.perf_counter(), flags.is_enabled(FLAG, corp)))

        flags.on_change(changed)
        on = flags.is_enabled(FLAG, corp)
        for _ in range(TOGGLES):
            on = not on
            started = time.perf_counter()
            answer = await http.post(f"/flags/v1/envs/{ENV}/flags/{FLAG}/toggle", json={"on": on})
            answered = time.perf_counter()
            answer.raise_for_status()
            async with asyncio.timeout(10):
                seen_at, value = await arrived.get()
                while value is not on:  # an earlier change's callback; wait for this one
                    seen_at, value = await arrived.get()
            propagation.append((seen_at - started) * 1000)
            requests.append((answered - started) * 1000)
            await asyncio.sleep(PAUSE_SECONDS)
    return {"propagation": propagation, "requests": requests}


def _evaluation_rates(base_url: str, admin_key: str) -> dict[str, float]:
    contexts = [
        {"key": f"user-{index}", "email": f"u{index}@{'corp' if index % 3 else 'example'}.com"}
        for index in range(CONTEXTS)
    ]

    async def measure() -> dict[str, float]:
        async with (
            FlagsClient(ENV, base_url, auth=admin_key, persist=False, flush_interval=3600) as on,
            FlagsClient(ENV, base_url, auth=admin_key, persist=False, send_events=False) as off,
        ):
            store: FlagStore = on.store

            def client_events_on() -> None:
                is_enabled = on.is_enabled
                for context in contexts:
                    is_enabled(FLAG, context)

            def client_events_off() -> None:
                is_enabled = off.is_enabled
                for context in contexts:
                    is_enabled(FLAG, context)

            def engine() -> None:
                evaluate = store.evaluate
                for context in contexts:
                    evaluate(FLAG, context, False, value_type="boolean")

            runners = {
                "sdk": client_events_on,
                "sdk_no_events": client_events_off,
                "engine": engine,
            }
            rates: dict[str, list[float]] = {name: [] for name in runners}
            names = list(runners)
            for runner in runners.values():
                runner()  # warm-up
            for index in range(SLICES):
                for name in names[index % len(names) :] + names[: index % len(names)]:
                    started = time.process_time()
                    runners[name]()
                    rates[name].append(CONTEXTS / (time.process_time() - started))
            ratios = [sdk / peer for sdk, peer in zip(rates["sdk"], rates["engine"], strict=True)]
            return {
                **{name: statistics.median(values) for name, values in rates.items()},
                "ratio": statistics.median(ratios),
            }

    return asyncio.run(measure())


def main() -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="keel-bench-flags-sdk-"))
    env = clean_env(KEEL_MASTER_KEY=BENCH_MASTER_KEY)
    try:
        with _running_keel(root, env) as (server, admin_key):
            _prepare(server.port, admin_key)
            base_url = f"http://{HOST}:{server.port}"
            measured = asyncio.run(_propagation(base_url, admin_key))
            rates = _evaluation_rates(base_url, admin_key)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    propagation, requests = measured["propagation"], measured["requests"]
    p50, p99 = statistics.median(propagation), _percentile(propagation, 0.99)
    request_p50 = statistics.median(requests)
    extra: dict[str, Any] = {
        "p99_ms": round(p99, 1),
        "max_ms": round(max(propagation), 1),
        "toggle_request_p50_ms": round(request_p50, 1),
        "toggles": len(propagation),
        "target_p99_ms": TARGET_P99_MS,
        "met": p99 < TARGET_P99_MS,
        "database": "sqlite",
        "server": "keel serve, 1 worker, its own process; the client in the benchmark's",
        "machine": machine(),
    }
    return [
        emit(
            Figure(
                "flags.sdk_toggle_propagation_p50_ms", round(p50, 1), "ms",
                "the toggle request's own round trip", round(p50 / request_p50, 2), extra,
            )
        ),
        emit(
            Figure(
                "flags.sdk_is_enabled_per_s", round(rates["sdk"]), "evaluations/s",
                "FlagStore.evaluate on the same store (the engine alone)",
                round(rates["ratio"], 3),
                {
                    "engine_per_s": round(rates["engine"]),
                    "events_off_per_s": round(rates["sdk_no_events"]),
                    "flag": "a rule (ends_with) and a 50/50 rollout",
                    "contexts": CONTEXTS,
                    "machine": machine(),
                },
            )
        ),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
