"""Gateway proxy figures (issue 20): Keel's proxy against nginx as a reverse proxy, both in
front of the same upstream, driven by wrk.

The upstream is an nginx ``server`` answering ``return 200 "ok\\n";`` on its own port (one
worker): the fastest upstream there is, so the differences below are the proxies' own.

- ``gateway.direct``: wrk straight to the upstream (the latency baseline);
- ``gateway.nginx_1_worker`` / ``gateway.nginx_auto_workers``: nginx ``proxy_pass`` to the
  upstream (``keepalive 64`` on the upstream block, HTTP/1.1, ``Connection ""``), with
  ``worker_processes 1`` and ``auto``. Keel's proxy is one Python process, so the one-worker
  nginx is the ratio's peer (the same CPU at its disposal); ``auto`` is reported beside it;
- ``gateway.keel_floor``: ``keel serve`` with ``KEEL_GATEWAY__PROXY_LISTEN``, a route with
  ``auth: none``, no limits and security-header profile ``none`` (the least it can do);
- ``gateway.keel_realistic``: a route verifying a Keel access token (a service account's,
  from ``client_credentials``) locally against the JWKS, one sliding-window rate limit per
  caller (in memory: this Keel has no Redis; set high enough never to refuse) and the
  ``api`` security-header profile;
- ``gateway.keel_workers_floor`` / ``gateway.keel_workers_realistic``: the same routes on
  ``keel serve --workers <cores>`` with ``KEEL_GATEWAY__PROXY_REUSE_PORT`` (one proxy per
  core on one port, as nginx ``worker_processes auto`` runs one worker per core) and Redis
  (``KEEL_BENCH_REDIS_URL``, default ``redis://127.0.0.1:6379``: the setting needs it, the
  limit being shared by the processes). Their ratio is against nginx ``auto``: the same
  cores on both sides. The realistic route's limit is then a Redis round trip where the
  one-process case counts in memory, so the two realistic figures do not compare alone.
  Skipped (with a line on stderr) when Redis does not answer.

Each proxied case gives two figures (the ``rps`` ratio: one process against nginx's one
worker, one process a core against nginx's ``auto``):

- ``<case>.rps``: requests/s at ``CONNECTIONS`` keep-alive connections (wrk ``-t1``: one
  load thread leaves the proxy and the upstream the rest of the two cores). Ratio against
  the one-worker nginx, target at least 0.5. ``extra.cpu_us_per_request`` is the proxy
  process's CPU time (user + system, nginx's workers included) per answer in that run: on a
  machine shared with other work it moves far less than requests/s do;
- ``<case>.added_p50_ms`` (p99 in ``extra``): latency over one connection (wrk ``-c1``, one
  request in flight) minus the direct figure. Under saturation a closed loop's latency is
  only ``connections / throughput`` (queueing), so the overhead a request pays is measured
  unloaded; the loaded p50/p99 are in ``extra`` of the rps figure. Target at most 1 ms.

Every measurement is preceded by a warm-up run (pools filled, caches hot) and repeated
``ROUNDS`` times, rotating through the systems so that a noisy neighbour on a shared machine
meets all of them alike; the best round is the figure (the least disturbed one: most
requests/s, least latency or CPU, each on its own) and every round's value is in ``extra``
(``spread``).

``python -m benchmarks gateway`` (``make bench BENCH=gateway``). Needs ``nginx`` and ``wrk``
on ``PATH`` (or ``KEEL_BENCH_NGINX`` / ``KEEL_BENCH_WRK``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks._figures import Figure, emit, machine
from benchmarks._servers import (
    HOST,
    Server,
    ServerFailed,
    clean_env,
    free_port,
    keel_admin_key,
    keel_serve_command,
    nginx_command,
    run_wrk,
    wait_for_port,
    write_nginx_config,
)
from benchmarks.bench_auth import BENCH_MASTER_KEY

CONNECTIONS = 64
DURATION_SECONDS = 10
LATENCY_SECONDS = 5
WARMUP_SECONDS = 3
ROUNDS = 3
TARGET_RATIO = 0.5
TARGET_ADDED_P50_MS = 1.0
UPSTREAM_BODY = "ok\\n"
FLOOR_PATH = "/floor"
REALISTIC_PATH = "/api/items"


@dataclass(frozen=True)
class Case:
    """One system under load: where wrk sends its requests and with which header."""

    name: str
    port: int
    path: str
    header: str | None = None
    #: The proxy's process (nginx: its master and workers), for its CPU time per request.
    server: Server | None = None


# -- nginx ----------------------------------------------------------------------------------


def _upstream_config(port: int) -> str:
    return f"""
