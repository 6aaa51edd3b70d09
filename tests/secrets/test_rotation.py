"""Rotation policies and the secrets change stream, on SQLite and PostgreSQL: due rotations
write fresh values as new versions, hooks and their failures, the schedule in the database,
and the SSE stream with resume, policy filtering and tenants apart."""

from __future__ import annotations

import asyncio
import contextlib
import string
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from keel.app import create_app
from keel.core.changes import ChangeEvent
from keel.core.db import utcnow
from keel.core.tenancy import bind_tenant
from keel.secrets.engines.kv import SECRETS_RESOURCE, KvEngine
from keel.secrets.engines.rotation import (
    RotationContext,
    register_rotation_hook,
    rotate_due_secrets,
)
from keel.secrets.models import SecretRotation
from keel.settings import Settings
from keel_client.changes import ServerSentEvent, SSEDecoder
from tests.support.apps import lifespan_of, running, unit_of_work
from tests.support.asgi import serve_over_tcp
from tests.support.audit import audit_events
from tests.support.secrets_api import DATA, member, put_policy, vault, write
from tests.support.tenants import TenantAdmin, make_tenant_admin

ROTATION = "/secrets/v1/secret/rotation"
ROTATE = "/secrets/v1/secret/rotate"
CHANGES = "/secrets/v1/sys/changes"


async def read(client: httpx.AsyncClient, key: str, path: str, version: int = 0) -> Any:
    response = await client.get(f"{DATA}/{path}?version={version}", headers=vault(key))
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def set_policy(
    client: httpx.AsyncClient, key: str, path: str, **policy: Any
) -> httpx.Response:
    return await client.put(f"{ROTATION}/{path}", headers=vault(key), json=policy)


async def rotate_due(app: FastAPI, after: timedelta) -> int:
    """Run the background task's round as if ``after`` had passed."""
    engine = app.state.keel.resources[SECRETS_RESOURCE]
    assert isinstance(engine, KvEngine)
    return await rotate_due_secrets(app.state.keel.database, engine, now=utcnow() + after)


async def stored_changes(app: FastAPI, tenant_id: str) -> list[ChangeEvent]:
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant_id)
        return list(await session.scalars(select(ChangeEvent).order_by(ChangeEvent.seq)))


# -- rotation -------------------------------------------------------------------------------


