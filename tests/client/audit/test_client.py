"""``AuditClient`` end to end: batching, flush, refusals, replay without duplicates, outages
behind a TCP proxy that is cut and restored, and a client process killed with SIGKILL in the
middle of an outage, on a real ``keel serve``. Also the structlog forwarder and the sync face.

Tests that need no real network hop run against the in-process app (SQLite and PostgreSQL);
the outage and crash tests run ``keel serve`` in a child process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI

from keel.auth.dependencies import AUTH_RESOURCE
from keel.auth.service.bootstrap import ensure_admin
from keel.core.tenancy import ensure_tenant
from keel_client.audit import (
    AuditAPI,
    AuditClient,
    AuditForwarder,
    AuditSpool,
    EventActor,
    EventTarget,
    Outcome,
    RejectedEvent,
    SpoolError,
    SpoolFullError,
    SpoolLockedError,
    SyncAuditClient,
    event_fields,
    public_keys_from_jwks,
    verify_tree_head,
)
from keel_client.http import BearerToken
from tests.support.keel_cli import invoke_keel
from tests.support.keel_process import KeelServer, free_port, keel_env, keel_server
from tests.support.tcpproxy import threaded_tcp_proxy

WRITER = Path(__file__).with_name("audit_writer.py")
#: Every wait of these tests is bounded; none should come near these.
FLUSH_TIMEOUT = 20.0
CHILD_TIMEOUT = 60.0
#: Quick retries, so recovery after an outage is measured in tenths of a second.
FAST_RETRY: dict[str, Any] = {"backoff_base": 0.05, "backoff_max": 0.3}


def unique_action() -> str:
    """A registered-action name of this test alone; its first part is the query prefix."""
    return f"sdk{uuid.uuid4().hex[:10]}.widget.created"


def service_of(action: str) -> str:
    return action.split(".")[0] + "."


# --- in-process Keel ----------------------------------------------------------------------


@pytest.fixture
async def api_key(app: FastAPI) -> str:
    """A tenant of this test alone and its administrator's API key, as ``keel init`` makes
    them."""
    context = app.state.keel
    async with context.database.session() as session:
        tenant, _ = await ensure_tenant(session, f"t-{uuid.uuid4().hex[:10]}")
        tenant_id = tenant.id
    async with context.database.session() as session:
        outcome = await ensure_admin(
            context.resources[AUTH_RESOURCE], session, tenant_id, f"admin-{uuid.uuid4().hex[:8]}"
        )
    assert outcome.api_key is not None
    return outcome.api_key


def in_process_api(app: FastAPI, key: str) -> AuditAPI:
    return AuditAPI(
        "http://keel.test", auth=BearerToken(key), transport=httpx.ASGITransport(app=app)
    )


@pytest.fixture
async def audit_api(app: FastAPI, api_key: str) -> AsyncIterator[AuditAPI]:
    async with in_process_api(app, api_key) as api:
        yield api


@pytest.fixture
async def action(audit_api: AuditAPI) -> str:
    name = unique_action()
    await audit_api.register_action(name, description="A widget was made", category="change")
    return name


async def stored(api: AuditAPI, action: str) -> list[dict[str, Any]]:
    return [event async for event in api.iter_events(action=service_of(action))]


async def wait_until(condition: Callable[[], bool], timeout: float = FLUSH_TIMEOUT) -> None:
    """Poll ``condition`` (a client's stats) until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


@dataclass
class Rejections:
    events: list[RejectedEvent] = field(default_factory=list)

    def __call__(self, rejected: RejectedEvent) -> None:
        self.events.append(rejected)


class TestDelivery:
    async def test_recorded_events_reach_keel_once_each_in_recording_order(
        self, audit_api: AuditAPI, action: str, tmp_path: Path
    ) -> None:
        async with AuditClient(api=audit_api, spool_dir=tmp_path, batch_size=500) as audit:
            ids = [audit.record(action, data={"n": n}) for n in range(1234)]
            assert await audit.flush(timeout=FLUSH_TIMEOUT)
            stats = audit.stats()
        assert (stats.recorded, stats.delivered, stats.pending, stats.rejected) == (
            1234,
            1234,
            0,
            0,
        )
        events = await stored(audit_api, action)
        assert [event["id"] for event in events] == ids
        assert [event["data"]["n"] for event in events] == list(range(1234))
        indexes = [event["leaf_index"] for event in events]
        assert indexes == sorted(indexes)

    async def test_event_fields_are_stored_as_recorded(
        self, audit_api: AuditAPI, action: str, tmp_path: Path
    ) -> None:
        async with AuditClient(api=audit_api, spool_dir=tmp_path) as audit:
            event_id = audit.record(
                action,
                actor=EventActor("user", "u_1", display="Ada", ip="203.0.113.7", user_agent="t/1"),
                target=EventTarget("widget", "w_9"),
                outcome=Outcome.DENIED,
                reason="quota",
                request_id="req-1",
                trace_id="0af7651916cd43dd8448eb211c80319c",
                sensitivity="confidential",
                data={"size": 3, "tags": ["a", "b"]},
            )
            assert await audit.flush(timeout=FLUSH_TIMEOUT)
        (event,) = await stored(audit_api, action)
        assert event["id"] == event_id
        assert event["actor"] == {
            "type": "user",
            "id": "u_1",
            "display": "Ada",
            "ip": "203.0.113.7",
            "user_agent": "t/1",
        }
        assert event["target"] == {"type": "widget", "id": "w_9"}
        assert (event["outcome"], event["reason"], event["sensitivity"]) == (
            "denied",
            "quota",
            "confidential",
        )
        assert (event["request_id"], event["data"]) == ("req-1", {"size": 3, "tags": ["a", "b"]})

    async def test_flush_sends_at_once_without_waiting_for_a_full_batch(
        self, audit_api: AuditAPI, action: str, tmp_path: Path
    ) -> None:
        async with AuditClient(
            api=audit_api, spool_dir=tmp_path, batch_size=1000, max_batch_delay=60.0
        ) as audit:
            audit.record(action)
            started = time.monotonic()
            assert await audit.flush(timeout=FLUSH_TIMEOUT)
            assert time.monotonic() - started < 5.0
        assert len(await stored(audit_api, action)) == 1

    async def test_a_partial_batch_goes_out_after_max_batch_delay(
        self, audit_api: AuditAPI, action: str, tmp_path: Path
    ) -> None:
        async with AuditClient(
            api=audit_api, spool_dir=tmp_path, batch_size=1000, max_batch_delay=0.05
        ) as audit:
            audit.record(action)
            audit.record(action)
            await wait_until(lambda: audit.stats().delivered == 2)
        assert len(await stored(audit_api, action)) == 2

    async def test_closing_the_client_flushes_what_was_recorded(
        self, audit_api: AuditAPI, action: str, tmp_path: Path
    ) -> None:
        audit = AuditClient(api=audit_api, spool_dir=tmp_path, max_batch_delay=60.0)
        await audit.start()
        for n in range(30):
            audit.record(action, data={"n": n})
        await audit.aclose(timeout=FLUSH_TIMEOUT)
        assert len(await stored(audit_api, action)) == 30
        with AuditSpool(tmp_path) as spool:
            assert spool.pending_count == 0

    async def test_events_recorded_from_other_threads_all_arrive(
        self, audit_api: AuditAPI, action: str, tmp_path: Path
    ) -> None:
        async with AuditClient(api=audit_api, spool_dir=tmp_path) as audit:

            def record_some(thread: int) -> list[str]:
                return [audit.record(action, data={"t": thread, "n": n}) for n in range(250)]

            per_thread = await asyncio.gather(
                *(asyncio.to_thread(record_some, thread) for thread in range(4))
            )
            assert await audit.flush(timeout=FLUSH_TIMEOUT)
        events = await stored(audit_api, action)
        assert sorted(event["id"] for event in events) == sorted(
            event_id for ids in per_thread for event_id in ids
        )
        for thread in range(4):
            mine = [event["data"]["n"] for event in events if event["data"]["t"] == thread]
            assert mine == list(range(250))  # each thread's events in its order


class TestRefusals:
    async def test_an_event_keel_refuses_is_reported_and_the_others_delivered(
        self, audit_api: AuditAPI, action: str, tmp_path: Path
    ) -> None:
        rejections = Rejections()
        async with AuditClient(
            api=audit_api, spool_dir=tmp_path, on_rejected=rejections, max_batch_delay=60.0
        ) as audit:
            good = [audit.record(action, data={"n": n}) for n in range(5)]
            unregistered = audit.record("sdkunknown.widget.created", data={"n": 99})
            good += [audit.record(action, data={"n": n}) for n in range(5, 10)]
            assert await audit.flush(timeout=FLUSH_TIMEOUT)
            stats = audit.stats()
        assert [event["id"] for event in await stored(audit_api, action)] == good
        (rejected,) = rejections.events
        assert (rejected.id, rejected.action, rejected.status) == (
            unregistered,
            "sdkunknown.widget.created",
            422,
        )
        assert rejected.event["data"] == {"n": 99}
        assert (stats.delivered, stats.rejected, stats.pending) == (10, 1, 0)

    async def test_an_id_reused_with_other_content_is_reported_as_a_conflict(
        self, audit_api: AuditAPI, action: str, tmp_path: Path
    ) -> None:
        rejections = Rejections()
        async with AuditClient(api=audit_api, spool_dir=tmp_path, on_rejected=rejections) as audit:
            audit.record(action, id="order-17", data={"amount": 1})
            assert await audit.flush(timeout=FLUSH_TIMEOUT)
            audit.record(action, id="order-17", data={"amount": 2})
            after = audit.record(action, data={"amount": 3})
            assert await audit.flush(timeout=FLUSH_TIMEOUT)
        (rejected,) = rejections.events
        assert (rejected.id, rejected.status) == ("order-17", 409)
        events = await stored(audit_api, action)
        assert [(event["id"], event["data"]) for event in events] == [
            ("order-17", {"amount": 1}),
            (after, {"amount": 3}),
        ]

    async def test_a_refused_key_keeps_the_events_and_never_shows_the_key(
        self,
        app: FastAPI,
        audit_api: AuditAPI,
        action: str,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        wrong_key = "keel_" + "x" * 40
        async with AuditClient(
            api=in_process_api(app, wrong_key), spool_dir=tmp_path, **FAST_RETRY
        ) as audit:
            for n in range(5):
                audit.record(action, data={"n": n})
            assert not await audit.flush(timeout=0.5)
            stats = audit.stats()
            await audit.aclose(timeout=0.1)
        assert stats.pending == 5
        assert not stats.is_healthy
        assert stats.last_error is not None
        assert "401" in stats.last_error
        assert wrong_key not in repr(stats)
        assert wrong_key not in caplog.text
        assert "audit service unavailable" in caplog.text

        # The right key on the same spool delivers them.
        async with AuditClient(api=audit_api, spool_dir=tmp_path) as audit:
            assert audit.stats().replayed == 5
            assert await audit.flush(timeout=FLUSH_TIMEOUT)
        assert [event["data"]["n"] for event in await stored(audit_api, action)] == list(range(5))


class TestReplay:
    async def test_replaying_events_keel_already_holds_adds_no_duplicate(
        self, audit_api: AuditAPI, action: str, tmp_path: Path
    ) -> None:
        async with AuditClient(api=audit_api, spool_dir=tmp_path) as audit:
            ids = [audit.record(action, data={"n": n}) for n in range(300)]
            assert await audit.flush(timeout=FLUSH_TIMEOUT)
        first = {event["id"]: event["leaf_index"] for event in await stored(audit_api, action)}
        # As if the process died after Keel stored the events but before the mark was written.
        (tmp_path / "acknowledged.json").unlink()

        async with AuditClient(api=audit_api, spool_dir=tmp_path) as audit:
            assert audit.stats().replayed == 300
            assert await audit.flush(timeout=FLUSH_TIMEOUT)
            assert audit.stats().rejected == 0
        again = {event["id"]: event["leaf_index"] for event in await stored(audit_api, action)}
        assert list(again) == ids
        assert again == first

    async def test_events_left_in_the_spool_are_sent_first_on_the_next_start(
        self, audit_api: AuditAPI, action: str, tmp_path: Path
    ) -> None:
        # Recorded while Keel is unreachable, then the process stops.
        async with AuditClient(
            f"http://127.0.0.1:{free_port()}", auth="keel_unused", spool_dir=tmp_path, **FAST_RETRY
        ) as offline:
            early = [offline.record(action, data={"n": n}) for n in range(20)]
            await offline.aclose(timeout=0.2)
        async with AuditClient(api=audit_api, spool_dir=tmp_path) as audit:
            late = [audit.record(action, data={"n": n}) for n in range(20, 25)]
            assert await audit.flush(timeout=FLUSH_TIMEOUT)
        assert [event["id"] for event in await stored(audit_api, action)] == early + late


class TestAuditAPI:
    async def test_a_batch_answers_receipts_in_order_under_a_signed_head(
        self, audit_api: AuditAPI, action: str
    ) -> None:
        from keel_client.audit import build_event

        events = [build_event(action, data={"n": n}) for n in range(3)]
        result = await audit_api.send_events(events)
        assert [receipt.id for receipt in result.receipts] == [event["id"] for event in events]
        head = result.signed_head()
        assert head.tree_size >= 3
        jwks = (await audit_api.get("/audit/v1/keys")).json()
        verify_tree_head(head, public_keys_from_jwks(jwks))

        again = await audit_api.send_events(events)
        assert again.receipts == result.receipts

    async def test_iter_events_follows_the_cursor_through_every_page(
        self, audit_api: AuditAPI, action: str
    ) -> None:
        from keel_client.audit import build_event

        await audit_api.send_events([build_event(action, data={"n": n}) for n in range(7)])
        page = await audit_api.list_events(action=service_of(action), limit=3)
        assert len(page.items) == 3
        assert page.next_cursor is not None
        events = [e async for e in audit_api.iter_events(action=service_of(action), page_size=3)]
        assert [event["data"]["n"] for event in events] == list(range(7))


# --- no Keel at all -----------------------------------------------------------------------


def offline_client(spool_dir: Path, **options: Any) -> AuditClient:
    """A client whose Keel refuses connections: a port nothing listens on."""
    return AuditClient(
        f"http://127.0.0.1:{free_port()}",
        auth="keel_secret_value_never_logged",
        spool_dir=spool_dir,
        **{**FAST_RETRY, **options},
    )


def record_until_full(audit: AuditClient) -> tuple[int, SpoolFullError]:
    for n in range(100_000):
        try:
            audit.record("app.widget.created", data={"n": n})
        except SpoolFullError as error:
            return n, error
    raise AssertionError("the spool never filled")


class TestWithoutKeel:
    async def test_record_returns_at_once_and_the_spool_keeps_everything(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        async with offline_client(tmp_path) as audit:
            started = time.monotonic()
            ids = [audit.record("app.widget.created", data={"n": n}) for n in range(200)]
            assert time.monotonic() - started < 2.0
            assert not await audit.flush(timeout=0.3)
            await wait_until(lambda: audit.stats().consecutive_failures >= 2)
            stats = audit.stats()
            assert (stats.pending, stats.recorded, stats.delivered) == (200, 200, 0)
            assert not stats.is_healthy
            assert stats.last_error is not None
            assert "connect" in stats.last_error
            await audit.aclose(timeout=0.1)
        assert "keel_secret_value_never_logged" not in caplog.text
        assert "stay in the spool" in caplog.text
        with AuditSpool(tmp_path) as spool:
            assert [json.loads(line)["id"] for line in spool.peek(1000)] == ids

    async def test_record_needs_a_started_open_client(self, tmp_path: Path) -> None:
        audit = offline_client(tmp_path)
        with pytest.raises(SpoolError, match="not started"):
            audit.record("app.widget.created")
        await audit.start()
        audit.record("app.widget.created")
        await audit.aclose(timeout=0.1)
        with pytest.raises(SpoolError, match="closed"):
            audit.record("app.widget.created")

    async def test_a_bad_event_fails_in_record_and_never_reaches_the_spool(
        self, tmp_path: Path
    ) -> None:
        async with offline_client(tmp_path) as audit:
            with pytest.raises(ValueError, match=r"service\.resource\.verb"):
                audit.record("login")
            with pytest.raises(TypeError):
                audit.record("app.widget.created", data={"when": object()})
            with pytest.raises(ValueError, match="max_batch_bytes"):
                audit.record("app.widget.created", data={"blob": "x" * 600_000})
            assert audit.stats().pending == 0
            await audit.aclose(timeout=0.1)

    async def test_a_second_client_on_the_same_spool_dir_is_refused(self, tmp_path: Path) -> None:
        async with offline_client(tmp_path) as audit:
            with pytest.raises(SpoolLockedError, match="in use by another client"):
                await offline_client(tmp_path).start()
            await audit.aclose(timeout=0.1)

    async def test_a_full_spool_refuses_new_events_with_a_clear_error(self, tmp_path: Path) -> None:
        async with offline_client(tmp_path, max_spool_bytes=4096) as audit:
            accepted, error = record_until_full(audit)
            assert "max_spool_bytes=4096" in str(error)
            assert audit.stats().pending == accepted > 0
            assert audit.stats().pending_bytes <= 4096
            await audit.aclose(timeout=0.1)


# --- the structlog forwarder --------------------------------------------------------------


class TestEventFields:
    def test_actor_target_and_fields_come_from_their_keys(self) -> None:
        fields = event_fields(
            {
                "event": "user.login",
                "level": "info",
                "timestamp": "2025-01-01T00:00:00Z",
                "actor_type": "user",
                "actor_id": 42,
                "ip": "203.0.113.7",
                "target_type": "session",
                "target_id": "s1",
                "outcome": "failure",
                "reason": "bad password",
                "request_id": "r-1",
                "method": "password",
                "attempt": 3,
                "password": "hunter2",
                "api_key": "keel_abc",
            }
        )
        assert fields == {
            "actor": EventActor("user", "42", ip="203.0.113.7"),
            "target": EventTarget("session", "s1"),
            "outcome": "failure",
            "reason": "bad password",
            "request_id": "r-1",
            "data": {"method": "password", "attempt": 3},
        }

    def test_data_keys_choose_the_data_and_odd_values_become_json(self) -> None:
        class Odd:
            def __str__(self) -> str:
                return "odd"

        fields = event_fields(
            {"event": "x", "a": Odd(), "b": {"c": (1, float("inf"))}, "skip": 1},
            data_keys={"a", "b", "missing"},
        )
        assert fields == {"data": {"a": "odd", "b": {"c": [1, "inf"]}}}


class TestAuditForwarder:
    async def test_chosen_log_events_are_recorded_and_every_event_passes_unchanged(
        self, tmp_path: Path
    ) -> None:
        async with offline_client(tmp_path) as audit:
            seen: list[dict[str, Any]] = []

            def keep(logger: Any, method_name: str, event_dict: Any) -> str:
                seen.append(dict(event_dict))
                return ""

            log = structlog.wrap_logger(
                structlog.ReturnLogger(),
                processors=[
                    structlog.contextvars.merge_contextvars,
                    AuditForwarder(audit, {"user.login": "app.session.login"}),
                    keep,
                ],
            )
            with structlog.contextvars.bound_contextvars(request_id="req-7"):
                log.info("user.login", actor_type="user", actor_id="u1", method="totp")
                log.info("page.viewed", path="/")
            lines = [json.loads(line) for line in audit.spool.peek(10)]
            await audit.aclose(timeout=0.1)
        assert [event["event"] for event in seen] == ["user.login", "page.viewed"]
        assert seen[0] == {
            "event": "user.login",
            "actor_type": "user",
            "actor_id": "u1",
            "method": "totp",
            "request_id": "req-7",
        }
        (recorded,) = lines
        assert recorded["action"] == "app.session.login"
        assert recorded["actor"] == {"type": "user", "id": "u1"}
        assert (recorded["request_id"], recorded["data"]) == ("req-7", {"method": "totp"})

    async def test_a_predicate_chooses_the_action(self, tmp_path: Path) -> None:
        async with offline_client(tmp_path) as audit:
            forwarder = AuditForwarder(
                audit,
                lambda event: f"app.admin.{event['event']}" if event.get("admin") else None,
                data_keys=(),
            )
            forwarder(None, "info", {"event": "deleted", "admin": True})
            forwarder(None, "info", {"event": "deleted"})
            (line,) = audit.spool.peek(10)
            assert json.loads(line)["action"] == "app.admin.deleted"
            assert "data" not in json.loads(line)
            await audit.aclose(timeout=0.1)


# --- a real keel serve --------------------------------------------------------------------

_API_KEY = re.compile(r"admin API key \(shown once, store it now\): (keel_\w+)")


@dataclass(frozen=True)
class Served:
    server: KeelServer
    api_key: str

    @property
    def port(self) -> int:
        return int(self.server.base_url.rsplit(":", 1)[1])

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.base_url,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=30.0,
        )

    def register(self, action: str) -> None:
        with self.http() as http:
            response = http.put(
                f"/audit/v1/actions/{action}",
                json={"description": "SDK test", "category": "change"},
            )
            assert response.status_code in (200, 201), response.text

    def stored(self, action: str) -> list[dict[str, Any]]:
        """Every stored event of ``action``'s service, straight from Keel (no proxy)."""
        events: list[dict[str, Any]] = []
        params: dict[str, Any] = {"action": service_of(action), "limit": 500}
        with self.http() as http:
            while True:
                response = http.get("/audit/v1/events", params=params)
                assert response.status_code == 200, response.text
                page = response.json()
                events += page["items"]
                if not page["next_cursor"]:
                    return events
                params["cursor"] = page["next_cursor"]


@pytest.fixture(scope="module")
def keel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``keel init`` and ``keel serve`` on the embedded default, for the module."""
    directory = tmp_path_factory.mktemp("keel")
    env = keel_env(KEEL_LOG_LEVEL="warning")
    initialised = invoke_keel("init", cwd=directory, env=env)
    assert initialised.returncode == 0, initialised.stderr
    match = _API_KEY.search(initialised.stdout)
    assert match is not None, initialised.stdout
    with keel_server(directory, env) as server:
        yield Served(server, match.group(1))


class TestOutage:
    async def test_events_wait_out_an_outage_in_the_spool_and_arrive_after_it(
        self, keel: Served, tmp_path: Path
    ) -> None:
        action = unique_action()
        keel.register(action)
        with threaded_tcp_proxy("127.0.0.1", keel.port) as proxy:
            async with AuditClient(
                f"http://127.0.0.1:{proxy.port}",
                auth=keel.api_key,
                spool_dir=tmp_path,
                **FAST_RETRY,
            ) as audit:
                before = [audit.record(action, data={"n": n}) for n in range(50)]
                assert await audit.flush(timeout=FLUSH_TIMEOUT)
                await asyncio.to_thread(proxy.cut)
                during = [audit.record(action, data={"n": n}) for n in range(50, 250)]
                assert not await audit.flush(timeout=1.0)
                await wait_until(lambda: not audit.stats().is_healthy)
                assert audit.stats().pending == 200
                await asyncio.to_thread(proxy.restore)
                assert await audit.flush(timeout=FLUSH_TIMEOUT)
                assert audit.stats().is_healthy
        events = await asyncio.to_thread(keel.stored, action)
        assert [event["id"] for event in events] == before + during

    async def test_a_silent_partition_is_outlasted_too(self, keel: Served, tmp_path: Path) -> None:
        action = unique_action()
        keel.register(action)
        with threaded_tcp_proxy("127.0.0.1", keel.port) as proxy:
            api = AuditAPI(
                f"http://127.0.0.1:{proxy.port}",
                auth=BearerToken(keel.api_key),
                timeout=1.0,
                deadline=2.0,
                breaker=None,
            )
            async with api, AuditClient(api=api, spool_dir=tmp_path, **FAST_RETRY) as audit:
                await asyncio.to_thread(proxy.blackhole)
                ids = [audit.record(action, data={"n": n}) for n in range(20)]
                assert not await audit.flush(timeout=1.5)
                await asyncio.to_thread(proxy.restore)
                assert await audit.flush(timeout=FLUSH_TIMEOUT)
        assert [event["id"] for event in await asyncio.to_thread(keel.stored, action)] == ids

    def test_sync_client_records_from_plain_code_and_flushes_on_close(
        self, keel: Served, tmp_path: Path
    ) -> None:
        action = unique_action()
        keel.register(action)
        with SyncAuditClient(
            AuditClient(keel.server.base_url, auth=keel.api_key, spool_dir=tmp_path)
        ) as audit:
            ids = [audit.record(action, data={"n": n}) for n in range(40)]
            assert audit.flush(timeout=FLUSH_TIMEOUT)
            ids.append(audit.record(action, data={"n": 40}))
        assert [event["id"] for event in keel.stored(action)] == ids


class _Child:
    """A writer process whose stdout is read on a thread, line by line."""

    def __init__(self, keel: Served, base_url: str, spool: Path, action: str, *args: str) -> None:
        env = {**os.environ, "KEEL_AUDIT_TEST_API_KEY": keel.api_key}
        self.process = subprocess.Popen(
            [sys.executable, str(WRITER), base_url, str(spool), action, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, prefix: str, timeout: float = CHILD_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines if line.startswith(prefix)), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.process.poll() is not None and not self._reader.is_alive()
                ):
                    raise AssertionError(
                        f"no {prefix!r} line from the writer; last lines: {self.lines[-3:]}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def recorded(self) -> dict[int, str]:
        with self._changed:
            return {
                int(n): event_id
                for kind, n, event_id in (
                    line.split(" ") for line in self.lines if line.count(" ") == 2
                )
                if kind == "recorded"
            }

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(CHILD_TIMEOUT)
        self._reader.join(CHILD_TIMEOUT)


class TestCrash:
    def test_ten_thousand_events_survive_an_outage_and_a_sigkill_exactly_once(
        self, keel: Served, tmp_path: Path
    ) -> None:
        """The acceptance run: 0-2999 delivered; Keel cut off; 3000-5999 recorded into the
        spool and the process SIGKILLed; a fresh process on the same spool replays them and
        records 6000-9999 while Keel is still away; Keel returns; every event is stored once.
        """
        action = unique_action()
        keel.register(action)
        spool = tmp_path / "spool"
        with threaded_tcp_proxy("127.0.0.1", keel.port) as proxy:
            url = f"http://127.0.0.1:{proxy.port}"
            first = _Child(keel, url, spool, action, "0", "6000", "hold")
            try:
                assert first.wait_for_line("flushed") == "flushed True"
                assert len(keel.stored(action)) == 3000
                proxy.cut()
                first.send("go")
                first.wait_for_line("recorded-all")
                time.sleep(0.3)  # the sender is failing and backing off
                first.process.send_signal(signal.SIGKILL)
            finally:
                first.kill()
            assert first.process.returncode == -signal.SIGKILL
            assert len(keel.stored(action)) == 3000  # the outage held

            second = _Child(keel, url, spool, action, "6000", "10000", "finish")
            try:
                assert second.wait_for_line("started") == "started 3000"
                second.wait_for_line("recorded-all")
                proxy.restore()
                assert second.wait_for_line("flushed") == "flushed True"
                assert second.process.wait(CHILD_TIMEOUT) == 0
            finally:
                second.kill()

        events = keel.stored(action)
        recorded = {**first.recorded(), **second.recorded()}
        assert sorted(recorded) == list(range(10_000))
        assert len(events) == 10_000
        assert len({event["id"] for event in events}) == 10_000
        assert {event["data"]["n"]: event["id"] for event in events} == recorded
