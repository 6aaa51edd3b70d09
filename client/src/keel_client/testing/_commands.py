"""Running the ``keel`` command for an embedded Keel: finding the executable, the child's
environment, one-shot commands (``migrate``, ``init``, ``apply``, ``auth create-api-key``) and
reading the keys they print. Pure helpers and thin ``subprocess`` calls; no server state."""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "COMMAND_TIMEOUT",
    "EmbeddedKeelError",
    "child_environment",
    "find_keel_executable",
    "free_port",
    "master_key_file",
    "parse_admin_key",
    "parse_api_key",
    "run_keel",
    "tail",
]

#: Seconds a one-shot command (migrate, init, apply, create-api-key) may take.
COMMAND_TIMEOUT = 120.0

#: How much of a log an error message quotes (its end: where a failure is told).
LOG_TAIL_CHARACTERS = 6000

#: What ``keel init`` prints with the administrator's API key (group 1: the key).
_ADMIN_KEY = re.compile(r"admin API key \(shown once, store it now\): (\S+)")
#: What ``keel auth create-api-key`` prints with the new key (group 1: the key).
_API_KEY = re.compile(r"^key \(shown once, store it now\): (\S+)$", re.MULTILINE)


class EmbeddedKeelError(RuntimeError):
    """An embedded Keel could not be started or provisioned: the ``keel`` executable is
    missing, a command failed (its output is in the message) or the server did not become
    ready (its log is in the message)."""


def find_keel_executable(explicit: str | os.PathLike[str] | None = None) -> str:
    """The ``keel`` command to run: ``explicit`` when given, else the one next to the running
    interpreter (the same virtualenv), else the first on ``PATH``."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise EmbeddedKeelError(f"no keel executable at {path}")
        return str(path)
    interpreter = Path(sys.executable)
    for name in ("keel", "keel.exe"):
        beside = interpreter.with_name(name)
        if beside.is_file():
            return str(beside)
    found = shutil.which("keel")
    if found is None:
        raise EmbeddedKeelError(
            "the keel server is not installed: keel_client.testing runs the `keel` command, "
            f"found neither next to {interpreter} nor on PATH "
            "(pip install keel, in the environment that runs the tests)"
        )
    return found


def child_environment(
    data_dir: Path,
    *,
    database_url: str | None = None,
    services: Sequence[str] | None = None,
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every ``keel`` child of one embedded Keel.

    ``base`` (default: this process's environment) without its ``KEEL_*`` variables, so a
    developer's shell (a ``KEEL_URL``, a production ``KEEL_DATABASE_URL``) never reaches the
    test server; then the data directory, its master key file (unless ``extra`` names a key),
    the database and services, and ``extra`` over all of them."""
    base = os.environ if base is None else base
    env = {name: value for name, value in base.items() if not name.startswith("KEEL_")}
    env["KEEL_DATA_DIR"] = str(data_dir)
    env["KEEL_HOST"] = "127.0.0.1"
    env["KEEL_LOG_LEVEL"] = "warning"
    extra = dict(extra or {})
    if not {"KEEL_MASTER_KEY", "KEEL_MASTER_KEY_FILE"} & extra.keys():
        # A server on PostgreSQL refuses to start without a key (the embedded default would
        # write one into the data directory itself): one kept in the data directory, so a
        # data directory used again opens what it encrypted before.
        env["KEEL_MASTER_KEY_FILE"] = str(master_key_file(data_dir))
    if database_url is not None:
        env["KEEL_DATABASE_URL"] = database_url
    if services is not None:
        env["KEEL_SERVICES"] = ",".join(services)
    env.update(extra)
    return env


def master_key_file(data_dir: Path) -> Path:
    """``<data_dir>/master.key``, written (base64 of 32 random bytes, mode 600) when absent."""
    path = data_dir / "master.key"
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    return path


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(text: str, limit: int = LOG_TAIL_CHARACTERS) -> str:
    """The end of ``text`` (a log or a command's output), at most ``limit`` characters."""
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def run_keel(
    executable: str,
    *args: str,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float = COMMAND_TIMEOUT,
) -> str:
    """Run ``keel <args>`` to completion and return its standard output; an
    :class:`EmbeddedKeelError` with its output when it fails or does not end in time."""
    __tracebackhide__ = True  # in pytest's report: the error, not this frame
    command = " ".join(["keel", *args])
    try:
        done = subprocess.run(  # noqa: S603 - the keel executable, arguments of our own
            [executable, *args],
            cwd=cwd,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedKeelError(f"`{command}` did not finish in {timeout:g} s") from exc
    if done.returncode != 0:
        output = tail(f"{done.stdout}\n{done.stderr}")
        raise EmbeddedKeelError(f"`{command}` failed with exit code {done.returncode}:\n{output}")
    return done.stdout


def parse_admin_key(init_output: str) -> str | None:
    """The admin API key ``keel init`` printed, or None when the admin already existed."""
    found = _ADMIN_KEY.search(init_output)
    return found.group(1) if found else None


def parse_api_key(create_output: str) -> str:
    """The key ``keel auth create-api-key`` printed."""
    found = _API_KEY.search(create_output)
    if found is None:
        raise EmbeddedKeelError("`keel auth create-api-key` printed no key")
    return found.group(1)