async def test_a_due_rotation_writes_a_fresh_value_as_a_new_version_and_keeps_other_fields(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    key = admin.api_key
    await write(client, key, "apps/db", {"password": "initial-password", "user": "billing"})
    answer = await set_policy(
        client, key, "apps/db", field="password", interval="1h", length=40, alphabet="hex"
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["interval"] == "1h0m0s"

    assert await rotate_due(app, timedelta(minutes=59)) == 0  # not due yet
    assert (await read(client, key, "apps/db"))["metadata"]["version"] == 1

    assert await rotate_due(app, timedelta(minutes=61)) >= 1
    current = await read(client, key, "apps/db")
    password = current["data"]["password"]
    assert current["metadata"]["version"] == 2
    assert current["data"]["user"] == "billing"
    assert len(password) == 40
    assert set(password) <= set("0123456789abcdef")
    assert (await read(client, key, "apps/db", version=1))["data"]["password"] == "initial-password"

    policy = (await client.get(f"{ROTATION}/apps/db", headers=vault(key))).json()["data"]
    assert policy["last_rotated"]
    assert policy["last_error"] is None
    # The next rotation is an interval after this one: not due again right away.
    assert await rotate_due(app, timedelta(minutes=62)) == 0

    events = await audit_events(app, admin.tenant_id, action_prefix="secrets.kv.rotate")
    assert [(event.outcome, event.data["version"]) for event in events] == [("success", 2)]
    changes = await stored_changes(app, admin.tenant_id)
    assert [(change.subject, change.data) for change in changes] == [
        ("secret/apps/db", {"version": 1, "operation": "write"}),
        ("secret/apps/db", {"version": 2, "operation": "rotate"}),
    ]
    for text in [repr(event.document) for event in events] + [repr(c.data) for c in changes]:
        assert password not in text
        assert "initial-password" not in text


@pytest.mark.parametrize(
    ("alphabet", "characters"),
    [
        ("alphanumeric", string.ascii_letters + string.digits),
        ("base64url", string.ascii_letters + string.digits + "-_"),
        ("printable", string.ascii_letters + string.digits + string.punctuation),
        ("ABCDEFGHJK", "ABCDEFGHJK"),
    ],
)
async def test_rotate_now_draws_from_the_asked_alphabet(
    client: httpx.AsyncClient, admin: TenantAdmin, alphabet: str, characters: str
) -> None:
    key = admin.api_key
    await write(client, key, "apps/token", {"token": "x"})
    answer = await set_policy(
        client, key, "apps/token", field="token", interval="720h", length=200, alphabet=alphabet
    )
    assert answer.status_code == 200, answer.text
    rotated = await client.post(f"{ROTATE}/apps/token", headers=vault(key))
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["data"]["version"] == 2
    token = (await read(client, key, "apps/token"))["data"]["token"]
    assert len(token) == 200
    assert set(token) <= set(characters)
    assert len(set(token)) > len(characters) // 2  # drawn, not a constant


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"interval": "1h"}, "field"),
        ({"field": "p"}, "interval"),
        ({"field": "p", "interval": "30s"}, "at least 60"),
        ({"field": "p", "interval": "soon"}, "duration"),
        ({"field": "p", "interval": "1h", "length": 7}, "8 to 1024"),
        ({"field": "p", "interval": "1h", "length": 1025}, "8 to 1024"),
        ({"field": "p", "interval": "1h", "length": "32"}, "integer"),
        ({"field": "p", "interval": "1h", "alphabet": "abc"}, "distinct characters"),
        ({"field": "p", "interval": "1h", "alphabet": "aabcdefghijk"}, "distinct"),
        ({"field": "p", "interval": "1h", "alphabet": "abcdefghij k"}, "no spaces"),
        ({"field": "p", "interval": "1h", "hook": "nobody-registered-this"}, "registered"),
        ({"field": "p", "interval": "1h", "hook": "uuid4", "length": 9}, "either"),
        ({"field": "p", "interval": "1h", "colour": "red"}, "unknown"),
    ],
)
async def test_a_bad_policy_is_refused_in_vaults_error_shape(
    client: httpx.AsyncClient, admin: TenantAdmin, policy: dict[str, Any], message: str
) -> None:
    await write(client, admin.api_key, "apps/db", {"p": "x"})
    answer = await set_policy(client, admin.api_key, "apps/db", **policy)
    assert answer.status_code == 400, answer.text
    (error,) = answer.json()["errors"]
    assert message in error


