"""Foundation figures (issue #2): cold start, idle memory and ``/health/live`` throughput.

Every figure runs the real ``keel serve`` console script in a fresh temporary directory (the
embedded default: SQLite under ``./.keel``) and, as the peer, a bare Starlette app served by
uvicorn with the same options, in the same run:

- ``foundation.cold_start``: spawn to the first 200 from ``/health/ready`` (polled every
  10 ms) in an empty directory, so it includes creating and migrating the database.
  ``foundation.cold_start_existing_db``: the same with the database already migrated.
- ``foundation.idle_rss``: RSS of the server process after start-up, a few requests and 2 s
  idle.
- ``foundation.health_live_rps``: ``GET /health/live`` per second on one worker, Keel as it
  ships (log level info: one JSON log line per request), driven by a closed-loop HTTP/1.1
  client in a separate process; ``foundation.health_live_rps_quiet``: ``KEEL_LOG_LEVEL=warning``.
  Runs alternate Keel / quiet Keel / Starlette / bare FastAPI (context: Keel is a FastAPI
  app), and each figure is the median of its runs. The server's CPU time per request (user +
  system, warm-up included) is reported too: unlike req/s it does not depend on whether the
  server or the load generator saturates first on a small machine.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks._figures import Figure, emit
from benchmarks._servers import (
    LOAD_GENERATOR,
    LoadResult,
    Server,
    clean_env,
    fastapi_command,
    free_port,
    http_get,
    keel_serve_command,
    run_load,
    starlette_command,
)

PEER = "starlette"
COLD_START_RUNS = 5
LOAD_ROUNDS = 3
LOAD_SECONDS = 5.0
WARMUP_SECONDS = 1.0
CONCURRENCY = 32
IDLE_SECONDS = 2.0
MB = 1024 * 1024

TARGET_COLD_START_S = 1.5
TARGET_IDLE_RSS_MB = 120.0
TARGET_RPS_RATIO = 0.7
#: Issue 23 raised it: at least a bare Starlette app's rate with the same server settings.
ISSUE_23_RPS_RATIO = 1.0

#: What the idle-RSS figure asks of each server before it idles.
_WARM_PATHS_KEEL = ("/health/live", "/health/ready", "/health/startup", "/metrics", "/nope")
_WARM_PATHS_PEER = ("/health/live", "/health/ready")


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _ratio(value: float, peer: float) -> float | None:
    return round(value / peer, 3) if peer else None


def _time_to_ready(command: Callable[[int], list[str]], cwd: Path, **env: str) -> float:
    port = free_port()
    with Server(command(port), port=port, cwd=cwd, env=clean_env(**env)) as server:
        return server.wait_http("/health/ready", interval=0.01)


def cold_start(root: Path) -> list[Figure]:
    fresh: list[float] = []
    existing: list[float] = []
    peer: list[float] = []
    # One unmeasured round first, so every measured run finds the interpreter, the venv and
    # the bytecode in the page cache (as a restarted service would).
    first_run = _time_to_ready(keel_serve_command, root / "cold-warmup")
    for run in range(COLD_START_RUNS):
        directory = root / f"cold-{run}"
        fresh.append(_time_to_ready(keel_serve_command, directory))  # creates .keel/
        existing.append(_time_to_ready(keel_serve_command, directory))  # .keel/ migrated
        peer.append(_time_to_ready(starlette_command, root / f"cold-peer-{run}"))
    peer_s = _median(peer)
    figures = []
    for name, runs, note in (
        ("foundation.cold_start", fresh, "empty directory: creates and migrates ./.keel"),
        ("foundation.cold_start_existing_db", existing, "./.keel already migrated"),
    ):
        value = _median(runs)
        figures.append(
            emit(
                Figure(
                    name, round(value, 3), "s", PEER, _ratio(value, peer_s),
                    {
                        "what": f"spawn `keel serve` to first 200 from /health/ready; {note}",
                        "runs_s": [round(r, 3) for r in runs],
                        "peer_s": round(peer_s, 3),
                        "peer_runs_s": [round(r, 3) for r in peer],
                        "first_unmeasured_run_s": round(first_run, 3),
                        "target_s": TARGET_COLD_START_S,
                        "met": value <= TARGET_COLD_START_S,
                    },
                )
            )
        )  # fmt: skip
    return figures


def _warm_up(server: Server, paths: tuple[str, ...]) -> None:
    for _ in range(4):
        for path in paths:
            http_get(server.port, path)


def idle_rss(keel: Server, peer: Server) -> Figure:
    _warm_up(keel, _WARM_PATHS_KEEL)
    _warm_up(peer, _WARM_PATHS_PEER)
    time.sleep(IDLE_SECONDS)
    value = keel.rss_bytes() / MB
    peer_mb = peer.rss_bytes() / MB
    uss = keel.uss_bytes()
    return emit(
        Figure(
            "foundation.idle_rss", round(value, 1), "MB", PEER, _ratio(value, peer_mb),
            {
                "what": "RSS of one `keel serve` process (workers=1, no children) after "
                f"{4 * len(_WARM_PATHS_KEEL)} requests and {IDLE_SECONDS:g} s idle",
                "peer_mb": round(peer_mb, 1),
                "uss_mb": round(uss / MB, 1) if uss is not None else None,
                "target_mb": TARGET_IDLE_RSS_MB,
                "met": value <= TARGET_IDLE_RSS_MB,
            },
        )
    )  # fmt: skip


def _cpu_us_per_request(runs: list[tuple[LoadResult, float]]) -> float:
    return round(_median([cpu / result.total * 1e6 for result, cpu in runs]), 1)


def throughput(servers: dict[str, Server]) -> list[Figure]:
    measured: dict[str, list[tuple[LoadResult, float]]] = {name: [] for name in servers}
    names = list(servers)
    for round_ in range(LOAD_ROUNDS):
        # Rotate the order each round so no server always runs first (or right after another).
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            cpu_before = servers[name].cpu_seconds()
            result = run_load(
                servers[name].port, "/health/live",
                duration=LOAD_SECONDS, warmup=WARMUP_SECONDS, concurrency=CONCURRENCY,
            )  # fmt: skip
            measured[name].append((result, servers[name].cpu_seconds() - cpu_before))
    results = {name: [result for result, _ in runs] for name, runs in measured.items()}
    peer_rps = _median([r.rps for r in results[PEER]])
    fastapi_rps = _median([r.rps for r in results["fastapi"]])
    figures = []
    for name, key, level in (
        ("foundation.health_live_rps", "keel", "info"),
        ("foundation.health_live_rps_quiet", "keel_quiet", "warning"),
    ):
        runs = results[key]
        value = _median([r.rps for r in runs])
        ratio = _ratio(value, peer_rps)
        figures.append(
            emit(
                Figure(
                    name, round(value, 1), "req/s", PEER, ratio,
                    {
                        "log_level": level,
                        "runs_rps": [r.rps for r in runs],
                        "peer_rps": round(peer_rps, 1),
                        "peer_runs_rps": [r.rps for r in results[PEER]],
                        "p50_ms": _median([r.p50_ms for r in runs]),
                        "p99_ms": _median([r.p99_ms for r in runs]),
                        "peer_p50_ms": _median([r.p50_ms for r in results[PEER]]),
                        "server_cpu_us_per_req": _cpu_us_per_request(measured[key]),
                        "peer_server_cpu_us_per_req": _cpu_us_per_request(measured[PEER]),
                        "fastapi_rps": round(fastapi_rps, 1),
                        "ratio_vs_fastapi": _ratio(value, fastapi_rps),
                        "fastapi_server_cpu_us_per_req": _cpu_us_per_request(measured["fastapi"]),
                        "errors": sum(r.errors for r in runs),
                        "load_generator": f"{LOAD_GENERATOR}, {runs[0].loop} loop",
                        "concurrency": CONCURRENCY,
                        "duration_s": LOAD_SECONDS,
                        "warmup_s": WARMUP_SECONDS,
                        "rounds": LOAD_ROUNDS,
                        "target_ratio": TARGET_RPS_RATIO,
                        "met": ratio is not None and ratio >= TARGET_RPS_RATIO,
                        "issue_23_target_ratio": ISSUE_23_RPS_RATIO,
                        "met_issue_23": ratio is not None and ratio >= ISSUE_23_RPS_RATIO,
                    },
                )
            )
        )  # fmt: skip
    return figures


def main() -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="keel-bench-foundation-"))
    try:
        figures = cold_start(root)
        ports = {name: free_port() for name in ("keel", "keel_quiet", PEER, "fastapi")}
        with (
            Server(keel_serve_command(ports["keel"]), port=ports["keel"], cwd=root / "keel")
            as keel,
            Server(
                keel_serve_command(ports["keel_quiet"]), port=ports["keel_quiet"],
                cwd=root / "keel-quiet", env=clean_env(KEEL_LOG_LEVEL="warning"),
            ) as keel_quiet,
            Server(starlette_command(ports[PEER]), port=ports[PEER], cwd=root / "peer") as peer,
            Server(
                fastapi_command(ports["fastapi"]), port=ports["fastapi"], cwd=root / "fastapi"
            ) as fastapi,
        ):  # fmt: skip
            for server in (keel, keel_quiet, peer, fastapi):
                server.wait_http("/health/ready")
            figures.append(idle_rss(keel, peer))
            figures.extend(
                throughput({"keel": keel, "keel_quiet": keel_quiet, PEER: peer, "fastapi": fastapi})
            )
        return figures
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
