"""Fixtures of the notification service's API tests: an app, a tenant with an email sender
and a DKIM key in the secrets service, a real SMTP server, and the jobs runner that delivers."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from keel.app import create_app
from keel.core.context import AppContext
from keel.core.db import utcnow
from keel.core.tenancy import bind_tenant
from keel.jobs.models import CLAIMABLE_STATES, Job
from keel.jobs.runner import PlatformRunner
from keel.jobs.service import cancel
from keel.notify.email import generate_dkim_key
from keel.notify.models import NotifyMessage
from keel.notify.service.delivery import DELIVER
from keel.notify.tasks import TASKS
from keel.settings import Settings
from tests.support.apps import lifespan_of
from tests.support.provider_servers import SmtpTestServer, smtp_server
from tests.support.secrets_api import write
from tests.support.tenants import TenantAdmin

API = "/notify/v1"

#: One DKIM key for the whole run: making a 2048-bit RSA key took a tenth of a second per
#: test, and a key signs every message alike.
_dkim_key = functools.cache(generate_dkim_key)
DKIM_DOMAIN = "acme.example"
DKIM_SELECTOR = "k1"


@dataclass
class Notify:
    """The tenant's admin calling the notification API, and what delivers its messages."""

    client: httpx.AsyncClient
    admin: TenantAdmin
    context: AppContext
    smtp: SmtpTestServer
    dkim_txt: str
    #: The app itself, for what an in-process client cannot do (a streamed answer).
    app: FastAPI

    @property
    def headers(self) -> dict[str, str]:
        return self.admin.headers

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.request(method, f"{API}{path}", headers=self.headers, **kwargs)

    async def publish(self, name: str, content: dict[str, Any], **fields: Any) -> dict[str, Any]:
        answer = await self.call(
            "POST", f"/templates/{name}/versions", json={"content": content, **fields}
        )
        assert answer.status_code == 201, answer.text
        document: dict[str, Any] = answer.json()
        return document

    async def send(self, **body: Any) -> httpx.Response:
        return await self.call("POST", "/messages", json=body)

    async def deliver(self) -> int:
        """Run every delivery job due now (the jobs runner of ``keel worker``)."""
        return await PlatformRunner(self.context, list(TASKS)).drain()

    async def deliver_own(self) -> int:
        """:meth:`deliver`, counting only this tenant's jobs that ran: the PostgreSQL
        database is shared by the session's tests, and the runner drains every tenant."""
        started = utcnow()
        await self.deliver()
        async with self.context.database.session() as session:
            bind_tenant(session, self.admin.tenant_id)
            ran = await session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.queue == DELIVER.queue, Job.attempted_at >= started)
            )
        return int(ran or 0)

    async def message(self, message_id: str) -> dict[str, Any]:
        answer = await self.call("GET", f"/messages/{message_id}")
        assert answer.status_code == 200, answer.text
        document: dict[str, Any] = answer.json()
        return document

    async def identify(self, recipient: str, **fields: Any) -> dict[str, Any]:
        answer = await self.call("PUT", f"/recipients/{recipient}", json=fields)
        assert answer.status_code in (200, 201), answer.text
        document: dict[str, Any] = answer.json()
        return document

    async def delivery_jobs(self) -> list[dict[str, Any]]:
        """The tenant's delivery jobs, as an operator reads them (``/jobs/v1/jobs``)."""
        answer = await self.client.get(
            "/jobs/v1/jobs", params={"queue": DELIVER.queue, "limit": 500}, headers=self.headers
        )
        assert answer.status_code == 200, answer.text
        jobs: list[dict[str, Any]] = answer.json()["jobs"]
        return jobs

    async def cancel_waiting_deliveries(self) -> None:
        """Cancel the tenant's delivery jobs still waiting (a retry in 30 s, quiet hours),
        as an operator would: the PostgreSQL database is shared by the session's tests, and
        the runner of a later test drains every tenant's due jobs."""
        async with self.context.database.session() as session:
            bind_tenant(session, self.admin.tenant_id)
            waiting = await session.scalars(
                select(Job.id).where(
                    Job.queue == DELIVER.queue,
                    Job.state.in_([state.value for state in CLAIMABLE_STATES]),
                )
            )
            for job_id in list(waiting):
                await cancel(session, self.admin.tenant_id, job_id)

    async def let_time_pass(self, until: datetime) -> None:
        """Make what was due by ``until`` due now: the waiting delivery jobs' ``run_at`` and
        the queued messages' ``send_at`` move to now. A test cannot wait an hour; it moves
        the rows the engine reads, so the code under test runs as it will then."""
        now = utcnow()
        async with self.context.database.session() as session:
            bind_tenant(session, self.admin.tenant_id)
            await session.execute(
                update(Job)
                .where(
                    Job.queue == DELIVER.queue,
                    Job.state.in_([state.value for state in CLAIMABLE_STATES]),
                    Job.run_at <= until,
                )
                .values(run_at=now)
                .execution_options(synchronize_session=False)
            )
            await session.execute(
                update(NotifyMessage)
                .where(NotifyMessage.status == "queued", NotifyMessage.send_at <= until)
                .values(send_at=now)
                .execution_options(synchronize_session=False)
            )


WELCOME = {
    "default_locale": "en",
    "locales": {
        "en": {
            "subject": "Welcome, {{ name }}",
            "html": "<html><body><p>Hi {{ name }}</p>"
            '<p><a href="https://acme.example/start?x=1&amp;y=2">Start</a></p></body></html>',
            "text": "Hi {{ name }}",
        },
        "ja": {"subject": "ようこそ {{ name }}", "text": "こんにちは {{ name }}"},
    },
    "sample_data": {"name": "Ada"},
}


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app without its background work: each test delivers with :meth:`Notify.deliver`,
    so what a test asserts happened when it said so (the embedded default's ``keel serve``
    runs the same runner in the background)."""
    application = create_app(settings, run_background=False)
    async with lifespan_of(application):
        yield application


@pytest.fixture
async def notify(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> AsyncIterator[Notify]:
    private_key, txt = _dkim_key()
    answer = await write(
        client, admin.api_key, "notify/dkim", {"private_key": private_key.decode()}
    )
    assert answer.status_code == 200, answer.text
    async with smtp_server() as smtp:
        setup = Notify(client, admin, app.state.keel, smtp, txt, app)
        answer = await setup.call(
            "PUT",
            "/senders/default",
            json={
                "address": "Acme <no-reply@acme.example>",
                "dkim_domain": DKIM_DOMAIN,
                "dkim_selector": DKIM_SELECTOR,
                "dkim_secret": "secret/notify/dkim",
            },
        )
        assert answer.status_code == 201, answer.text
        answer = await setup.call(
            "PUT", "/providers/smtp", json={"kind": "smtp", "settings": smtp.settings()}
        )
        assert answer.status_code == 201, answer.text
        answer = await setup.call("PUT", "/categories/onboarding", json={"critical": False})
        assert answer.status_code == 201, answer.text
        await setup.publish("welcome", WELCOME, category="onboarding")
        yield setup
        await setup.cancel_waiting_deliveries()
