"""Run the real ``keel`` command in a subprocess: one-shot commands and a served API.

Every child gets a clean environment (no ``KEEL_*`` variable of the developer's shell) and
runs in a directory of the test's own, so the embedded default's ``./.keel`` lands there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

#: The ``keel`` script of the interpreter running the tests (the project's venv).
KEEL = str(Path(sys.executable).with_name("keel"))
REPOSITORY = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT = 60.0
READY_TIMEOUT = 30.0


#: What ``keel init`` prints with the administrator's API key (group 1: the key).
ADMIN_KEY = re.compile(r"admin API key \(shown once, store it now\): (keel_\S+)")

#: A fixed master key for tests (base64 of 32 bytes); never used outside tests.
TEST_MASTER_KEY = "dGVzdC1vbmx5LW1hc3Rlci1rZXktMzItYnl0ZXMhISE="


#: How long the suite's apps and servers let a statement wait: the defaults (SQLite's writer
#: turn 5 s, a PostgreSQL statement 5 s, opening a PostgreSQL connection 2 s) were outlasted on
#: the loaded CI machine (two suites' servers, workers and companion tasks on 2 cores), and a
#: request answered 503 or a test's app failed to start. Tests of those bounds set their own
#: (tests/core/test_errors.py, tests/core/test_db.py, tests/test_outages.py, tests/test_serve.py).
LOADED_MACHINE_WAITS = {
    "KEEL_DATABASE_POOL__SQLITE_BUSY_TIMEOUT_SECONDS": "60",
    "KEEL_DATABASE_POOL__COMMAND_TIMEOUT_SECONDS": "30",
    "KEEL_DATABASE_POOL__CONNECT_TIMEOUT_SECONDS": "15",
}


def keel_env(**variables: str) -> dict[str, str]:
    """The test process's environment without ``KEEL_*``, plus the test master key, the
    :data:`LOADED_MACHINE_WAITS` and ``variables``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("KEEL_")}
    env["KEEL_MASTER_KEY"] = TEST_MASTER_KEY
    env.update(LOADED_MACHINE_WAITS)
    env.update(variables)
    return env


def run_keel(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``keel <args>`` to completion; stdout and stderr are captured as text."""
    return subprocess.run(
        [KEEL, *args],
        cwd=cwd,
        env=dict(env) if env is not None else keel_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    """A TCP port nothing listens on right now (bound once to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it does not end in time; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return int(process.returncode)


def read_log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a child's stderr file (every line must be JSON)."""
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # still being written: a reader racing the server sees half a line
    return [json.loads(line) for line in lines if line.strip()]


def wait_for(
    condition: Any, *, timeout: float = 20.0, interval: float = 0.05, message: str = ""
) -> Any:
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


@dataclass
class KeelServer:
    """A running ``keel serve``: its process, base URL and stderr (the log) file."""

    process: subprocess.Popen[bytes]
    base_url: str
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10.0)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as http:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"keel serve exited with {self.process.returncode}:\n{self.stderr()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/health/ready").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise AssertionError(f"keel serve not ready in {timeout} s:\n{self.stderr()}")
                time.sleep(0.1)


@contextlib.contextmanager
def keel_server(
    cwd: Path, env: Mapping[str, str] | None = None, *args: str
) -> Iterator[KeelServer]:
    """``keel serve`` on a free port in ``cwd``, ready on entry, always stopped on exit."""
    port = free_port()
    with _server([KEEL, "serve", "--port", str(port), *args], port, cwd, env) as server:
        yield server


@contextlib.contextmanager
def uvicorn_server(
    factory: str, cwd: Path, env: Mapping[str, str] | None = None
) -> Iterator[KeelServer]:
    """An app factory (``tests.support.<module>:<factory>``) served by uvicorn as ``keel serve``
    serves Keel."""
    port = free_port()
    code = (
        "import uvicorn; "
        f"uvicorn.run({factory!r}, factory=True, host='127.0.0.1', port={port}, "
        "log_config=None, server_header=False)"
    )
    child_env = dict(env) if env is not None else keel_env()
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPOSITORY), child_env.get("PYTHONPATH")])
    )
    with _server([sys.executable, "-c", code], port, cwd, child_env) as server:
        yield server


@contextlib.contextmanager
def _server(
    command: Sequence[str], port: int, cwd: Path, env: Mapping[str, str] | None
) -> Iterator[KeelServer]:
    stderr_path = cwd / f"server-{port}.log"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=dict(env) if env is not None else keel_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        server = KeelServer(process, f"http://127.0.0.1:{port}", stderr_path)
        server.wait_ready()
        yield server
    finally:
        stop_process(process)
