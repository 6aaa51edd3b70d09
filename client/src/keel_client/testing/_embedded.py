"""``EmbeddedKeel``: a real ``keel serve`` in a child process, for a service's own tests."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

from keel_client.testing._commands import (
    EmbeddedKeelError,
    child_environment,
    find_keel_executable,
    free_port,
    parse_admin_key,
    parse_api_key,
    run_keel,
    tail,
)
from keel_client.testing._manifest import service_account_name

if TYPE_CHECKING:
    from keel_client._keel import Keel
    from keel_client._sync_keel import SyncKeel

__all__ = ["EmbeddedKeel"]

T = TypeVar("T")

#: Seconds ``keel serve`` has to answer ``/health/ready`` (a loaded CI machine is slow).
READY_TIMEOUT = 120.0
#: Seconds ``keel serve`` has to end after SIGTERM before it is killed.
STOP_TIMEOUT = 15.0
#: The tenant an embedded Keel provisions (the one ``keel init`` creates).
TENANT = "default"

#: Servers started and not yet stopped: stopped when the interpreter exits, so a test run
#: that ends without reaching a fixture's teardown leaves no ``keel serve`` behind.
_running: set[EmbeddedKeel] = set()


@atexit.register
def _stop_all() -> None:
    for keel in list(_running):
        keel.stop()


class EmbeddedKeel:
    """A real Keel for tests: ``keel migrate``, ``keel init`` and ``keel serve`` on a free
    port of 127.0.0.1, with its data (SQLite, files, the master key) in a directory of its
    own; then, given a manifest, ``keel apply`` and an API key of the manifest's service
    account. Stopped (SIGTERM, then killed) on exit.

    Example::

        from keel_client.testing import EmbeddedKeel

        with EmbeddedKeel(manifest="keel.toml") as keel:
            async with keel.client() as client:          # a keel_client.Keel
                await client.audit.register_action(...)
            os.environ.update(keel.env)                   # KEEL_URL, KEEL_TOKEN

    It runs the ``keel`` command of the server distribution (``pip install keel``): the one
    next to the running interpreter, else the first on ``PATH``, or ``executable``.

    - ``manifest``: a ``keel.toml`` applied once the server is ready; ``service_token`` is
      then an API key of its ``[service] name`` (without one: the admin key).
    - ``data_dir``: where the data goes (kept); default a temporary directory, removed on
      stop.
    - ``database_url``: a PostgreSQL database instead of SQLite (``KEEL_DATABASE_URL``;
      migrated, and its tenant ``default`` given an admin if it has none).
    - ``services``: run only these (``KEEL_SERVICES``); ``auth`` is always among them.
    - ``env``: further ``KEEL_*`` settings of the server and its commands, over the defaults
      (``KEEL_LOG_LEVEL=warning``; ``KEEL_MASTER_KEY_FILE``: ``master.key`` in the data
      directory, made on first use).

    ``with`` blocks the calling thread while Keel starts; ``async with`` waits in a thread.
    """

    def __init__(
        self,
        *,
        manifest: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        database_url: str | None = None,
        services: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        executable: str | os.PathLike[str] | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        if services is not None and "auth" not in services:
            raise ValueError("services must include 'auth': the tokens come from it")
        for name in env or {}:
            if not name.startswith("KEEL_"):
                raise ValueError(f"env takes KEEL_* settings only, not {name!r}")
        self.manifest = Path(manifest).resolve() if manifest is not None else None
        self._given_data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._database_url = database_url
        self._services = list(services) if services is not None else None
        self._extra_env = dict(env or {})
        self._executable = executable
        self._ready_timeout = ready_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._data_dir: Path | None = None
        self._port: int | None = None
        self._admin_token: str | None = None
        self._service_token: str | None = None
        self._child_env: dict[str, str] = {}

    # -- what the tests use ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's base URL, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._started(self._port)}"

    @property
    def admin_token(self) -> str:
        """An API key of tenant ``default``'s administrator (every permission)."""
        return self._started(self._admin_token)

    @property
    def service_token(self) -> str:
        """An API key of the manifest's service account; the admin key without a manifest."""
        return self._started(self._service_token)

    @property
    def env(self) -> dict[str, str]:
        """``KEEL_URL`` and ``KEEL_TOKEN`` (the service token): what ``Keel.from_env()``
        reads in the service's code."""
        return {"KEEL_URL": self.url, "KEEL_TOKEN": self.service_token}

    @property
    def data_dir(self) -> Path:
        """Where the server keeps its data (``KEEL_DATA_DIR``) and its log (``keel.log``)."""
        return self._started(self._data_dir)

    @property
    def pid(self) -> int:
        """The process id of ``keel serve``."""
        return self._started(self._process).pid

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """What the server wrote to its standard error so far (JSON log lines)."""
        path = self._log_path
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def client(self, token: str | None = None, **options: Any) -> Keel:
        """A :class:`keel_client.Keel` for this server, with ``token`` (default: the service
        token); ``options`` as ``Keel`` takes them. Close it (``async with``)."""
        from keel_client._keel import Keel

        return Keel(self.url, token or self.service_token, **options)

    def sync_client(self, token: str | None = None, **options: Any) -> SyncKeel:
        """:meth:`client`'s blocking face, a :class:`keel_client.SyncKeel`."""
        from keel_client._sync_keel import SyncKeel

        return SyncKeel(self.url, token or self.service_token, **options)

    def keel(self, *args: str) -> str:
        """Run another ``keel`` command against this server's database (an admin verb, e.g.
        ``keel("flags", "list")``); its standard output."""
        self._started(self._process)
        return run_keel(self._keel_executable(), *args, cwd=self.data_dir, env=self._child_env)

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Start and provision the server; returns once it is ready. An
        :class:`EmbeddedKeelError` (after cleaning up) when any step fails."""
        __tracebackhide__ = True  # pytest shows the error, not these frames
        if self._process is not None:
            raise RuntimeError("this EmbeddedKeel is already started")
        executable = self._keel_executable()
        self._data_dir = self._given_data_dir or Path(tempfile.mkdtemp(prefix="keel-embedded-"))
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            self._child_env = child_environment(
                self._data_dir,
                database_url=self._database_url,
                services=self._services,
                extra=self._extra_env,
            )
            self._admin_token = self._prepare_database(executable)
            self._serve(executable)
            self._service_token = self._provision(executable)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s) and remove a temporary data
        directory. A second call does nothing."""
        _running.discard(self)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        if self._data_dir is not None and self._given_data_dir is None:
            shutil.rmtree(self._data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        __tracebackhide__ = True
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        where = self.url if self._port is not None and self.is_running else "stopped"
        return f"<EmbeddedKeel {where}>"

    # -- the steps ------------------------------------------------------------------------

    @property
    def _log_path(self) -> Path | None:
        return self._data_dir / "keel.log" if self._data_dir is not None else None

    def _log_heading(self) -> str:
        """How an error names the server's log: with its path when the file is kept."""
        return "its log" if self._given_data_dir is None else f"its log ({self._log_path})"

    def _keel_executable(self) -> str:
        return find_keel_executable(self._executable)

    def _run(self, executable: str, *args: str) -> str:
        __tracebackhide__ = True
        assert self._data_dir is not None
        return run_keel(executable, *args, cwd=self._data_dir, env=self._child_env)

    def _prepare_database(self, executable: str) -> str:
        """Migrate and initialise; the admin key ``init`` printed, or a new one when the
        database already had its admin (a PostgreSQL database used before)."""
        __tracebackhide__ = True
        self._run(executable, "migrate")
        admin_key = parse_admin_key(self._run(executable, "init"))
        if admin_key is None:
            admin_key = self._create_api_key(executable, "--user", "admin")
        return admin_key

    def _create_api_key(self, executable: str, *principal: str) -> str:
        __tracebackhide__ = True
        output = self._run(
            executable,
            *("auth", "create-api-key", "--name", "keel_client.testing", *principal),
        )
        return parse_api_key(output)

    def _serve(self, executable: str) -> None:
        __tracebackhide__ = True
        assert self._data_dir is not None
        assert self._log_path is not None
        self._port = free_port()
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - the keel executable
                [executable, "serve", "--port", str(self._port)],
                cwd=self._data_dir,
                env=self._child_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        _running.add(self)
        self._wait_ready()

    def _wait_ready(self) -> None:
        __tracebackhide__ = True
        import httpx

        assert self._process is not None
        deadline = time.monotonic() + self._ready_timeout
        with httpx.Client(base_url=self.url, timeout=5.0) as http:
            while True:
                if self._process.poll() is not None:
                    raise EmbeddedKeelError(
                        f"keel serve exited with code {self._process.returncode} before it was"
                        f" ready; {self._log_heading()}:\n{tail(self.log())}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/health/ready").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise EmbeddedKeelError(
                        f"keel serve was not ready in {self._ready_timeout:g} s;"
                        f" {self._log_heading()}:\n{tail(self.log())}"
                    )
                time.sleep(0.1)

    def _provision(self, executable: str) -> str:
        """Apply the manifest; the service token (an API key of its service account, or the
        admin key without a manifest or a ``[service] name``)."""
        __tracebackhide__ = True
        assert self._admin_token is not None
        if self.manifest is None:
            return self._admin_token
        if not self.manifest.is_file():
            raise EmbeddedKeelError(f"no manifest at {self.manifest}")
        account = service_account_name(self.manifest)
        run_keel(
            executable,
            *("apply", str(self.manifest)),
            cwd=self.manifest.parent,
            env=self._child_env,
        )
        if account is None:
            return self._admin_token
        return self._create_api_key(executable, "--service-account", account)

    @staticmethod
    def _started(value: T | None) -> T:
        if value is None:
            raise RuntimeError("the EmbeddedKeel is not started: use `with` or call start()")
        return value
