"""Secrets SDK figures (issue #6): ``keel_client.secrets`` reads, cached and not.

- ``secrets.sdk_cached_read_per_s``: ``await SecretsClient.get(path, key)`` answered from the
  SDK's cache, per second, in-process (one task, no I/O). Peer, in the same run: the least a
  hand-rolled TTL cache does for the same answer — a dict lookup, a ``time.monotonic()``
  expiry check and the key's value (a plain function call, no coroutine). The SDK adds path
  checks, the LRU move under a lock and the coroutine; the ratio is what that costs.
  The sync client's cached rate is in ``extra``.
- ``secrets.sdk_uncached_read_p50_ms``: ``await SecretsClient.get`` with the cache off
  (``cache_ttl=0``) against a real ``keel serve`` on the embedded SQLite, one read at a time
  on one keep-alive connection, p50 (and p99 in ``extra``). Peer, in the same run and
  alternating rounds: a bare ``httpx.AsyncClient`` GET of the same URL with the same token.
  Each read is authenticated, policy-checked, decrypted and audited by the server either way.

Every figure is the median of ``ROUNDS`` rounds, each ratio the median of the rounds' ratios
(SDK and peer alternate within a round, so a busy machine slows both alike).
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

from benchmarks._figures import Figure, emit
from benchmarks._servers import HOST, clean_env
from benchmarks.bench_auth import BENCH_MASTER_KEY, _running_keel
from benchmarks.bench_secrets import PATH, _reader_token
from keel_client.secrets import SecretsClient, SyncSecretsClient

ROUNDS = 7
CACHED_READS = 100_000
SEQUENTIAL_READS = 200
WARMUP_READS = 20
TARGET_CACHED_PER_S = 100_000.0


class _TTLDict:
    """The peer: the least a TTL cache does to hand out one value of a cached secret."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}

    def put(self, key: tuple[str, str], data: dict[str, Any]) -> None:
        self._entries[key] = (data, time.monotonic() + self.ttl)

    def get(self, key: tuple[str, str], name: str) -> Any:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() >= entry[1]:
            return None
        return entry[0][name]


async def _sdk_cached_rate(client: SecretsClient) -> float:
    get = client.get
    started = time.perf_counter()
    for _ in range(CACHED_READS):
        await get(PATH, "password")
    return CACHED_READS / (time.perf_counter() - started)


def _sync_cached_rate(client: SyncSecretsClient) -> float:
    get = client.get
    started = time.perf_counter()
    for _ in range(CACHED_READS):
        get(PATH, "password")
    return CACHED_READS / (time.perf_counter() - started)


def _peer_cached_rate(peer: _TTLDict) -> float:
    get = peer.get
    key = ("secret", PATH)
    started = time.perf_counter()
    for _ in range(CACHED_READS):
        get(key, "password")
    return CACHED_READS / (time.perf_counter() - started)


async def _sdk_latencies(client: SecretsClient) -> list[float]:
    latencies = []
    for attempt in range(SEQUENTIAL_READS + WARMUP_READS):
        started = time.perf_counter()
        await client.get(PATH, "password")
        if attempt >= WARMUP_READS:
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def _peer_latencies(http: httpx.AsyncClient, token: str) -> list[float]:
    latencies = []
    for attempt in range(SEQUENTIAL_READS + WARMUP_READS):
        started = time.perf_counter()
        answer = await http.get(f"/secrets/v1/secret/data/{PATH}", headers={"X-Vault-Token": token})
        answer.raise_for_status()
        _ = answer.json()["data"]["data"]["password"]
        if attempt >= WARMUP_READS:
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


async def _measure(base_url: str, token: str) -> dict[str, Any]:
    result: dict[str, Any] = {"sdk": [], "sync": [], "peer": [], "p50": [], "peer_p50": []}
    all_sdk: list[float] = []
    async with (
        SecretsClient(base_url, auth=token, cache_ttl=3600) as cached,
        SecretsClient(base_url, auth=token, cache_ttl=0) as uncached,
        httpx.AsyncClient(base_url=base_url, timeout=30.0) as http,
    ):
        with SyncSecretsClient(base_url, auth=token, cache_ttl=3600) as sync_cached:
            await cached.get(PATH)
            data = sync_cached.get(PATH)
            peer = _TTLDict(3600)
            peer.put(("secret", PATH), data)
            for _ in range(ROUNDS):
                result["sdk"].append(await _sdk_cached_rate(cached))
                result["sync"].append(_sync_cached_rate(sync_cached))
                result["peer"].append(_peer_cached_rate(peer))
                sdk = await _sdk_latencies(uncached)
                all_sdk.extend(sdk)
                result["p50"].append(statistics.median(sdk))
                result["peer_p50"].append(statistics.median(await _peer_latencies(http, token)))
    result["p99"] = _percentile(all_sdk, 0.99)
    return result


def main() -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="keel-bench-secrets-sdk-"))
    env = clean_env(KEEL_MASTER_KEY=BENCH_MASTER_KEY)
    try:
        with _running_keel(root, env) as (server, admin_key):
            base_url = f"http://{HOST}:{server.port}"
            written = httpx.post(
                f"{base_url}/secrets/v1/secret/data/{PATH}",
                json={"data": {"password": "x" * 32, "user": "billing"}},
                headers={"X-Vault-Token": admin_key},
            )
            written.raise_for_status()
            token = _reader_token(server.port, admin_key)
            measured = asyncio.run(_measure(base_url, token))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rate = statistics.median(measured["sdk"])
    peer_rate = statistics.median(measured["peer"])
    # Per-round ratios: a busy machine slows both sides of a round alike.
    cached_ratio = statistics.median(
        sdk / peer for sdk, peer in zip(measured["sdk"], measured["peer"], strict=True)
    )
    latency_ratio = statistics.median(
        sdk / peer for sdk, peer in zip(measured["p50"], measured["peer_p50"], strict=True)
    )
    p50 = statistics.median(measured["p50"])
    peer_p50 = statistics.median(measured["peer_p50"])
    return [
        emit(
            Figure(
                "secrets.sdk_cached_read_per_s", round(rate), "reads/s",
                "dict + monotonic TTL check (hand-rolled cache, sync call)",
                round(cached_ratio, 3),
                {
                    "peer_per_s": round(peer_rate),
                    "sync_client_per_s": round(statistics.median(measured["sync"])),
                    "runs": [round(value) for value in measured["sdk"]],
                    "reads_per_run": CACHED_READS,
                    "target_per_s": TARGET_CACHED_PER_S,
                    "met": rate >= TARGET_CACHED_PER_S,
                },
            )
        ),
        emit(
            Figure(
                "secrets.sdk_uncached_read_p50_ms", round(p50, 2), "ms",
                "httpx.AsyncClient GET, same URL and token",
                round(latency_ratio, 3),
                {
                    "peer_p50_ms": round(peer_p50, 2),
                    "p99_ms": round(measured["p99"], 2),
                    "reads": SEQUENTIAL_READS * ROUNDS,
                    "database": "sqlite",
                    "server": "keel serve, 1 worker, log level info (as shipped)",
                },
            )
        ),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
