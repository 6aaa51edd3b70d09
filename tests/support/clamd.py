"""A real clamd for the storage tests, and a fault-injecting fake of it.

:func:`run_clamd` starts Debian's ``/usr/sbin/clamd`` (``KEEL_TEST_CLAMD`` to use another) in
a directory of its own: a configuration file, a log, a unix socket beside its TCP port on
127.0.0.1, and a signature database the tests write themselves (no ClamAV download, no
freshclam): an ``.hdb`` hash signature for the EICAR test file and an ``.ndb`` body signature
for :data:`MARKER`, a string that can sit anywhere in a stream. The EICAR string is assembled
here at run time, so no file in the repository is the EICAR file (scanners on developers'
machines would quarantine it).

Where clamd is not installed its tests are skipped with one line saying so, except when
``CI=true``: there they fail (``.ci/run`` installs Debian's ``clamav-daemon``).

:func:`fake_clamd` is an asyncio TCP server on 127.0.0.1 that runs a test's own handler per
connection, to prove that a daemon that hangs, closes early or answers garbage is a failed
scan, never a clean one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from tests.support.keel_process import free_port, stop_process

CLAMD: Final = os.environ.get("KEEL_TEST_CLAMD", "/usr/sbin/clamd")
#: clamd's ``StreamMaxLength`` (and its file and scan size limits) in the tests' daemon.
STREAM_MAX_BYTES: Final = 20 * 1024 * 1024
#: clamd took about a second to load the tests' database on an idle machine.
START_TIMEOUT: Final = 30.0

#: The EICAR anti-virus test file (68 bytes of ASCII), from two halves.
EICAR: Final = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
#: A string the ``.ndb`` body signature finds anywhere in a stream.
MARKER: Final = b"keel-test-" + b"marker-5f0c2a9e71d4"
#: The names clamd reports: it marks signatures from databases ClamAV did not sign.
EICAR_SIGNATURE: Final = "Keel.Test.Eicar.UNOFFICIAL"
MARKER_SIGNATURE: Final = "Keel.Test.Marker.UNOFFICIAL"


@dataclass(frozen=True)
class ClamdServer:
    """A running clamd: its TCP and unix socket addresses as :class:`Clamd` takes them."""

    address: str
    unix_address: str
    directory: Path
    process: subprocess.Popen[bytes]

    def log(self) -> str:
        path = self.directory / "clamd.log"
        return path.read_text(errors="replace") if path.exists() else ""


def clamd_or_skip() -> str:
    """The clamd executable, or skip (locally) / fail (in CI) the test."""
    if os.access(CLAMD, os.X_OK):
        return CLAMD
    message = f"clamd not found at {CLAMD}"
    if os.environ.get("CI") == "true":
        pytest.fail(
            f"{message}; CI=true requires it (apt-get install clamav-daemon)", pytrace=False
        )
    pytest.skip(
        f"{message}; install Debian's clamav-daemon or set KEEL_TEST_CLAMD to run this test"
    )


def write_signatures(database: Path) -> None:
    """The tests' own signature database: EICAR by its hash, :data:`MARKER` by its bytes."""
    database.mkdir(parents=True, exist_ok=True)
    eicar_md5 = hashlib.md5(EICAR, usedforsecurity=False).hexdigest()
    name = EICAR_SIGNATURE.removesuffix(".UNOFFICIAL")
    (database / "keel-test.hdb").write_text(f"{eicar_md5}:{len(EICAR)}:{name}\n")
    # name:target type (0: any file):offset (*: anywhere):hex bytes
    name = MARKER_SIGNATURE.removesuffix(".UNOFFICIAL")
    (database / "keel-test.ndb").write_text(f"{name}:0:*:{MARKER.hex()}\n")


def clamd_config(directory: Path, port: int) -> str:
    return "\n".join(
        [
            "Foreground yes",
            f"TCPSocket {port}",
            "TCPAddr 127.0.0.1",
            f"LocalSocket {directory / 'clamd.sock'}",
            f"DatabaseDirectory {directory / 'db'}",
            f"TemporaryDirectory {directory / 'tmp'}",
            f"LogFile {directory / 'clamd.log'}",
            "LogSyslog no",
            f"StreamMaxLength {STREAM_MAX_BYTES}",
            # As an operator should: nothing over the limits is skipped and called clean.
            f"MaxFileSize {STREAM_MAX_BYTES}",
            f"MaxScanSize {STREAM_MAX_BYTES}",
            "AlertExceedsMax yes",
            "SelfCheck 0",
            "MaxThreads 4",
            "",
        ]
    )


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"zPING\0")
            return sock.recv(16) == b"PONG\0"
    except OSError:
        return False


@contextlib.contextmanager
def run_clamd(directory: Path) -> Iterator[ClamdServer]:
    """clamd on a free port of 127.0.0.1 until the block ends; fails if it does not start."""
    executable = clamd_or_skip()
    write_signatures(directory / "db")
    (directory / "tmp").mkdir(exist_ok=True)
    port = free_port()
    config = directory / "clamd.conf"
    config.write_text(clamd_config(directory, port))
    output = (directory / "clamd.out").open("wb")
    process = subprocess.Popen(
        [executable, "--config-file", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    server = ClamdServer(
        address=f"tcp://127.0.0.1:{port}",
        unix_address=f"unix://{directory / 'clamd.sock'}",
        directory=directory,
        process=process,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                output.flush()
                said = (directory / "clamd.out").read_text(errors="replace")[-2000:]
                pytest.fail(
                    f"clamd did not answer PING on 127.0.0.1:{port} within {START_TIMEOUT:g} s "
                    f"(exit code {process.poll()}): {said}{server.log()[-2000:]}",
                    pytrace=False,
                )
            time.sleep(0.1)
        yield server
    finally:
        stop_process(process)
        output.close()


# -- a fake clamd ------------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_instream(reader: asyncio.StreamReader) -> bytes:
    """Read one ``zINSTREAM`` command and its chunks up to the zero length; the body."""
    command = await reader.readuntil(b"\0")
    assert command == b"zINSTREAM\0", command
    body = bytearray()
    while length := int.from_bytes(await reader.readexactly(4), "big"):
        body += await reader.readexactly(length)
    return bytes(body)


@contextlib.asynccontextmanager
async def fake_clamd(handler: Handler) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that runs ``handler(reader, writer)`` per connection."""
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client gave up first: what the failure tests provoke
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