server {{
    listen {HOST}:{port} reuseport backlog=4096;
    location / {{
        default_type text/plain;
        return 200 "{UPSTREAM_BODY}";
    }}
}}
"""


def _reverse_proxy_config(port: int, upstream_port: int) -> str:
    return f"""
upstream keel_bench_upstream {{
    server {HOST}:{upstream_port};
    keepalive 64;
    keepalive_requests 1000000;
}}
server {{
    listen {HOST}:{port} backlog=4096;
    location / {{
        proxy_pass http://keel_bench_upstream;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
}}
"""


@contextlib.contextmanager
def _nginx(root: Path, name: str, server_block: str, workers: str, port: int) -> Iterator[Server]:
    prefix = root / name
    config = write_nginx_config(prefix, server_block, workers=workers)
    with Server(nginx_command(prefix, config), port=port, cwd=prefix) as server:
        wait_for_port(port)
        yield server


# -- Keel -----------------------------------------------------------------------------------


def _policy(upstream_port: int) -> dict[str, Any]:
    upstream = {
        "name": "bench",
        "targets": [{"url": f"http://{HOST}:{upstream_port}"}],
        # nginx's keepalive 64: as many upstream connections as wrk opens.
        "max_connections_per_target": CONNECTIONS,
    }
    floor = {
        "name": "floor",
        "path": FLOOR_PATH,
        "upstream": "bench",
        "auth": {"mode": "none"},
        "headers": {"profile": "none"},
    }
    realistic = {
        "name": "realistic",
        "path": "/api",
        "upstream": "bench",
        "auth": {"mode": "jwt"},
        "rate_limits": [
            {
                "name": "per-caller",
                "algorithm": "sliding_window",
                "limit": 100_000_000,
                "period_seconds": 60,
                "key": "principal",
            }
        ],
        "headers": {"profile": "api"},
    }
    return {"upstreams": [upstream], "routes": [floor, realistic]}


def _access_token(http: httpx.Client) -> str:
    """A service account's access token (``client_credentials``): a JWT the proxy verifies
    against the JWKS without a network hop."""
    created = http.post(
        "/auth/v1/service-accounts", json={"name": "bench-gateway", "roles": ["admin"]}
    )
    created.raise_for_status()
    account = created.json()
    answer = http.post(
        "/auth/v1/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(account["client_id"], account["client_secret"]),
    )
    if answer.status_code != 200:
        raise ServerFailed(f"token endpoint: {answer.status_code} {answer.text[:300]}")
    return str(answer.json()["access_token"])


@contextlib.contextmanager
def _keel(
    root: Path, upstream_port: int, *, workers: int = 1, redis_url: str | None = None
) -> Iterator[tuple[Server, int, str]]:
    """``keel serve`` with the proxy listening, the policy written: the server, the proxy's
    port and an access token for the realistic route. With ``workers`` above one: that many
    processes, each with a proxy on the one port (``SO_REUSEPORT``), sharing Redis."""
    cwd = root / f"keel-{workers}"
    cwd.mkdir()
    proxy_port = free_port()
    several = (
        {"KEEL_REDIS_URL": redis_url or "", "KEEL_GATEWAY__PROXY_REUSE_PORT": "true"}
        if workers > 1
        else {}
    )
    env = clean_env(
        KEEL_DATA_DIR=str(cwd / "data"),
        KEEL_MASTER_KEY=BENCH_MASTER_KEY,
        KEEL_LOG_LEVEL="warning",
        KEEL_GATEWAY__PROXY_LISTEN=f"{HOST}:{proxy_port}",
        **several,
    )
    admin_key = keel_admin_key(cwd, env)
    port = free_port()
    command = keel_serve_command(port, *(["--workers", str(workers)] if workers > 1 else []))
    with Server(command, port=port, cwd=cwd, env=env) as server:
        server.wait_http("/health/ready")
        with httpx.Client(base_url=server.url, timeout=30) as admin:
            admin.headers["Authorization"] = f"Bearer {admin_key}"
            written = admin.put("/gateway/v1/policy", json=_policy(upstream_port))
            if written.status_code >= 300:
                raise ServerFailed(f"policy: {written.status_code} {written.text[:500]}")
            token = _access_token(admin)
        _wait_routed(proxy_port, token)
        yield server, proxy_port, token


def _wait_routed(proxy_port: int, token: str, timeout: float = 30.0) -> None:
    """Until both routes answer 200 through the proxy (the policy reaches it by broadcast),
    eight times running, each on a new connection (with several processes on the port, the
    kernel gives each connection to one of them: every one must have the policy)."""
    deadline = time.monotonic() + timeout
    last = ""
    running = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            floor = httpx.get(f"http://{HOST}:{proxy_port}{FLOOR_PATH}", timeout=2)
            realistic = httpx.get(
                f"http://{HOST}:{proxy_port}{REALISTIC_PATH}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=2,
            )
            if floor.status_code == realistic.status_code == 200:
                running += 1
                if running >= 8:
                    return
                continue
            running = 0
            last = f"{floor.status_code} {realistic.status_code} {realistic.text[:200]}"
        time.sleep(0.1)
    raise ServerFailed(f"the proxy did not route within {timeout} s: {last}")


# -- measuring ------------------------------------------------------------------------------


def _measure(cases: list[Case]) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Every case under load and over one connection, ``ROUNDS`` times in rotation."""
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        case.name: {"load": [], "single": []} for case in cases
    }
    for case in cases:  # warm-up: fill pools, take every code path once
        run_wrk(case.port, case.path, connections=CONNECTIONS, seconds=WARMUP_SECONDS,
                header=case.header)  # fmt: skip
    for round_ in range(ROUNDS):
        shift = round_ % len(cases)
        for case in cases[shift:] + cases[:shift]:
            cpu_before = case.server.cpu_seconds() if case.server is not None else 0.0
            loaded = run_wrk(case.port, case.path, connections=CONNECTIONS,
                             seconds=DURATION_SECONDS, header=case.header)  # fmt: skip
            if case.server is not None:
                # CPU time per answer: less at the mercy of a busy machine than requests/s.
                cpu = case.server.cpu_seconds() - cpu_before
                loaded["cpu_us_per_request"] = round(cpu / loaded["requests"] * 1e6, 1)
            single = run_wrk(case.port, case.path, connections=1, seconds=LATENCY_SECONDS,
                             header=case.header)  # fmt: skip
            runs[case.name]["load"].append(loaded)
            runs[case.name]["single"].append(single)
    return runs


def _best(results: list[dict[str, float]], key: str, *, highest: bool) -> dict[str, float]:
    return (max if highest else min)(results, key=lambda result: result[key])


def _spread(results: list[dict[str, float]], key: str) -> list[float]:
    return sorted(round(result[key], 3) for result in results)


def _figures(runs: dict[str, dict[str, list[dict[str, float]]]]) -> list[Figure]:
    common = {
        "wrk": f"-t1 -c{CONNECTIONS} -d{DURATION_SECONDS}s --latency",
        "rounds": ROUNDS,
        "machine": machine(),
        "cpus": os.cpu_count(),
    }
    direct_load = _best(runs["direct"]["load"], "rps", highest=True)
    direct_p50 = min(result["p50_ms"] for result in runs["direct"]["single"])
    direct_p99 = min(result["p99_ms"] for result in runs["direct"]["single"])
    figures = [
        emit(Figure("gateway.direct.rps", round(direct_load["rps"]), "requests/s",
                    extra={"loaded_p50_ms": direct_load["p50_ms"],
                           "loaded_p99_ms": direct_load["p99_ms"],
                           "spread": _spread(runs["direct"]["load"], "rps"), **common})),
        emit(Figure("gateway.direct.p50_ms", direct_p50, "ms",
                    extra={"p99_ms": direct_p99, "connections": 1,
                           "spread": _spread(runs["direct"]["single"], "p50_ms"),
                           "spread_p99_ms": _spread(runs["direct"]["single"], "p99_ms")})),
    ]  # fmt: skip
    one_worker = _best(runs["nginx_1_worker"]["load"], "rps", highest=True)["rps"]
    auto = _best(runs["nginx_auto_workers"]["load"], "rps", highest=True)["rps"]
    names = ["nginx_1_worker", "nginx_auto_workers", "keel_floor", "keel_realistic"]
    names += [name for name in ("keel_workers_floor", "keel_workers_realistic") if name in runs]
    for name in names:
        per_core = name.startswith("keel_workers")
        peer_name = "nginx, auto workers" if per_core else "nginx, 1 worker"
        peer_rps = auto if per_core else one_worker
        load = _best(runs[name]["load"], "rps", highest=True)
        p50 = min(result["p50_ms"] for result in runs[name]["single"])
        p99 = min(result["p99_ms"] for result in runs[name]["single"])
        is_peer = name == "nginx_1_worker"
        figures.append(emit(Figure(
            f"gateway.{name}.rps", round(load["rps"]), "requests/s",
            peer=None if is_peer else peer_name,
            ratio=None if is_peer else round(load["rps"] / peer_rps, 3),
            extra={"loaded_p50_ms": load["p50_ms"], "loaded_p99_ms": load["p99_ms"],
                   "errors": load["errors"], "spread": _spread(runs[name]["load"], "rps"),
                   "cpu_us_per_request": min(_spread(runs[name]["load"], "cpu_us_per_request")),
                   "cpu_us_per_request_spread": _spread(runs[name]["load"], "cpu_us_per_request"),
                   "target": None if is_peer else TARGET_RATIO, **common},
        )))  # fmt: skip
        figures.append(emit(Figure(
            f"gateway.{name}.added_p50_ms",
            round(p50 - direct_p50, 3), "ms",
            peer="direct to the upstream",
            extra={"p50_ms": p50, "p99_ms": p99, "added_p99_ms": round(p99 - direct_p99, 3),
                   "connections": 1,
                   "spread_p50_ms": _spread(runs[name]["single"], "p50_ms"),
                   "spread_p99_ms": _spread(runs[name]["single"], "p99_ms"),
                   "target": TARGET_ADDED_P50_MS},
        )))  # fmt: skip
    return figures


def missing_tools() -> str | None:
    """Why this module cannot run here, or ``None`` when it can."""
    if shutil.which(os.environ.get("KEEL_BENCH_WRK", "wrk")) is None:
        return "wrk not found (Debian: apt-get install wrk)"
    if not (os.environ.get("KEEL_BENCH_NGINX") or shutil.which("nginx")
            or Path("/usr/sbin/nginx").exists()):  # fmt: skip
        return "nginx not found (Debian: apt-get install nginx)"
    return None


def main() -> list[Figure]:
    reason = missing_tools()
    if reason is not None:
        print(f"bench_gateway skipped: {reason}", file=sys.stderr, flush=True)
        return []
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        root = Path(tmp)
        upstream_port, nginx_one_port, nginx_auto_port = free_port(), free_port(), free_port()
        with (
            _nginx(root, "upstream", _upstream_config(upstream_port), "1", upstream_port),
            _nginx(root, "nginx-1", _reverse_proxy_config(nginx_one_port, upstream_port), "1",
                   nginx_one_port) as nginx_one,
            _nginx(root, "nginx-auto", _reverse_proxy_config(nginx_auto_port, upstream_port),
                   "auto", nginx_auto_port) as nginx_auto,
            _keel(root, upstream_port) as (keel, proxy_port, token),
            contextlib.ExitStack() as stack,
        ):  # fmt: skip
            bearer = f"Authorization: Bearer {token}"
            cases = [
                Case("direct", upstream_port, "/"),
                Case("nginx_1_worker", nginx_one_port, "/", server=nginx_one),
                Case("nginx_auto_workers", nginx_auto_port, "/", server=nginx_auto),
                Case("keel_floor", proxy_port, FLOOR_PATH, server=keel),
                Case("keel_realistic", proxy_port, REALISTIC_PATH, bearer, server=keel),
            ]
            redis_url = os.environ.get("KEEL_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
            if _redis_answers(redis_url):
                cores = os.cpu_count() or 1
                many, many_port, many_token = stack.enter_context(
                    _keel(root, upstream_port, workers=cores, redis_url=redis_url)
                )
                many_bearer = f"Authorization: Bearer {many_token}"
                cases += [
                    Case("keel_workers_floor", many_port, FLOOR_PATH, server=many),
                    Case("keel_workers_realistic", many_port, REALISTIC_PATH, many_bearer,
                         server=many),
                ]  # fmt: skip
            else:
                print(f"bench_gateway: no Redis at {redis_url}: one process only",
                      file=sys.stderr, flush=True)  # fmt: skip
            return _figures(_measure(cases))


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


if __name__ == "__main__":
    main()
