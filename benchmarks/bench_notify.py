"""Notification figures (issue 19): emails/s rendered, tracked, DKIM-signed and delivered to a
local SMTP server, against a plain aiosmtplib loop sending one pre-rendered message of the same
size to the same server; and the time to accept a 100,000-recipient batch.

- ``notify.smtp_limit_per_s``: the peer — ``EMAILS`` copies of one pre-rendered message of
  about ``MESSAGE_KB`` KB, sent by ``CONNECTIONS`` aiosmtplib connections at once, each over
  one connection (the limit of the server and the machine);
- ``notify.<database>.emails_per_s``: ``keel serve`` (its jobs runner delivering in the same
  process on the embedded default; ``keel worker`` beside it on PostgreSQL) with an SMTP
  provider, a DKIM-signing sender and a template of the same size with links, given one
  batch of ``EMAILS`` recipients by the API; from the request until Keel's own table says
  every message is sent. Each message is rendered for its recipient, its links rewritten for
  click tracking, an open pixel and an RFC 8058 unsubscribe token added, DKIM-signed. Ratio
  Keel / the limit; target at least 0.5;
- ``notify.<database>.batch_100k_accept_s``: one batch send of 100,000 addresses (scheduled a
  day ahead, so nothing is delivered during the run): the request's round trip. Target at most
  5 s.

The SMTP server is aiosmtpd's ``Sink`` handler in its own process. ``python -m benchmarks
notify`` (``make bench BENCH=notify``); ``BENCH_NOTIFY_DATABASES`` picks ``sqlite``,
``postgresql`` or both (default).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

from benchmarks._databases import postgres_database
from benchmarks._figures import Figure, emit, machine
from benchmarks._servers import (
    HOST,
    Server,
    clean_env,
    free_port,
    keel_admin_key,
    keel_command,
    keel_serve_command,
)
from benchmarks.bench_auth import BENCH_MASTER_KEY

EMAILS = 2_000
CONNECTIONS = 10
MESSAGE_KB = 20
BATCH_ACCEPT = 100_000
TIMEOUT_SECONDS = 600.0
TARGET_RATIO = 0.5
TARGET_ACCEPT_SECONDS = 5.0


def _html(name_variable: bool) -> str:
    """About ``MESSAGE_KB`` KB of newsletter HTML with a style block and a link in every third
    paragraph (some 30 links, each rewritten for click tracking)."""
    name = "{{ name }}" if name_variable else "Ada"
    plain = (
        "<p>This week on the platform: faster deploys, fewer pages, and a new dashboard for "
        "every service, with notes from the teams who built them and what comes next.</p>"
    )
    linked = (
        "<p>This week on the platform: faster deploys, fewer pages, and a new dashboard. Read "
        "the <a href='https://news.example/item?id={i}&amp;ref=mail'>full story</a>.</p>"
    )
    body = "".join(
        linked.replace("{i}", str(i)) if i % 3 == 0 else plain
        for i in range(MESSAGE_KB * 1024 // 167)
    )
    return (
        "<html><head><style>p { color: #333; font-family: sans-serif } a { color: #06c }"
        f"</style></head><body><h1>Hello {name}</h1>{body}</body></html>"
    )


# -- the peer: a plain aiosmtplib loop -----------------------------------------------------------


def _peer_message() -> bytes:
    message = EmailMessage()
    message["From"] = "Acme <news@acme.example>"
    message["To"] = "reader@example.com"
    message["Subject"] = "This week"
    message.set_content("This week on the platform.")
    message.add_alternative(_html(name_variable=False), subtype="html")
    return bytes(message)


async def _peer(port: int) -> float:
    import aiosmtplib

    raw = _peer_message()
    per_connection = EMAILS // CONNECTIONS

    async def connection() -> None:
        client = aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=False)
        await client.connect()
        try:
            for _ in range(per_connection):
                await client.sendmail("news@acme.example", ["reader@example.com"], raw)
        finally:
            await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return (per_connection * CONNECTIONS) / (time.perf_counter() - started)


@contextmanager
def _smtp_sink() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink",
         "-l", f"{HOST}:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        import socket

        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex((HOST, port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


# -- Keel --------------------------------------------------------------------------------------


async def _configure(http: httpx.AsyncClient, smtp_port: int) -> None:
    from keel.notify.email import generate_dkim_key

    private_key, _ = generate_dkim_key()
    answers = [
        await http.post(
            "/secrets/v1/secret/data/notify/dkim",
            json={"data": {"private_key": private_key.decode()}},
        ),
        await http.put(
            "/notify/v1/senders/default",
            json={
                "address": "Acme <news@acme.example>",
                "dkim_domain": "acme.example",
                "dkim_selector": "k1",
                "dkim_secret": "secret/notify/dkim",
            },
        ),
        await http.put(
            "/notify/v1/providers/smtp",
            json={
                "kind": "smtp",
                "settings": {"host": HOST, "port": smtp_port, "security": "none"},
            },
        ),
        await http.put("/notify/v1/categories/news", json={"critical": False}),
        await http.post(
            "/notify/v1/templates/weekly/versions",
            json={
                "category": "news",
                "content": {
                    "default_locale": "en",
                    "locales": {
                        "en": {
                            "subject": "This week, {{ name }}",
                            "html": _html(name_variable=True),
                        }
                    },
                    "sample_data": {"name": "Ada"},
                },
            },
        ),
    ]
    for answer in answers:
        if answer.status_code >= 300:
            raise RuntimeError(f"{answer.request.url}: {answer.status_code} {answer.text[:500]}")


def _recipients(count: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {"to": f"{prefix}{index}@example.com", "data": {"name": f"Reader {index}"}}
        for index in range(count)
    ]


class _Counter:
    """Messages not yet final, read from Keel's own table (no load on the server)."""

    def __init__(self, database_url: str | None, sqlite_path: Path) -> None:
        self.database_url = database_url
        self.sqlite_path = sqlite_path
        self.connection: Any = None

    async def open(self) -> None:
        if self.database_url is not None:
            import asyncpg

            dsn = self.database_url.replace("postgresql+asyncpg://", "postgresql://")
            self.connection = await asyncpg.connect(dsn)
        else:
            self.connection = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True)

    async def count(self, batch_id: str, status: str) -> int:
        query = "SELECT count(*) FROM notify_messages WHERE batch_id = $1 AND status = $2"
        if self.database_url is not None:
            return int(await self.connection.fetchval(query, batch_id, status))
        cursor = self.connection.execute(query.replace("$1", "?").replace("$2", "?"),
                                         (batch_id, status))  # fmt: skip
        return int(cursor.fetchone()[0])

    async def close(self) -> None:
        if self.connection is not None:
            result = self.connection.close()
            if asyncio.iscoroutine(result):
                await result


