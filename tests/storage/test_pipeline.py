"""The scan on the jobs engine, on SQLite and PostgreSQL: a failed scan is retried and in the
end rejected (never clean), a second run changes nothing, a clean version starts the
bucket's hook job, and a ``keel serve`` killed mid-scan leaves the object unreadable until
it is scanned again after a restart."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from keel.core.context import RetryTask, TaskRun
from keel.core.tenancy import bind_tenant
from keel.jobs.models import Job
from keel.settings import Settings
from keel.storage.service.pipeline import scan_version
from keel.storage.service.runtime import SCAN, storage_runtime
from tests.storage.conftest import StorageApi, storage_api, storage_settings
from tests.support.audit import audit_events
from tests.support.clamd import STREAM_MAX_BYTES, ClamdServer, fake_clamd, read_instream
from tests.support.databases import database_for
from tests.support.keel_cli import initialise
from tests.support.keel_process import (
    KEEL,
    KeelServer,
    free_port,
    keel_env,
    stop_process,
)


def attempt(storage: StorageApi, number: int) -> TaskRun:
    return TaskRun(storage.admin.tenant_id, "job", number, SCAN.max_attempts)


@pytest.fixture
async def unscanned(settings: Settings) -> AsyncIterator[StorageApi]:
    """A storage app whose clamd address answers nothing (nobody listens there)."""
    configured = storage_settings(
        settings, clamd_address=f"tcp://127.0.0.1:{free_port()}", scan_timeout_seconds=2
    )
    async with storage_api(configured) as api:
        yield api


async def test_a_failed_scan_is_retried_then_rejected_and_never_served(
    unscanned: StorageApi,
) -> None:
    storage = unscanned
    await storage.bucket("inbox")
    put = await storage.put("inbox", "file.txt", b"hello")
    version_id = put.json()["version_id"]
    with pytest.raises(RetryTask, match="scan failed"):
        await scan_version(storage.context, attempt(storage, 1), {"version_id": version_id})
    info = await storage.call("GET", "/buckets/inbox/info/file.txt")
    assert info.json()["state"] == "pending"
    assert (await storage.get("inbox", "file.txt")).status_code == 409

    outcome = await scan_version(
        storage.context, attempt(storage, SCAN.max_attempts), {"version_id": version_id}
    )
    assert outcome["outcome"] == "rejected"
    info = await storage.call("GET", "/buckets/inbox/info/file.txt")
    assert info.json()["state"] == "rejected"
    assert info.json()["reason"].startswith("scan failed: ")
    answer = await storage.get("inbox", "file.txt")
    assert answer.status_code == 403
    assert answer.json()["code"] == "object-quarantined"
    assert b"hello" not in answer.content


async def test_an_object_over_the_scanners_limit_is_rejected_at_the_first_attempt(
    storage: StorageApi,
) -> None:
    """Another attempt could never pass (clamd refuses the stream's size), so the version is
    rejected at once instead of after every retry; never clean."""
    await storage.bucket("inbox")
    put = await storage.put("inbox", "big.bin", b"\x00" * (STREAM_MAX_BYTES + 1))
    assert put.status_code == 201, put.text
    outcome = await scan_version(
        storage.context, attempt(storage, 1), {"version_id": put.json()["version_id"]}
    )
    assert outcome["outcome"] == "rejected"
    info = (await storage.call("GET", "/buckets/inbox/info/big.bin")).json()
    assert info["state"] == "rejected"
    assert "StreamMaxLength" in info["reason"]
    assert (await storage.get("inbox", "big.bin")).status_code == 403


async def test_a_scanner_that_answers_garbage_is_a_failed_scan(settings: Settings) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_instream(reader)
        writer.write(b"stream: WHATEVER\0")
        await writer.drain()

    async with fake_clamd(garbage) as address:
        configured = storage_settings(settings, clamd_address=address)
        async with storage_api(configured) as storage:
            await storage.bucket("inbox")
            put = await storage.put("inbox", "f", b"data")
            run = attempt(storage, 1)
            with pytest.raises(RetryTask):
                await scan_version(storage.context, run, {"version_id": put.json()["version_id"]})
            assert (await storage.get("inbox", "f")).status_code == 409


async def test_without_a_scanner_versions_wait_and_are_never_clean(storage: StorageApi) -> None:
    await storage.bucket("inbox")
    put = await storage.put("inbox", "f", b"data")
    # The scanner went away after the bucket was made (a bucket that scans cannot be made
    # without one).
    storage_runtime(storage.context).clamd = None
    with pytest.raises(RetryTask, match="no scanner"):
        await scan_version(
            storage.context, attempt(storage, 1), {"version_id": put.json()["version_id"]}
        )
    assert (await storage.get("inbox", "f")).status_code == 409


async def test_a_second_run_of_a_scan_changes_nothing(storage: StorageApi) -> None:
    await storage.bucket("inbox")
    put = await storage.put("inbox", "f", b"data")
    version_id = put.json()["version_id"]
    first = await scan_version(storage.context, attempt(storage, 1), {"version_id": version_id})
    assert first["outcome"] == "clean"
    again = await scan_version(storage.context, attempt(storage, 2), {"version_id": version_id})
    assert again["outcome"] == "skipped"
    gone = await scan_version(storage.context, attempt(storage, 1), {"version_id": "nope"})
    assert gone["outcome"] == "skipped"
    verdicts = await audit_events(
        storage.app, storage.admin.tenant_id, action_prefix="storage.object.scan"
    )
    assert [event.data["verdict"] for event in verdicts] == ["clean"]
    assert (await storage.get("inbox", "f")).content == b"data"


@pytest.mark.parametrize("scanned", [True, False])
async def test_a_clean_version_starts_the_buckets_hook_job(
    storage: StorageApi, scanned: bool
) -> None:
    await storage.bucket(
        "uploads", scan=scanned, on_clean={"queue": "files", "task": "process_file_upload"}
    )
    put = await storage.put("uploads", "avatars/ada.png", b"\x89PNG\r\n\x1a\n" + bytes(40))
    version = put.json()

    async def hook_jobs() -> list[Job]:
        async with storage.context.database.session() as session:
            bind_tenant(session, storage.admin.tenant_id)
            return list(await session.scalars(select(Job).where(Job.queue == "files")))

    if scanned:
        assert await hook_jobs() == []  # not before the scan
        await storage.scan()
    jobs = await hook_jobs()
    assert len(jobs) == 1
    assert jobs[0].task == "process_file_upload"
    assert jobs[0].args == {
        "bucket": "uploads",
        "key": "avatars/ada.png",
        "version_id": version["version_id"],
        "size": version["size"],
        "content_type": "image/png",
        "etag": version["etag"],
    }


# --- a crash mid-scan ---------------------------------------------------------------------


@dataclass
class Deployment:
    """``keel serve`` (and, off the embedded default, ``keel worker``) of one test."""

    cwd: Path
    env: dict[str, str]
    port: int
    api_key: str
    embedded: bool
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, clamd_address: str) -> subprocess.Popen[bytes]:
        """Keel pointed at ``clamd_address``; the process that runs the scans."""
        env = {**self.env, "KEEL_STORAGE__CLAMD_ADDRESS": clamd_address}
        server = self._start(env, "serve", "--port", str(self.port))
        KeelServer(server, self.url, self.logs[-1]).wait_ready()
        return server if self.embedded else self._start(env, "worker")

    def _start(self, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        log = self.cwd / f"{args[0]}-{time.monotonic_ns()}.log"
        self.logs.append(log)
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [KEEL, *args], cwd=self.cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            stop_process(process)
        self.processes.clear()

    def log_tail(self) -> str:
        return "\n".join(path.read_text()[-3000:] for path in self.logs)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    env = keel_env(
        KEEL_LOG_LEVEL="warning",
        # A killed runner's scan is taken over within a second or two.
        KEEL_JOBS__PLATFORM_LEASE_SECONDS="1",
        KEEL_STORAGE__SCAN_TIMEOUT_SECONDS="60",
    )
    with database_for(request, "keel_scan_crash") as url:
        if url is not None:
            env["KEEL_DATABASE_URL"] = url
        admin_key = initialise(tmp_path, env)
        deployment = Deployment(tmp_path, env, free_port(), admin_key, embedded=url is None)
        try:
            yield deployment
        finally:
            deployment.stop_all()


async def test_a_crash_mid_scan_leaves_the_object_unreadable_until_it_is_rescanned(
    deployment: Deployment, clamd_server: ClamdServer
) -> None:
    scanning = asyncio.Event()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        scanning.set()
        while await reader.read(65_536):
            pass  # takes the stream, never gives a verdict

    data = b"quarterly numbers " * 1000
    async with fake_clamd(never_answers) as hanging:
        runner = await asyncio.to_thread(deployment.start, hanging)
        async with httpx.AsyncClient(
            base_url=deployment.url,
            headers={"Authorization": f"Bearer {deployment.api_key}"},
            timeout=30,
        ) as http:
            answer = await http.put("/storage/v1/buckets/reports", json={})
            assert answer.status_code == 201, answer.text
            put = await http.put("/storage/v1/buckets/reports/objects/q3.txt", content=data)
            assert put.status_code == 201, put.text
            version_id = put.json()["version_id"]
            try:
                await asyncio.wait_for(scanning.wait(), timeout=30)
            except TimeoutError:
                pytest.fail(f"the scan never reached clamd:\n{deployment.log_tail()}")
            mid_scan = await http.get("/storage/v1/buckets/reports/objects/q3.txt")
            assert mid_scan.status_code == 409, mid_scan.text
            assert mid_scan.json()["code"] == "object-not-ready"

            runner.send_signal(signal.SIGKILL)
            await asyncio.to_thread(runner.wait, 10)
            if deployment.embedded:
                with sqlite3.connect(deployment.cwd / ".keel" / "keel.db") as database:
                    (state,) = database.execute(
                        "SELECT state FROM storage_objects WHERE id = ?", (version_id,)
                    ).fetchone()
                assert state == "pending"
            else:  # the server is still up: it still refuses to serve the version
                answer = await http.get("/storage/v1/buckets/reports/objects/q3.txt")
                assert answer.status_code == 409

        deployment.stop_all()
        await asyncio.to_thread(deployment.start, clamd_server.address)
        async with httpx.AsyncClient(
            base_url=deployment.url,
            headers={"Authorization": f"Bearer {deployment.api_key}"},
            timeout=30,
        ) as http:
            deadline = time.monotonic() + 60
            while True:
                answer = await http.get("/storage/v1/buckets/reports/objects/q3.txt")
                if answer.status_code == 200:
                    break
                assert answer.status_code == 409, answer.text
                assert time.monotonic() < deadline, deployment.log_tail()
                await asyncio.sleep(0.2)
            assert answer.content == data
            info = await http.get("/storage/v1/buckets/reports/info/q3.txt")
            assert info.json()["state"] == "clean"
            assert info.json()["version_id"] == version_id
