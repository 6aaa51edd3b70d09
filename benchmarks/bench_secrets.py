"""Secrets figures (issue #6): authenticated KV reads over HTTP.

- ``secrets.kv_read_per_s``: ``GET /secrets/v1/secret/data/<path>`` answered per second by a
  real ``keel serve`` on the embedded SQLite, each read authenticated (a service account's
  access token), checked against a path policy, decrypted and audited; 16 keep-alive
  connections from a separate load-generator process.
- ``secrets.kv_read_p50_ms``: the same read, one at a time on one connection (latency without
  queueing), p50 and p99.

No peer: Vault itself cannot run here. The SDK's cached read is in ``bench_secrets_sdk``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks._figures import Figure, emit
from benchmarks._servers import HOST, LOAD_GENERATOR, clean_env, run_load
from benchmarks.bench_auth import BENCH_MASTER_KEY, _api, _running_keel

TARGET_READS_PER_S = 1_000.0
TARGET_P50_MS = 3.0
ROUNDS = 3
SEQUENTIAL_READS = 300
PATH = "apps/billing/db"


def _reader_token(port: int, admin_key: str) -> str:
    """A service account whose role holds a policy that grants reading ``PATH``."""
    headers = {"X-Vault-Token": admin_key}
    base = f"http://{HOST}:{port}"
    policy = f'path "secret/data/{PATH.rsplit("/", 1)[0]}/*" {{ capabilities = ["read"] }}'
    answer = httpx.put(
        f"{base}/secrets/v1/sys/policies/acl/billing-read", json={"policy": policy},
        headers=headers,
    )  # fmt: skip
    answer.raise_for_status()
    _api(port, "POST", "/auth/v1/roles", admin_key,
         {"name": "billing-reader", "permissions": ["secrets:policy:billing-read"]})  # fmt: skip
    account = _api(port, "POST", "/auth/v1/service-accounts", admin_key,
                   {"name": "billing", "roles": ["billing-reader"]})  # fmt: skip
    token = httpx.post(
        f"{base}/auth/v1/oauth/token", data={"grant_type": "client_credentials"},
        auth=(account["client_id"], account["client_secret"]),
    )  # fmt: skip
    token.raise_for_status()
    return str(token.json()["access_token"])


def _sequential(port: int, token: str) -> list[float]:
    latencies = []
    with httpx.Client(base_url=f"http://{HOST}:{port}") as http:
        for attempt in range(SEQUENTIAL_READS + 20):
            started = time.perf_counter()
            answer = http.get(f"/secrets/v1/secret/data/{PATH}", headers={"X-Vault-Token": token})
            elapsed = time.perf_counter() - started
            answer.raise_for_status()
            if attempt >= 20:
                latencies.append(elapsed * 1000)
    return sorted(latencies)


def main() -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="keel-bench-secrets-"))
    env = clean_env(KEEL_MASTER_KEY=BENCH_MASTER_KEY)
    try:
        with _running_keel(root, env) as (server, admin_key):
            written = httpx.post(
                f"http://{HOST}:{server.port}/secrets/v1/secret/data/{PATH}",
                json={"data": {"password": "x" * 32, "user": "billing"}},
                headers={"X-Vault-Token": admin_key},
            )
            written.raise_for_status()
            token = _reader_token(server.port, admin_key)
            runs: list[dict[str, Any]] = []
            for _ in range(ROUNDS):
                cpu_before = server.cpu_seconds()
                result = run_load(
                    server.port, f"/secrets/v1/secret/data/{PATH}", duration=4.0, warmup=1.0,
                    concurrency=16, header=f"X-Vault-Token: {token}",
                )  # fmt: skip
                runs.append(
                    {
                        "rps": result.rps,
                        "p50_ms": result.p50_ms,
                        "p99_ms": result.p99_ms,
                        "errors": result.errors,
                        "cpu_ms": (server.cpu_seconds() - cpu_before) / max(1, result.total) * 1e3,
                    }
                )
            latencies = _sequential(server.port, token)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rates = sorted(run["rps"] for run in runs)
    rate = rates[len(rates) // 2]
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[int(len(latencies) * 0.99)]
    common = {"database": "sqlite", "server": "keel serve, 1 worker, log level info (as shipped)"}
    return [
        emit(
            Figure(
                "secrets.kv_read_per_s", round(rate, 1), "reads/s", None, None,
                {
                    **common,
                    "runs": [run["rps"] for run in runs],
                    "p50_ms_at_16": sorted(run["p50_ms"] for run in runs)[len(runs) // 2],
                    "p99_ms_at_16": sorted(run["p99_ms"] for run in runs)[len(runs) // 2],
                    "errors": sum(run["errors"] for run in runs),
                    "server_cpu_ms_per_read": round(
                        sorted(run["cpu_ms"] for run in runs)[len(runs) // 2], 2
                    ),
                    "load_generator": LOAD_GENERATOR,
                    "concurrency": 16,
                    "target_per_s": TARGET_READS_PER_S,
                    "met": rate >= TARGET_READS_PER_S,
                },
            )
        ),
        emit(
            Figure(
                "secrets.kv_read_p50_ms", round(p50, 2), "ms", None, None,
                {
                    **common,
                    "p99_ms": round(p99, 2),
                    "reads": len(latencies),
                    "client": "httpx.Client, one keep-alive connection, sequential",
                    "target_ms": TARGET_P50_MS,
                    "met": p50 <= TARGET_P50_MS,
                },
            )
        ),
    ]  # fmt: skip


if __name__ == "__main__":
    main()