async def _keel(
    root: Path, label: str, database_url: str | None, smtp_port: int, peer: float
) -> list[Figure]:
    cwd = root / label
    cwd.mkdir()
    overrides = {"KEEL_DATA_DIR": str(cwd / "data"), "KEEL_MASTER_KEY": BENCH_MASTER_KEY,
                 "KEEL_LOG_LEVEL": "warning"}  # fmt: skip
    if database_url is not None:
        overrides["KEEL_DATABASE_URL"] = database_url
    env = clean_env(**overrides)
    admin_key = await asyncio.to_thread(keel_admin_key, cwd, env)
    port = free_port()
    figures = []
    with Server(keel_serve_command(port), port=port, cwd=cwd, env=env) as server, \
            _worker(database_url, cwd, env):  # fmt: skip
        await asyncio.to_thread(server.wait_http, "/health/ready")
        async with httpx.AsyncClient(
            base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=120
        ) as http:
            await _configure(http, smtp_port)
            counter = _Counter(database_url, cwd / "data" / "keel.db")
            await counter.open()
            try:
                # Warm-up: a small batch through the whole path (providers, keys, caches).
                await _deliver(http, counter, _recipients(20, "warm"))
                elapsed = await _deliver(http, counter, _recipients(EMAILS, "reader"))
                rate = EMAILS / elapsed
                figures.append(emit(Figure(
                    f"notify.{label}.emails_per_s", round(rate, 1), "emails/s",
                    peer="aiosmtplib loop, pre-rendered", ratio=round(rate / peer, 3),
                    extra={"emails": EMAILS, "message_kb": MESSAGE_KB, "target": TARGET_RATIO,
                           "machine": machine()},
                )))  # fmt: skip
                body = {
                    "template": "weekly",
                    "recipients": _recipients(BATCH_ACCEPT, "later"),
                    "send_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
                }
                encoded = json.dumps(body).encode()
                started = time.perf_counter()
                answer = await http.post(
                    "/notify/v1/messages/batch", content=encoded,
                    headers={"Content-Type": "application/json"},
                )  # fmt: skip
                accept = time.perf_counter() - started
                if answer.status_code != 202:
                    raise RuntimeError(f"batch: {answer.status_code} {answer.text[:300]}")
                figures.append(emit(Figure(
                    f"notify.{label}.batch_100k_accept_s", round(accept, 2), "s",
                    extra={"recipients": BATCH_ACCEPT, "body_mb": round(len(encoded) / 2**20, 1),
                           "target": TARGET_ACCEPT_SECONDS},
                )))  # fmt: skip
            finally:
                await counter.close()
    return figures


