"""Config figures (issue #7): snapshot reads over HTTP, revalidated and full.

- ``config.snapshot_304_per_s``: ``GET /config/v1/apps/billing/envs/production`` with
  ``If-None-Match`` of the current revision, answered ``304 Not Modified`` per second by a
  real ``keel serve`` on the embedded SQLite: what an SDK polling or revalidating its copy
  costs. Each request is authenticated (a service account's access token) and checked for
  ``config:billing:read``.
- ``config.snapshot_read_per_s``: the same read without ``If-None-Match``: the whole snapshot
  (40 keys, about 2 KB of JSON) in the answer.

Peer, measured in the same run against the same server: ``GET /health/live`` (answered by
the outermost middleware, no routing, authentication or database): the framework's floor.
16 keep-alive connections from a separate load-generator process.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks._figures import Figure, emit
from benchmarks._servers import HOST, LOAD_GENERATOR, clean_env, run_load
from benchmarks.bench_auth import BENCH_MASTER_KEY, _api, _running_keel

ROUNDS = 3
CONCURRENCY = 16
SNAPSHOT = "/config/v1/apps/billing/envs/production"
#: The services the figures need; the others' start-up plays no part in a config read.
SERVICES = "auth,secrets,config,audit"


def _values() -> dict[str, Any]:
    values: dict[str, Any] = {f"feature_{i}": i % 2 == 0 for i in range(20)}
    values.update({f"limit_{i}": {"per_minute": 60 * i, "burst": i} for i in range(10)})
    values.update({f"endpoint_{i}": f"https://service-{i}.internal:8443/v2" for i in range(10)})
    return values


def _reader_token(port: int, admin_key: str) -> str:
    """A service account whose role may read the billing configuration."""
    _api(port, "POST", "/auth/v1/roles", admin_key,
         {"name": "billing-config", "permissions": ["config:billing:read"]})  # fmt: skip
    account = _api(port, "POST", "/auth/v1/service-accounts", admin_key,
                   {"name": "billing", "roles": ["billing-config"]})  # fmt: skip
    token = httpx.post(
        f"http://{HOST}:{port}/auth/v1/oauth/token", data={"grant_type": "client_credentials"},
        auth=(account["client_id"], account["client_secret"]),
    )  # fmt: skip
    token.raise_for_status()
    return str(token.json()["access_token"])


def _prepare(port: int, admin_key: str) -> str:
    """The application, its environment and values; the snapshot's ETag."""
    _api(port, "POST", "/config/v1/apps", admin_key, {"name": "billing"})
    _api(port, "POST", "/config/v1/apps/billing/envs", admin_key, {"name": "production"})
    _api(port, "PATCH", SNAPSHOT, admin_key, {"set": _values(), "message": "bench"})
    answer = httpx.get(
        f"http://{HOST}:{port}{SNAPSHOT}", headers={"Authorization": f"Bearer {admin_key}"}
    )
    answer.raise_for_status()
    return answer.headers["etag"]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="keel-bench-config-"))
    env = clean_env(KEEL_MASTER_KEY=BENCH_MASTER_KEY, KEEL_SERVICES=SERVICES)
    runs: dict[str, list[dict[str, Any]]] = {"not_modified": [], "full": [], "live": []}
    try:
        with _running_keel(root, env) as (server, admin_key):
            etag = _prepare(server.port, admin_key)
            token = _reader_token(server.port, admin_key)
            bearer = f"Authorization: Bearer {token}"
            headers = {
                "not_modified": f"{bearer}\r\nIf-None-Match: {etag}",
                "full": bearer,
                "live": None,
            }
            # Interleaved rounds: a slower moment of the machine weighs on every figure alike.
            for _ in range(ROUNDS):
                for kind, header in headers.items():
                    path = "/health/live" if kind == "live" else SNAPSHOT
                    cpu_before = server.cpu_seconds()
                    result = run_load(
                        server.port, path, duration=4.0, warmup=1.0, concurrency=CONCURRENCY,
                        header=header,
                    )  # fmt: skip
                    runs[kind].append(
                        {
                            "rps": result.rps,
                            "p50_ms": result.p50_ms,
                            "p99_ms": result.p99_ms,
                            "errors": result.errors,
                            "cpu_ms": (server.cpu_seconds() - cpu_before)
                            / max(1, result.total)
                            * 1e3,
                        }
                    )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    live = _median([run["rps"] for run in runs["live"]])
    common = {
        "database": "sqlite",
        "server": "keel serve, 1 worker, log level info (as shipped)",
        "services": SERVICES,
        "load_generator": LOAD_GENERATOR,
        "concurrency": CONCURRENCY,
        "snapshot_keys": len(_values()),
        "peer_per_s": live,
        "peer_runs": [run["rps"] for run in runs["live"]],
    }
    figures = []
    for kind, name in (("not_modified", "snapshot_304_per_s"), ("full", "snapshot_read_per_s")):
        rate = _median([run["rps"] for run in runs[kind]])
        figures.append(
            emit(
                Figure(
                    f"config.{name}", round(rate, 1), "reads/s", "/health/live (same server)",
                    round(rate / live, 3) if live else None,
                    {
                        **common,
                        "runs": [run["rps"] for run in runs[kind]],
                        "p50_ms": _median([run["p50_ms"] for run in runs[kind]]),
                        "p99_ms": _median([run["p99_ms"] for run in runs[kind]]),
                        "errors": sum(run["errors"] for run in runs[kind]),
                        "server_cpu_ms_per_read": round(
                            _median([run["cpu_ms"] for run in runs[kind]]), 2
                        ),
                    },
                )
            )
        )  # fmt: skip
    return figures


if __name__ == "__main__":
    main()
