"""Each route of the audit API needs its permission (``keel.audit.auth``), and names the one
missing when it refuses; the log's public keys need none."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from tests.support.tenants import TenantAdmin, member

WRITE = "audit:event:write"
READ = "audit:event:read"
EXPORT = "audit:event:export"
ACTION_WRITE = "audit:action:write"
EVERY = (WRITE, READ, EXPORT, ACTION_WRITE)

ROUTES = [
    ("POST", "/audit/v1/events", WRITE),
    ("POST", "/audit/v1/events/batch", WRITE),
    ("POST", "/audit/v1/transactions", WRITE),
    ("GET", "/audit/v1/events", READ),
    ("GET", "/audit/v1/events/evt-1", READ),
    ("GET", "/audit/v1/tree/head", READ),
    ("GET", "/audit/v1/proofs/inclusion?leaf_index=0", READ),
    ("GET", "/audit/v1/proofs/consistency?first=1&second=1", READ),
    ("GET", "/audit/v1/actions", READ),
    ("GET", "/audit/v1/export", READ),
    ("GET", "/audit/v1/export", EXPORT),
    ("PUT", "/audit/v1/actions/shop.order.place", ACTION_WRITE),
]


@pytest.mark.parametrize(("method", "path", "needed"), ROUTES)
async def test_a_caller_with_every_audit_permission_but_the_routes_is_refused_naming_it(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    method: str,
    path: str,
    needed: str,
) -> None:
    headers = await member(app, admin, *(p for p in EVERY if p != needed))
    response = await client.request(method, path, headers=headers, json={})
    assert response.status_code == 403, response.text
    assert needed in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), sorted({(m, p) for m, p, _ in ROUTES}))
async def test_a_caller_holding_the_routes_permissions_gets_past_them(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin, method: str, path: str
) -> None:
    needed = {permission for m, p, permission in ROUTES if (m, p) == (method, path)}
    headers = await member(app, admin, *needed)
    response = await client.request(method, path, headers=headers, json={})
    assert response.status_code not in (401, 403), response.text


async def test_the_logs_public_keys_need_no_credential(client: httpx.AsyncClient) -> None:
    response = await client.get("/audit/v1/keys")
    assert response.status_code == 200
    assert response.json()["keys"]