@contextmanager
def _worker(database_url: str | None, cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """``keel worker`` beside ``keel serve`` on PostgreSQL (the embedded default's serve runs
    the background work itself)."""
    if database_url is None:
        yield
        return
    log = (cwd / "worker.log").open("w")
    process = subprocess.Popen(keel_command("worker"), cwd=cwd, env=env, stdout=log, stderr=log)
    try:
        yield
    finally:
        process.terminate()
        process.wait(20)
        log.close()


async def _deliver(http: httpx.AsyncClient, counter: _Counter, recipients: list[Any]) -> float:
    started = time.perf_counter()
    answer = await http.post(
        "/notify/v1/messages/batch",
        json={"template": "weekly", "recipients": recipients},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    if answer.status_code != 202:
        raise RuntimeError(f"batch: {answer.status_code} {answer.text[:300]}")
    batch_id = answer.json()["batch_id"]
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while await counter.count(batch_id, "queued"):
        if time.monotonic() > deadline:
            raise RuntimeError("delivery did not finish in time")
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    sent = await counter.count(batch_id, "sent")
    if sent != len(recipients):
        raise RuntimeError(f"{sent} of {len(recipients)} messages sent")
    return elapsed


def main() -> list[Figure]:
    wanted = os.environ.get("BENCH_NOTIFY_DATABASES", "sqlite,postgresql").split(",")
    figures: list[Figure] = []
    with _smtp_sink() as smtp_port, tempfile.TemporaryDirectory(prefix="bench-notify-") as tmp:
        peer = asyncio.run(_peer(smtp_port))
        figures.append(emit(Figure(
            "notify.smtp_limit_per_s", round(peer, 1), "emails/s",
            extra={"connections": CONNECTIONS, "message_kb": len(_peer_message()) // 1024},
        )))  # fmt: skip
        root = Path(tmp)
        if "sqlite" in wanted:
            figures += asyncio.run(_keel(root, "sqlite", None, smtp_port, peer))
        if "postgresql" in wanted:
            # Outside an event loop: postgres_database runs its own.
            with postgres_database("bench_notify") as url:
                figures += asyncio.run(_keel(root, "postgresql", url, smtp_port, peer))
    return figures


if __name__ == "__main__":
    main()
