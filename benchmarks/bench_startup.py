"""Start-up figures (issue 15): how long the ``keel`` command takes to be useful.

- ``startup.version`` and ``startup.help``: the real ``keel version`` and ``keel --help``
  console scripts as whole processes, spawn to exit. Peer: ``python -c pass``, the
  interpreter's own start, measured in the same run.
- ``startup.serve_ready``: the real ``keel serve`` on the embedded default, in a directory
  already migrated and initialised (``keel init``), spawn to the first 200 from
  ``/health/ready`` (polled every 10 ms). Peer: a bare Starlette app on uvicorn with the same
  options (``benchmarks._servers.starlette_command``), the same way.

Every process runs with its bytecode cached, as an installed Keel has it: the caches live
under ``PYTHONPYCACHEPREFIX`` in the run's temporary directory (``PYTHONDONTWRITEBYTECODE``
is dropped), written by one unmeasured run of each command first. Runs alternate Keel and
peer; each figure is the median.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._figures import Figure, emit, machine
from benchmarks._servers import (
    Server,
    clean_env,
    free_port,
    keel_command,
    keel_serve_command,
    starlette_command,
)

COMMAND_RUNS = 15
SERVE_RUNS = 7
TARGET_COMMAND_S = 0.3
TARGET_SERVE_S = 1.0
PEER_INTERPRETER = "python -c pass"
PEER_SERVE = "starlette"


def _cpu_model() -> str | None:
    """The CPU's model name, as ``lscpu`` shows it (Linux only)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else None


def _env(root: Path) -> dict[str, str]:
    env = clean_env(PYTHONPYCACHEPREFIX=str(root / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _process_seconds(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - started


def _ready_seconds(command: list[str], port: int, cwd: Path, env: dict[str, str]) -> float:
    with Server(command, port=port, cwd=cwd, env=env) as server:
        return server.wait_http("/health/ready", interval=0.01)


def _figure(name: str, runs: list[float], peer: str, peer_runs: list[float], what: str,
            target_s: float) -> Figure:  # fmt: skip
    value = statistics.median(runs)
    peer_value = statistics.median(peer_runs)
    return emit(
        Figure(
            name, round(value, 3), "s", peer,
            round(value / peer_value, 2) if peer_value else None,
            {
                "what": what,
                "runs_s": [round(run, 3) for run in runs],
                "peer_s": round(peer_value, 3),
                "peer_runs_s": [round(run, 3) for run in peer_runs],
                "target_s": target_s,
                "met": value <= target_s,
                "machine": machine(),
                "cpu": _cpu_model(),
                "cpus": os.cpu_count(),
            },
        )
    )  # fmt: skip


def commands(root: Path) -> list[Figure]:
    env = _env(root)
    peer_command = [sys.executable, "-c", "pass"]
    figures = []
    for name, args in (("startup.version", ["version"]), ("startup.help", ["--help"])):
        command = keel_command(*args)
        _process_seconds(command, root, env)  # unmeasured: writes the bytecode caches
        _process_seconds(peer_command, root, env)
        runs, peer_runs = [], []
        for _ in range(COMMAND_RUNS):
            runs.append(_process_seconds(command, root, env))
            peer_runs.append(_process_seconds(peer_command, root, env))
        figures.append(
            _figure(
                name, runs, PEER_INTERPRETER, peer_runs,
                f"spawn `keel {' '.join(args)}` to its exit (a whole process)",
                TARGET_COMMAND_S,
            )
        )  # fmt: skip
    return figures


def serve_ready(root: Path) -> Figure:
    env = _env(root)
    directory = root / "serve"
    directory.mkdir()
    subprocess.run(
        keel_command("init"),
        cwd=directory,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    # Unmeasured: the first start of each writes its bytecode caches.
    _ready_seconds(keel_serve_command(port := free_port()), port, directory, env)
    _ready_seconds(starlette_command(port := free_port()), port, root / "peer", env)
    runs, peer_runs = [], []
    for _ in range(SERVE_RUNS):
        runs.append(_ready_seconds(keel_serve_command(port := free_port()), port, directory, env))
        peer_runs.append(
            _ready_seconds(starlette_command(port := free_port()), port, root / "peer", env)
        )
    return _figure(
        "startup.serve_ready", runs, PEER_SERVE, peer_runs,
        "spawn `keel serve` to the first 200 from /health/ready; ./.keel migrated and "
        "initialised (keel init)",
        TARGET_SERVE_S,
    )  # fmt: skip


def main() -> list[Figure]:
    root = Path(tempfile.mkdtemp(prefix="keel-bench-startup-"))
    try:
        return [*commands(root), serve_ready(root)]
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
