"""Shared helpers for benchmarks that run real servers in subprocesses.

- :func:`free_port`, :func:`clean_env`, :func:`keel_command`, :func:`starlette_command`:
  how to start ``keel serve`` (the real console script) and a bare uvicorn + Starlette peer.
- :class:`Server`: one server subprocess bound to 127.0.0.1; poll it until it answers, read
  its RSS, stop it (SIGTERM, then SIGKILL) — use it as a context manager so it always stops.
- :func:`run_load`: a closed-loop HTTP/1.1 load generator in a *separate process* (raw asyncio
  protocol, keep-alive, one request in flight per connection, no pipelining), so the client
  does not compete with the server for the same interpreter. ``python _servers.py load ...``
  is its entry point; it imports only the standard library (and uvloop when installed).

Only the standard library is imported at module level: uvicorn imports this module in the
peer process (``benchmarks._servers:starlette_app``), and its RSS is a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
#: The JSON both Keel's ``/health/live`` and the Starlette peer answer.
LIVE_BODY = {"status": "pass"}


def free_port(host: str = HOST) -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without any ``KEEL_*`` variable, plus ``overrides``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KEEL_")}
    env.update(overrides)
    return env


def keel_command(*args: str) -> list[str]:
    """The real ``keel`` console script next to this interpreter (``.venv/bin/keel``)."""
    script = Path(sys.executable).parent / "keel"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "from keel.cli import main; main()", *args]


def run_keel_command(*args: str, cwd: Path, env: dict[str, str]) -> str:
    """``keel <args>`` to completion; its stdout, or :class:`ServerFailed` with its stderr."""
    completed = subprocess.run(
        keel_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        raise ServerFailed(f"keel {' '.join(args)} failed: {completed.stderr[-2000:]}")
    return completed.stdout


def keel_admin_key(cwd: Path, env: dict[str, str], *, migrate: bool = True) -> str:
    """Migrate (unless told not to) and ``keel init`` a deployment: the admin API key."""
    if migrate:
        run_keel_command("migrate", cwd=cwd, env=env)
    printed = run_keel_command("init", cwd=cwd, env=env)
    match = re.search(r"admin API key \(shown once, store it now\): (keel_\S+)", printed)
    if match is None:
        raise ServerFailed("keel init printed no admin API key")
    return match.group(1)


def keel_serve_command(port: int, *args: str) -> list[str]:
    return keel_command("serve", "--host", HOST, "--port", str(port), *args)


def starlette_command(
    port: int, *, log_level: str = "warning", app: str = "starlette"
) -> list[str]:
    """A bare Starlette app (or, with ``app="fastapi"``, a bare FastAPI app) answering
    ``GET /health/live`` and ``/health/ready`` with the same JSON as Keel, served by uvicorn
    with Keel's options (auto loop and HTTP implementation, proxy headers on, no server
    header, no access log)."""
    return [
        sys.executable, "-m", "uvicorn", f"benchmarks._servers:{app}_app", "--factory",
        "--app-dir", str(REPO_ROOT),
        "--host", HOST, "--port", str(port),
        "--log-level", log_level, "--no-access-log",
        "--proxy-headers", "--no-server-header",
    ]  # fmt: skip


def starlette_app() -> Any:
    """The peer app (a uvicorn factory)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def live(request: Any) -> JSONResponse:
        return JSONResponse(LIVE_BODY)

    return Starlette(
        routes=[Route("/health/live", live), Route("/health/ready", live)],
    )


def fastapi_app() -> Any:
    """A bare FastAPI app with the same two routes (a second peer: Keel is a FastAPI app)."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return LIVE_BODY

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return LIVE_BODY

    return app


def fastapi_command(port: int, *, log_level: str = "warning") -> list[str]:
    return starlette_command(port, log_level=log_level, app="fastapi")


def http_get(port: int, path: str, *, host: str = HOST, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a fresh connection: ``(status, body)``."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class ServerFailed(RuntimeError):
    pass


class Server:
    """One server subprocess: ``with Server(cmd, cwd=..., port=...) as server: ...``.

    stdout and stderr go to ``log_path`` (default ``<cwd>/server.log``), never to a pipe
    nobody reads (a full pipe would stall a server that logs each request).
    """

    def __init__(
        self,
        command: list[str],
        *,
        port: int,
        cwd: Path,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.command = command
        self.port = port
        self.cwd = Path(cwd)
        self.env = env if env is not None else clean_env()
        self.log_path = log_path or self.cwd / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Server:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.spawned_at = time.perf_counter()
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_http(
        self, path: str = "/health/ready", *, timeout: float = 60.0, interval: float = 0.01
    ) -> float:
        """Poll ``path`` every ``interval`` s until a 200; return seconds since the spawn."""
        assert self.process is not None
        deadline = self.spawned_at + timeout
        while True:
            if self.process.poll() is not None:
                raise ServerFailed(
                    f"{self.command[0]} exited with {self.process.returncode}: {self.log_tail()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = http_get(self.port, path, timeout=max(interval, 1.0))
                if status == 200:
                    return time.perf_counter() - self.spawned_at
            if time.perf_counter() > deadline:
                raise ServerFailed(f"no 200 from {path} within {timeout} s: {self.log_tail()}")
            time.sleep(interval)

    def rss_bytes(self, *, children: bool = True) -> int:
        """Resident set size of the server (and its children, if any)."""
        import psutil

        process = psutil.Process(self.pid)
        processes = [process, *(process.children(recursive=True) if children else [])]
        return sum(p.memory_info().rss for p in processes)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server (and its children) used so far."""
        import psutil

        process = psutil.Process(self.pid)
        total = 0.0
        for p in [process, *process.children(recursive=True)]:
            times = p.cpu_times()
            total += times.user + times.system
        return total

    def uss_bytes(self) -> int | None:
        """Unique set size (memory freed if the process ended), when the OS can tell."""
        import psutil

        try:
            return int(psutil.Process(self.pid).memory_full_info().uss)
        except (psutil.AccessDenied, AttributeError):
            return None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Server:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# Load generator (runs in its own process)