async def test_policies_of_missing_secrets_and_missing_policies_answer_404(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    key = admin.api_key
    assert (
        await set_policy(client, key, "nothing/here", field="p", interval="1h")
    ).status_code == 404
    await write(client, key, "apps/db", {"p": "x"})
    assert (await client.get(f"{ROTATION}/apps/db", headers=vault(key))).status_code == 404
    assert (await client.post(f"{ROTATE}/apps/db", headers=vault(key))).status_code == 404
    await set_policy(client, key, "apps/db", field="p", interval="1h")
    assert (await client.delete(f"{ROTATION}/apps/db", headers=vault(key))).status_code == 204
    assert (await client.get(f"{ROTATION}/apps/db", headers=vault(key))).status_code == 404


async def test_hooks_renew_values_and_a_failing_hook_is_recorded_and_retried(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    key = admin.api_key
    seen: list[RotationContext] = []
    failing = True

    async def issue(context: RotationContext) -> str:
        seen.append(context)
        if failing:
            raise RuntimeError("upstream refused secret-ABC123")  # must not leak
        return f"issued-{len(seen)}"

    undo = register_rotation_hook("test-issuer", issue)
    try:
        await write(client, key, "apps/api", {"token": "first-token", "url": "https://x"})
        answer = await set_policy(
            client, key, "apps/api", field="token", interval="1h", hook="test-issuer"
        )
        assert answer.status_code == 200, answer.text

        failed = await client.post(f"{ROTATE}/apps/api", headers=vault(key))
        assert failed.status_code == 502
        assert "RuntimeError" in failed.text
        assert "secret-ABC123" not in failed.text
        assert seen[0].current_value == "first-token"
        assert seen[0].path == "apps/api"
        policy = (await client.get(f"{ROTATION}/apps/api", headers=vault(key))).json()["data"]
        assert "RuntimeError" in policy["last_error"]
        assert "secret-ABC123" not in policy["last_error"]
        assert (await read(client, key, "apps/api"))["metadata"]["version"] == 1

        # The background task retries a minute later, and records the failure again.
        assert await rotate_due(app, timedelta(seconds=30)) == 0
        assert len(seen) == 1
        assert await rotate_due(app, timedelta(seconds=61)) == 0
        assert len(seen) == 2

        failing = False
        assert await rotate_due(app, timedelta(seconds=200)) >= 1
        current = await read(client, key, "apps/api")
        assert current["data"] == {"token": "issued-3", "url": "https://x"}
        policy = (await client.get(f"{ROTATION}/apps/api", headers=vault(key))).json()["data"]
        assert policy["last_error"] is None

        events = await audit_events(app, admin.tenant_id, action_prefix="secrets.kv.rotate")
        assert [event.outcome for event in events] == ["success", "failure", "failure"]
        assert all("secret-ABC123" not in repr(event.document) for event in events)
    finally:
        undo()


async def test_the_built_in_uuid4_hook(client: httpx.AsyncClient, admin: TenantAdmin) -> None:
    key = admin.api_key
    await write(client, key, "apps/hook", {"id": "none"})
    await set_policy(client, key, "apps/hook", field="id", interval="24h", hook="uuid4")
    assert (await client.post(f"{ROTATE}/apps/hook", headers=vault(key))).status_code == 200
    value = (await read(client, key, "apps/hook"))["data"]["id"]
    assert uuid.UUID(value).version == 4


async def test_rotation_needs_update_on_its_own_paths(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await write(client, admin.api_key, "apps/db", {"p": "x"})
    await put_policy(
        client,
        admin,
        "data-only",
        'path "secret/data/apps/*" { capabilities = ["read", "update"] }',
    )
    await put_policy(
        client,
        admin,
        "rotator",
        'path "secret/rotation/apps/*" { capabilities = ["update", "read"] }\n'
        'path "secret/rotate/apps/*" { capabilities = ["update"] }',
    )
    data_only, rotator = await member(app, admin, "data-only"), await member(app, admin, "rotator")

    denied = await set_policy(client, data_only, "apps/db", field="p", interval="1h")
    assert denied.status_code == 403
    assert (await client.post(f"{ROTATE}/apps/db", headers=vault(data_only))).status_code == 403
    assert (
        await set_policy(client, rotator, "apps/db", field="p", interval="1h")
    ).status_code == 200
    assert (await client.post(f"{ROTATE}/apps/db", headers=vault(rotator))).status_code == 200


async def test_the_schedule_survives_a_restart(settings: Settings) -> None:
    """The policy is set on one app, which stops; another one, started afterwards, rotates it
    from the database on its background task."""
    async with running(settings) as (first, client):
        admin = await make_tenant_admin(first)
        await write(client, admin.api_key, "apps/db", {"password": "before-restart"})
        await set_policy(client, admin.api_key, "apps/db", field="password", interval="1h")
    database = first.state.keel.database
    async with database.session() as session:  # a first process stopped; time passed
        await session.execute(
            update(SecretRotation)
            .where(SecretRotation.tenant_id == admin.tenant_id)
            .values(next_rotation_at=utcnow() - timedelta(seconds=1))
            .execution_options(all_tenants=True)
        )
    await database.dispose()

    second = create_app(settings, run_background=True)
    async with lifespan_of(second):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as http:
            for _ in range(100):  # the task looks every 5 s
                current = await read(http, admin.api_key, "apps/db")
                if current["metadata"]["version"] == 2:
                    break
                await asyncio.sleep(0.2)
            assert current["metadata"]["version"] == 2
            assert current["data"]["password"] != "before-restart"


# -- the change stream ----------------------------------------------------------------------


class Stream:
    """The events of one ``GET sys/changes``, read by a task of their own."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[ServerSentEvent] = asyncio.Queue()
        self.raw: list[str] = []

    async def next(self, timeout: float = 5.0) -> ServerSentEvent:
        async with asyncio.timeout(timeout):
            return await self.events.get()

    async def assert_nothing_more(self, within: float = 0.5) -> None:
        await asyncio.sleep(within)
        assert self.events.empty(), self.events.get_nowait()


@asynccontextmanager
async def streaming(
    base_url: str, key: str, *, last_event_id: int | None = None
) -> AsyncIterator[Stream]:
    stream = Stream()
    headers = {"X-Vault-Token": key}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    opened = asyncio.Event()

    async def pump() -> None:
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=10) as http,
            http.stream("GET", CHANGES, headers=headers) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            opened.set()
            decoder = SSEDecoder()
            async for line in response.aiter_lines():
                stream.raw.append(line)
                if (event := decoder.decode(line)) is not None:
                    stream.events.put_nowait(event)

    task = asyncio.create_task(pump())
    try:
        async with asyncio.timeout(10):
            await opened.wait()
        yield stream
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def base_url(app: FastAPI) -> AsyncIterator[str]:
    async with serve_over_tcp(app) as url:
        yield url


async def test_a_subscriber_gets_the_changes_of_a_write_and_a_rotation_without_values(
    client: httpx.AsyncClient, admin: TenantAdmin, base_url: str
) -> None:
    key = admin.api_key
    async with streaming(base_url, key) as stream:
        assert (await stream.next()).event == "ready"
        await write(client, key, "apps/db", {"password": "value-one"})
        await set_policy(client, key, "apps/db", field="password", interval="1h")
        await client.post(f"{ROTATE}/apps/db", headers=vault(key))
        rotated = (await read(client, key, "apps/db"))["data"]["password"]
        await client.patch(
            f"{DATA}/apps/db",
            headers={**vault(key), "Content-Type": "application/merge-patch+json"},
            json={"data": {"extra": "value-two"}},
        )
        await client.post(
            "/secrets/v1/secret/delete/apps/db", headers=vault(key), json={"versions": [3]}
        )
        await client.delete("/secrets/v1/secret/metadata/apps/db", headers=vault(key))
        events = [await stream.next() for _ in range(5)]
        await stream.assert_nothing_more()
    assert [event.event for event in events] == ["secrets"] * 5
    assert [(e.json()["subject"], e.json()["data"]["operation"]) for e in events] == [
        ("secret/apps/db", "write"),
        ("secret/apps/db", "rotate"),
        ("secret/apps/db", "patch"),
        ("secret/apps/db", "delete"),
        ("secret/apps/db", "delete_metadata"),
    ]
    assert [e.json()["data"]["version"] for e in events[:3]] == [1, 2, 3]
    text = "\n".join(stream.raw)
    assert "value-one" not in text
    assert "value-two" not in text
    assert rotated not in text


async def test_resuming_with_last_event_id_delivers_exactly_the_missed_changes_in_order(
    client: httpx.AsyncClient, admin: TenantAdmin, base_url: str
) -> None:
    key = admin.api_key
    async with streaming(base_url, key) as stream:
        assert (await stream.next()).event == "ready"
        await write(client, key, "a", {"v": "1"})
        seen = await stream.next()
    for path in ("b", "c", "d"):
        await write(client, key, path, {"v": "1"})
    async with streaming(base_url, key, last_event_id=int(seen.id or 0)) as stream:
        missed = [await stream.next() for _ in range(3)]
        assert [event.json()["subject"] for event in missed] == ["secret/b", "secret/c", "secret/d"]
        ids = [int(event.id or 0) for event in missed]
        assert ids == sorted(ids)
        assert ids[0] > int(seen.id or 0)
        await write(client, key, "e", {"v": "1"})
        assert (await stream.next()).json()["subject"] == "secret/e"
        await stream.assert_nothing_more()


async def test_a_caller_gets_no_event_about_a_path_it_cannot_read(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin, base_url: str
) -> None:
    await put_policy(
        client, admin, "billing-read", 'path "secret/data/billing/*" { capabilities = ["read"] }'
    )
    reader = await member(app, admin, "billing-read")
    async with streaming(base_url, reader) as stream:
        assert (await stream.next()).event == "ready"
        await write(client, admin.api_key, "payroll/db", {"password": "x"})
        await write(client, admin.api_key, "billing/db", {"password": "y"})
        event = await stream.next()
        assert event.json()["subject"] == "secret/billing/db"
        await stream.assert_nothing_more()
    assert not any("payroll" in line for line in stream.raw)


async def test_changes_of_another_tenant_are_never_delivered(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin, base_url: str
) -> None:
    other = await make_tenant_admin(app)
    async with streaming(base_url, other.api_key) as stream:
        assert (await stream.next()).event == "ready"
        await write(client, admin.api_key, "theirs", {"v": "1"})
        await write(client, other.api_key, "mine", {"v": "1"})
        assert (await stream.next()).json()["subject"] == "secret/mine"
        await stream.assert_nothing_more()


async def test_the_stream_refuses_a_missing_token_and_a_bad_resume_point(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    assert (await client.get(CHANGES)).status_code == 403
    bad = await client.get(CHANGES, headers={**vault(admin.api_key), "Last-Event-ID": "x1"})
    assert bad.status_code == 400
    assert "Last-Event-ID" in bad.json()["errors"][0]
