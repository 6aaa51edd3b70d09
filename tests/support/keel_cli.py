"""Run the ``keel`` command in this process: the same entry point as the ``keel`` script
(``keel.cli:main``), its arguments, environment, working directory, stdin, stdout, stderr and
exit code as a subprocess would have them, without the interpreter's cold start (the import
of Keel alone takes about three seconds a command).

Tests about the process boundary itself (a terminal on stdout, signals, a served port, the
script on ``PATH``) use :mod:`tests.support.keel_process` instead.

Each command starts with what a new process would have: the databases this process already
prepared are forgotten for its run (``keel.core.lifecycle`` remembers them by URL, and the
embedded default's URL, ``sqlite+aiosqlite:///.keel/keel.db``, is the same in every test's
directory).
What a command changes process-wide is put back afterwards: ``os.environ`` (``keel serve``
exports its settings), the working directory, ``sys.argv``, the standard streams, the logging
configuration (every command configures structlog and the root logger for itself), and that
memory of prepared databases.
One command runs at a time (on a thread of its own); a test's commands run one after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from keel.cli import main
from keel.core import lifecycle
from tests.support.databases import database_for
from tests.support.keel_process import ADMIN_KEY, COMMAND_TIMEOUT, KEEL, keel_env

#: The loggers :func:`keel.core.logging.configure_logging` changes besides the root.
_CONFIGURED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic", "aiosqlite")
_ONE_AT_A_TIME = threading.Lock()


def invoke_keel(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    stdin: str = "",
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``keel <args>`` to completion in this process, as :func:`run_keel` runs it in a
    child: ``env`` replaces the environment (default :func:`keel_env`), stdout and stderr are
    captured as text, an uncaught exception is a traceback on stderr and exit code 1, and a
    command still running after ``timeout`` raises :class:`subprocess.TimeoutExpired`."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        # It would block the test's event loop for the whole command.
        raise RuntimeError("invoke_keel() inside an event loop: await invoke_keel_async()")
    command = [KEEL, *args]
    if not _ONE_AT_A_TIME.acquire(timeout=timeout):
        raise subprocess.TimeoutExpired(command, timeout, "another keel command still runs")
    # On a thread of its own, so that a command that never ends (a `keel serve` that should
    # have refused to start) fails the test after `timeout` as subprocess.run would.
    outcome = _Outcome(command, stdin)
    runner = threading.Thread(target=outcome.run, args=(cwd, env), daemon=True)
    runner.start()
    runner.join(timeout)
    if runner.is_alive():  # it keeps the lock: no further command runs in this process
        raise subprocess.TimeoutExpired(command, timeout, outcome.stdout.getvalue())
    _ONE_AT_A_TIME.release()
    return subprocess.CompletedProcess(
        command, outcome.returncode, outcome.stdout.getvalue(), outcome.stderr.getvalue()
    )


class _Outcome:
    def __init__(self, command: list[str], stdin: str) -> None:
        self.command = command
        self.stdin = io.StringIO(stdin)
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        self.returncode = 1

    def run(self, cwd: Path, env: Mapping[str, str] | None) -> None:
        with _isolated(self.command, cwd, env if env is not None else keel_env()):
            sys.stdin, sys.stdout, sys.stderr = self.stdin, self.stdout, self.stderr
            try:
                main()
            except SystemExit as exit_:
                self.returncode = _exit_code(exit_.code, self.stderr)
            except Exception:
                traceback.print_exc(file=self.stderr)
                self.returncode = 1
            else:
                self.returncode = 0


async def invoke_keel_async(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    stdin: str = "",
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """:func:`invoke_keel` from a coroutine: the test's event loop (an app it serves, its
    background tasks) keeps running while the command does."""
    return await asyncio.to_thread(
        functools.partial(invoke_keel, *args, cwd=cwd, env=env, stdin=stdin, timeout=timeout)
    )


def _exit_code(code: object, stderr: io.StringIO) -> int:
    """The status ``sys.exit(code)`` gives a process (a message is printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=stderr)
    return 1


@contextlib.contextmanager
def _isolated(command: list[str], cwd: Path, env: Mapping[str, str]) -> Iterator[None]:
    saved_environ = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_argv = sys.argv
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    saved_structlog = structlog.get_config()
    saved_prepared = set(lifecycle._PREPARED)
    loggers = [logging.getLogger(name) for name in ("", *_CONFIGURED_LOGGERS)]
    saved_loggers = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    lifecycle._PREPARED.clear()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = command
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environ)
        structlog.configure(**saved_structlog)
        lifecycle._PREPARED.clear()
        lifecycle._PREPARED.update(saved_prepared)
        for logger, (handlers, level, propagate) in zip(loggers, saved_loggers, strict=True):
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


@dataclass
class Deployment:
    """A Keel an operator runs ``keel`` commands against: a directory and an environment."""

    cwd: Path
    env: dict[str, str]

    def keel(self, *args: str) -> subprocess.CompletedProcess[str]:
        return invoke_keel(*args, cwd=self.cwd, env=self.env)

    def ok(self, *args: str) -> str:
        result = self.keel(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def refused(self, *args: str) -> str:
        """The one line of a refused command (exit code 2, no traceback)."""
        result = self.keel(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("keel: ")
        assert "Traceback" not in result.stdout + result.stderr
        return lines[0]


def initialise(cwd: Path, env: Mapping[str, str]) -> str:
    """``keel migrate`` and ``keel init`` in ``cwd``: the administrator's API key ``init``
    printed."""
    for command in ("migrate", "init"):
        done = invoke_keel(command, cwd=cwd, env=env)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    found = ADMIN_KEY.search(done.stdout + done.stderr)
    assert found is not None, done.stdout
    return found.group(1)


@contextlib.contextmanager
def initialised_deployment(
    request: pytest.FixtureRequest, directory: Path, name: str, **variables: str
) -> Iterator[Deployment]:
    """A migrated and initialised Keel on the database of ``request.param`` (``"sqlite"``: the
    embedded default in ``directory``; ``"postgresql"``: a new database named after ``name``,
    dropped afterwards), its environment holding ``variables``."""
    with database_for(request, name) as url:
        env = keel_env(**variables) if url is None else keel_env(KEEL_DATABASE_URL=url, **variables)
        found = Deployment(directory, env)
        initialise(directory, env)
        yield found