# ---------------------------------------------------------------------------------------------

LOAD_GENERATOR = "python asyncio raw HTTP/1.1 keep-alive client (separate process)"


@dataclass
class LoadResult:
    rps: float
    #: 2xx answers in the measured window / in the whole run (warm-up included).
    requests: int
    total: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    concurrency: int
    loop: str
    extra: dict[str, Any] = field(default_factory=dict)


def run_load(
    port: int,
    path: str = "/health/live",
    *,
    duration: float = 5.0,
    warmup: float = 1.0,
    concurrency: int = 32,
    host: str = HOST,
    header: str | None = None,
) -> LoadResult:
    """Drive ``GET path`` with ``concurrency`` keep-alive connections from a child process;
    ``header`` (``"Name: value"``, a credential) is sent with every request."""
    command = [
        sys.executable, str(HERE), "load",
        "--host", host, "--port", str(port), "--path", path,
        "--duration", str(duration), "--warmup", str(warmup),
        "--concurrency", str(concurrency),
    ]  # fmt: skip
    env = {**os.environ, "KEEL_BENCH_HEADER": header} if header else None
    completed = subprocess.run(
        command, capture_output=True, timeout=duration + warmup + 60, check=False, cwd=REPO_ROOT,
        env=env,
    )  # fmt: skip
    if completed.returncode != 0:
        raise ServerFailed(f"load generator failed: {completed.stderr.decode(errors='replace')}")
    data = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    if not data["requests"]:
        raise ServerFailed(f"load generator got no answer: {completed.stderr.decode()[-2000:]}")
    return LoadResult(**data)


class _Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.running = True
        self.ok = 0
        self.total = 0
        self.errors = 0
        self.latencies: list[float] = []


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending the next request as soon as a response completes."""

    def __init__(self, request: bytes, stats: _Stats, closed: asyncio.Future[None]) -> None:
        self.request = request
        self.stats = stats
        self.closed = closed
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        status = int(head[9:12])
        marker = head.find(b"\r\ncontent-length:")
        if marker >= 0:
            line_end = head.find(b"\r\n", marker + 2)
            length = int(head[marker + 17 : line_end if line_end >= 0 else len(head)])
        elif status in (204, 304):  # never a body (RFC 9110 6.4.1)
            length = 0
        else:
            self._fail()
            return
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        del self.buffer[:total]
        stats = self.stats
        stats.total += 1
        if stats.measuring:
            if 200 <= status < 300 or status == 304:  # a revalidated cache entry is success
                stats.ok += 1
                stats.latencies.append(time.perf_counter() - self.sent_at)
            else:
                stats.errors += 1
        if stats.running:
            self._send()
        else:
            assert self.transport is not None
            self.transport.close()

    def _fail(self) -> None:
        self.stats.errors += 1
        assert self.transport is not None
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stats.running:
            self.stats.errors += 1
        if not self.closed.done():
            self.closed.set_result(None)


async def drive(
    request: bytes,
    *,
    host: str,
    port: int,
    concurrency: int,
    warmup: float,
    duration: float,
    drain_timeout: float = 5.0,
) -> dict[str, Any]:
    """Send ``request`` over ``concurrency`` keep-alive connections, one in flight on each,
    for ``warmup`` then ``duration`` seconds; the figures cover the measured part only."""
    loop = asyncio.get_running_loop()
    stats = _Stats()
    closed: list[asyncio.Future[None]] = []
    for _ in range(concurrency):
        done: asyncio.Future[None] = loop.create_future()
        closed.append(done)
        await loop.create_connection(
            functools.partial(_Connection, request, stats, done), host, port
        )
    await asyncio.sleep(warmup)
    stats.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(duration)
    stats.measuring = False
    elapsed = time.perf_counter() - started
    stats.running = False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*closed), drain_timeout)
    latencies = sorted(stats.latencies) or [0.0]
    return {
        "rps": round(stats.ok / elapsed, 1),
        "requests": stats.ok,
        "total": stats.total,
        "errors": stats.errors,
        "seconds": round(elapsed, 3),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3),
        "concurrency": concurrency,
        "loop": type(loop).__module__.split(".")[0],
    }


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    # A credential travels in the environment, not on a command line others can read.
    header = os.environ.get("KEEL_BENCH_HEADER")
    extra = f"{header}\r\n" if header else ""
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        f"User-Agent: keel-bench\r\nAccept: */*\r\n{extra}\r\n"
    ).encode()
    return await drive(
        request,
        host=args.host,
        port=args.port,
        concurrency=args.concurrency,
        warmup=args.warmup,
        duration=args.duration,
    )


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="_servers.py")
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="closed-loop HTTP/1.1 load generator")
    load.add_argument("--host", default=HOST)
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--path", default="/health/live")
    load.add_argument("--duration", type=float, default=5.0)
    load.add_argument("--warmup", type=float, default=1.0)
    load.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(_load(args))
    else:
        result = uvloop.run(_load(args))
    print(json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# nginx and wrk (the gateway benchmark's peer and load generator)
# ---------------------------------------------------------------------------------------------

WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wait_for_port(port: int, *, host: str = HOST, timeout: float = 20.0) -> None:
    """Until something accepts TCP connections on ``port`` (a server that is no HTTP app
    with a health route, such as nginx)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.02)
    raise ServerFailed(f"nothing listens on {host}:{port} after {timeout} s")


