"""A delivering process killed with ``kill -9`` in the middle of a batch, on SQLite (``keel
serve`` delivers on the embedded default) and PostgreSQL (``keel worker`` beside ``keel
serve``), then started again: every recipient receives the message, Keel records each one
sent exactly once, and the SMTP server's log shows at most one duplicate per delivery job
that was running at the kill, carrying the same ``Message-ID`` (docs/architecture.md,
"Email delivery is at least once": no sender can make SMTP exactly once across a crash).

The issue's batch is 10,000 recipients; here it is ``RECIPIENTS`` (delivery runs at tens of
messages a second on a loaded CI machine), killed after a third is delivered.
"""

from __future__ import annotations

import asyncio
import email
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.policy import default
from pathlib import Path

import httpx
import pytest

from tests.support.databases import database_for
from tests.support.keel_cli import initialise
from tests.support.keel_process import (
    KEEL,
    KeelServer,
    free_port,
    keel_env,
    stop_process,
)
from tests.support.provider_servers import SmtpTestServer, smtp_server

RECIPIENTS = 300
KILL_AFTER = RECIPIENTS // 3
#: Delivery jobs of this many messages: many jobs, so a kill catches several mid-way.
CHUNK = 10
#: The runner's lease: a killed runner's jobs are taken over within it.
LEASE_SECONDS = 2
RUNNER_CONCURRENCY = 10


@dataclass
class Deployment:
    cwd: Path
    env: dict[str, str]
    port: int
    api_key: str
    embedded: bool
    server: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=60
        )

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        log = self.cwd / f"{args[0]}-{time.monotonic_ns()}.log"
        self.logs.append(log)
        with log.open("wb") as stderr:
            return subprocess.Popen(
                [KEEL, *args], cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL, stderr=stderr
            )

    def start_server(self) -> None:
        self.server = self._start("serve", "--port", str(self.port))
        KeelServer(self.server, self.url, self.logs[-1]).wait_ready()

    def start_delivering(self) -> None:
        """The process that delivers: ``keel serve`` itself on the embedded default."""
        if self.embedded:
            self.start_server()
        else:
            self.worker = self._start("worker")

    def kill_delivering(self) -> None:
        process = self.server if self.embedded else self.worker
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for process in (self.worker, self.server):
            if process is not None:
                stop_process(process)

    def log_tail(self) -> str:
        return "\n".join(path.read_text()[-3000:] for path in self.logs)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    env = keel_env(
        KEEL_LOG_LEVEL="warning",
        KEEL_JOBS__PLATFORM_LEASE_SECONDS=str(LEASE_SECONDS),
        KEEL_NOTIFY__DELIVERY_CHUNK=str(CHUNK),
        KEEL_NOTIFY__TRACK_OPENS="false",
    )
    with database_for(request, "keel_crash") as url:
        if url is not None:
            env["KEEL_DATABASE_URL"] = url
        admin_key = initialise(tmp_path, env)
        deployment = Deployment(tmp_path, env, free_port(), admin_key, embedded=url is None)
        try:
            deployment.start_server()
            yield deployment
        finally:
            deployment.stop()


def configure(http: httpx.Client, smtp: SmtpTestServer) -> None:
    for method, path, body in [
        ("PUT", "/notify/v1/senders/default", {"address": "Acme <news@acme.example>"}),
        ("PUT", "/notify/v1/providers/smtp", {"kind": "smtp", "settings": smtp.settings()}),
        ("PUT", "/notify/v1/categories/news", {"critical": False}),
        (
            "POST",
            "/notify/v1/templates/weekly/versions",
            {
                "category": "news",
                "content": {
                    "default_locale": "en",
                    "locales": {"en": {"subject": "Hi {{ name }}", "text": "Hello {{ name }}"}},
                    "sample_data": {"name": "Ada"},
                },
            },
        ),
    ]:
        answer = http.request(method, path, json=body)
        assert answer.status_code < 300, answer.text


def queued(http: httpx.Client, batch_id: str) -> int:
    answer = http.get(
        "/notify/v1/messages", params={"batch_id": batch_id, "status": "queued", "limit": 500}
    )
    assert answer.status_code == 200, answer.text
    return len(answer.json()["messages"])


async def test_a_killed_delivering_process_leaves_every_recipient_their_message(
    deployment: Deployment,
) -> None:
    async with smtp_server() as smtp:
        with deployment.http() as http:
            configure(http, smtp)
            if not deployment.embedded:
                deployment.start_delivering()
            addresses = [f"reader{index}@example.com" for index in range(RECIPIENTS)]
            answer = http.post(
                "/notify/v1/messages/batch",
                json={
                    "template": "weekly",
                    "recipients": [
                        {"to": address, "data": {"name": f"R{index}"}}
                        for index, address in enumerate(addresses)
                    ],
                },
            )
            assert answer.status_code == 202, answer.text
            batch_id = answer.json()["batch_id"]

            deadline = time.monotonic() + 120
            while len(smtp.messages) < KILL_AFTER:
                assert time.monotonic() < deadline, deployment.log_tail()
                await asyncio.sleep(0.01)
            await asyncio.to_thread(deployment.kill_delivering)
            delivered_before = len(smtp.messages)
            await asyncio.to_thread(deployment.start_delivering)

            deadline = time.monotonic() + 240
            while await asyncio.to_thread(queued, http, batch_id):
                assert time.monotonic() < deadline, deployment.log_tail()
                await asyncio.sleep(0.2)
            sent = http.get(
                "/notify/v1/messages", params={"batch_id": batch_id, "status": "sent", "limit": 500}
            ).json()["messages"]

    assert KILL_AFTER <= delivered_before < RECIPIENTS  # killed in the middle
    received = Counter(mail.rcpt_tos[0] for mail in smtp.messages)
    assert set(received) == set(addresses)  # everyone has it
    assert len(sent) == RECIPIENTS  # and Keel recorded each sent once
    duplicated = {address: count for address, count in received.items() if count > 1}
    # At most the messages in flight at the kill: one per running delivery job.
    assert sum(count - 1 for count in duplicated.values()) <= RUNNER_CONCURRENCY, duplicated
    for address in duplicated:
        ids = {
            email.message_from_bytes(mail.data, policy=default)["Message-ID"]
            for mail in smtp.messages
            if mail.rcpt_tos[0] == address
        }
        assert len(ids) == 1, (address, ids)  # the same message, sent again
