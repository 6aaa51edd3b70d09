"""keel_client.readiness: a service is ready when Keel answers and its clients hold what they
need; and KeelAuth.for_keel authenticates callers against the service's Keel."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from keel_client import Keel
from keel_client.fastapi import CurrentPrincipal, KeelAuth
from keel_client.http import BreakerPolicy
from keel_client.readiness import Readiness, keel_readiness
from tests.support.provider_servers import closed_port_url
from tests.support.tenants import TenantAdmin


async def test_ready_when_keel_answers(keel_url: str, admin: TenantAdmin) -> None:
    async with Keel(keel_url, credentials=admin.api_key) as keel:
        readiness = await keel_readiness(keel)
    assert readiness.is_ready
    assert readiness.to_dict() == {"status": "ready", "checks": {"keel": "ok"}}


async def test_not_ready_when_keel_is_unreachable() -> None:
    async with Keel(closed_port_url(), credentials="keel_x", breaker=None) as keel:
        readiness = await keel_readiness(keel, timeout=2.0)
    assert not readiness.is_ready
    assert readiness.checks["keel"].startswith("Keel unreachable (")
    assert readiness.to_dict()["status"] == "not ready"


async def test_an_open_circuit_is_not_ready_without_a_request() -> None:
    policy = BreakerPolicy(minimum_calls=1, window_size=1, cooldown=60.0)
    async with Keel(closed_port_url(), credentials="keel_x", breaker=policy) as keel:
        await keel_readiness(keel, timeout=2.0)  # the failure opens the circuit
        readiness = await keel_readiness(keel, timeout=2.0)
    assert readiness.checks["keel"].startswith("circuit open for ")


async def test_flags_are_ready_once_a_snapshot_is_loaded(
    keel_url: str, admin: TenantAdmin, tmp_path: Path
) -> None:
    async with Keel(keel_url, credentials=admin.api_key) as keel:
        create = await keel.api.post("/flags/v1/envs", json={"key": "development"})
        assert create.status_code in (200, 201), create.text
        flags = keel.flags.client("development", cache_path=tmp_path / "flags.json")
        before = await keel_readiness(keel, flags=flags)
        assert before.checks["flags"] == "no snapshot yet"
        assert not before.is_ready
        await flags.start()
        after = await keel_readiness(keel, flags=flags)
    assert after.checks == {"keel": "ok", "flags": "ok"}


async def test_an_audit_recorder_that_cannot_send_is_not_ready(tmp_path: Path) -> None:
    async with Keel(closed_port_url(), credentials="keel_x", breaker=None) as keel:
        audit = keel.audit.recorder(spool_dir=tmp_path / "spool", backoff_base=0.05)
        await audit.start()
        audit.record("shop.order.create")
        deadline = time.monotonic() + 30
        while audit.stats().consecutive_failures == 0:
            assert time.monotonic() < deadline, "the recorder never tried to send"
            await asyncio.sleep(0.05)
        readiness = await keel_readiness(keel, audit=audit, timeout=1.0)
        await audit.aclose(timeout=0.1)
    assert "failed sends, 1 events pending" in readiness.checks["audit"]


def test_readiness_is_ready_only_when_every_check_is_ok() -> None:
    assert Readiness({}).is_ready
    assert not Readiness({"keel": "ok", "flags": "no snapshot yet"}).is_ready


@pytest.fixture
def protected() -> FastAPI:
    app = FastAPI()

    @app.get("/me")
    async def me(principal: CurrentPrincipal) -> dict[str, str]:
        return {"subject": principal.subject}

    return app


async def test_keel_auth_for_keel_checks_callers_with_the_services_key(
    keel_url: str, admin: TenantAdmin, protected: FastAPI
) -> None:
    async with Keel(keel_url, credentials=admin.api_key) as keel:
        keel_auth = KeelAuth.for_keel(keel)
        keel_auth.install(protected, middleware=False)
        transport = httpx.ASGITransport(app=protected)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            known = await client.get("/me", headers={"Authorization": f"Bearer {admin.api_key}"})
            forged = await client.get("/me", headers={"Authorization": "Bearer keel_forged"})
            anonymous = await client.get("/me")
        await keel_auth.aclose()
    assert known.status_code == 200, known.text
    assert known.json() == {"subject": admin.user_id}
    assert forged.status_code == 401
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"].startswith("application/problem+json")