def write_nginx_config(prefix: Path, server_blocks: str, *, workers: str = "1") -> Path:
    """An nginx configuration under ``prefix`` (its own pid file, logs and temporary
    directories, so it runs beside any other nginx and without root), in the foreground,
    without access log, keeping client connections open as long as wrk does (nginx's default
    closes one every 1000 requests; Keel's proxy never does). ``server_blocks`` goes into
    its ``http`` block."""
    prefix.mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(
        f"""worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{server_blocks}
}}
"""
    )
    return config


def nginx_command(prefix: Path, config: Path) -> list[str]:
    """nginx (``KEEL_BENCH_NGINX``, else the one on ``PATH`` or Debian's) with ``config``;
    ``-e`` keeps even its start-up errors out of ``/var/log/nginx``."""
    import shutil

    binary = os.environ.get("KEEL_BENCH_NGINX") or shutil.which("nginx") or "/usr/sbin/nginx"
    return [binary, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")]


def run_wrk(
    port: int,
    path: str,
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    header: str | None = None,
    host: str = HOST,
) -> dict[str, float]:
    """One wrk run (``--latency``): ``rps``, ``p50_ms``, ``p90_ms``, ``p99_ms``, ``requests``
    and ``errors`` (socket errors plus answers other than 2xx/3xx). ``header``
    (``"Name: value"``, a credential) is sent with every request. Raises
    :class:`ServerFailed` when over 1% of the answers were errors."""
    import tempfile

    binary = os.environ.get("KEEL_BENCH_WRK", "wrk")
    command = [
        binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
        f"http://{host}:{port}{path}",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="keel-wrk-") as directory:
        if header:
            # In a script only its owner reads, not on a command line every process sees.
            name, _, value = header.partition(":")
            script = Path(directory) / "header.lua"
            script.write_text(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value.strip())}\n")
            command[-1:-1] = ["-s", str(script)]
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    if completed.returncode != 0:
        raise ServerFailed(f"wrk failed: {completed.stderr[-2000:]}")
    result = parse_wrk(completed.stdout)
    if result["requests"] == 0 or result["errors"] > result["requests"] / 100:
        raise ServerFailed(f"wrk saw errors: {completed.stdout}")
    return result


def parse_wrk(output: str) -> dict[str, float]:
    """The figures of wrk's ``--latency`` report (latencies in milliseconds)."""

    def latency(percent: str) -> float:
        match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
        if match is None:
            raise ServerFailed(f"no {percent}% latency in wrk's output: {output}")
        return round(float(match.group(1)) * WRK_UNITS[match.group(2)], 3)

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    requests = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    if rps is None or requests is None:
        raise ServerFailed(f"unreadable wrk output: {output}")
    errors = 0
    if non_2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(non_2xx.group(1))
    if sockets := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(count) for count in sockets.groups())
    return {
        "rps": float(rps.group(1)),
        "p50_ms": latency("50"),
        "p90_ms": latency("90"),
        "p99_ms": latency("99"),
        "requests": float(requests.group(1)),
        "errors": float(errors),
    }


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
