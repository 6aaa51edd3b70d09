"""The watch stream of an environment over real HTTP (uvicorn), on SQLite and PostgreSQL: a
toggle reaches the watchers of its environment only, and a watcher that resumes with
Last-Event-ID gets what it missed."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from tests.support.asgi import serve_over_tcp
from tests.support.audit import audit_events
from tests.support.flags_api import API, new_environment, new_flag, next_flags_event, watching
from tests.support.tenants import TenantAdmin, member


async def test_a_toggle_reaches_the_watchers_of_its_environment(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = admin.headers
    production = await new_environment(client, headers)
    staging = await new_environment(client, headers)
    await new_flag(client, headers, "checkout-v2")
    version = (await client.get(f"{API}/envs/{production}", headers=headers)).json()["version"]
    async with serve_over_tcp(app) as url:
        async with watching(url, production, headers) as queue:
            async with asyncio.timeout(5):
                ready = await queue.get()
            assert ready is not None
            assert ready.event == "ready"
            await client.post(
                f"{API}/envs/{staging}/flags/checkout-v2/toggle", headers=headers, json={"on": True}
            )
            await client.post(
                f"{API}/envs/{production}/flags/checkout-v2/toggle",
                headers=headers,
                json={"on": True},
            )
            event = await next_flags_event(queue)
            message = event.json()
            assert message["subject"] == production
            assert message["data"] == {
                "version": version + 1,
                "keys": ["checkout-v2"],
                "segments": [],
            }
            last_seen = event.id
        # Missed while away: a segment and a kill switch.
        await client.post(f"{API}/envs/{production}/segments", headers=headers, json={"key": "vip"})
        await client.post(
            f"{API}/envs/{production}/flags/checkout-v2/toggle", headers=headers, json={"on": False}
        )
        async with watching(url, production, headers, last_event_id=last_seen) as queue:
            resumed = [(await next_flags_event(queue)).json()["data"] for _ in range(2)]
        assert resumed == [
            {"version": version + 2, "keys": [], "segments": ["vip"]},
            {"version": version + 3, "keys": ["checkout-v2"], "segments": []},
        ]
        snapshot = await client.get(f"{API}/envs/{production}/snapshot", headers=headers)
        assert snapshot.json()["version"] == version + 3
        assert snapshot.json()["flags"]["checkout-v2"]["on"] is False
    assert len(await audit_events(app, admin.tenant_id, action_prefix="flags.changes.watch")) == 2


async def test_the_watch_needs_read_access_and_an_existing_environment(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    env = await new_environment(client, admin.headers)
    stranger = await member(app, admin, "flags:elsewhere:read")
    assert (await client.get(f"{API}/envs/{env}/watch", headers=stranger)).status_code == 403
    assert (await client.get(f"{API}/envs/nope/watch", headers=admin.headers)).status_code == 404
    bad = await client.get(
        f"{API}/envs/{env}/watch", headers={**admin.headers, "Last-Event-ID": "x"}
    )
    assert bad.status_code == 400
