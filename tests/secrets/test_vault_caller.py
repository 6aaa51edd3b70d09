"""Who calls the Vault API, as every route sees it: a missing or invalid token is Vault's 403
whatever the route, a malformed call is refused before its caller is looked at, and every
audited call names its caller with the request's address and user agent (``CallerActor``)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from keel.audit.service import StoredEvent
from tests.support.audit import audit_events
from tests.support.secrets_api import DATA, vault
from tests.support.tenants import TenantAdmin

PERMISSION_DENIED = {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}
USER_AGENT = "vault-agent/1.15 (keel test)"
READERS_POLICY = '{"path": {"secret/data/apps/*": {"capabilities": ["read"]}}}'

#: One call of each router of the Vault API.
CALLS = [
    ("GET", f"{DATA}/apps/db", None),  # the hot path
    ("POST", f"{DATA}/apps/db", {"data": {"k": "v"}}),
    ("GET", "/secrets/v1/secret/metadata/apps?list=true", None),
    ("GET", "/secrets/v1/secret/config", None),
    ("GET", "/secrets/v1/auth/token/lookup-self", None),
    ("GET", "/secrets/v1/sys/mounts", None),
    ("GET", "/secrets/v1/sys/policies/acl", None),
    ("GET", "/secrets/v1/auth/approle/role/billing/role-id", None),
    ("PUT", "/secrets/v1/sys/leases/lookup", {"lease_id": "x"}),
    ("GET", "/secrets/v1/secret/rotation/apps/db", None),
    ("GET", "/secrets/v1/sys/changes", None),
]


@pytest.mark.parametrize(("method", "url", "body"), CALLS)
@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Vault-Token": "not-a-token"}, {"Authorization": "Bearer not-a-token"}],
    ids=["no-token", "invalid-vault-token", "invalid-bearer"],
)
async def test_a_missing_or_invalid_token_is_vaults_permission_denied(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    body: object,
    headers: dict[str, str],
) -> None:
    answer = await client.request(method, url, json=body, headers=headers)
    assert answer.status_code == 403, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == PERMISSION_DENIED


@pytest.mark.parametrize(
    ("method", "url", "status", "message"),
    [
        ("GET", "/secrets/v1/secret/bogus/apps/db", 404, None),
        ("POST", f"{DATA}/a/%2e%2e/b", 400, "invalid path segment"),
        ("GET", f"{DATA}/apps?list=true", 405, "unsupported operation"),
        ("GET", "/secrets/v1/sys/policies/acl/Not A Name", 400, "policy name"),
        ("GET", "/secrets/v1/secret/rotation/a/%2e%2e/b", 400, "invalid path segment"),
        ("GET", "/secrets/v1/sys/changes?since=yesterday", 400, "Last-Event-ID"),
    ],
)
async def test_a_malformed_call_is_refused_before_its_caller_is_looked_at(
    client: httpx.AsyncClient, method: str, url: str, status: int, message: str | None
) -> None:
    answer = await client.request(method, url)  # no token
    assert answer.status_code == status, answer.text
    errors = answer.json()["errors"]
    assert errors == [] if message is None else message in errors[0]


async def test_every_audited_call_names_the_callers_address_and_user_agent(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    headers = {**vault(admin.api_key), "User-Agent": USER_AGENT}
    calls = [
        ("POST", f"{DATA}/apps/db", {"data": {"password": "s3cret"}}),  # a change
        ("GET", f"{DATA}/apps/db", None),  # a read, in the log before the answer
        ("PUT", "/secrets/v1/sys/policies/acl/readers", {"policy": READERS_POLICY}),
        ("POST", "/secrets/v1/sys/mounts/team", {"type": "kv", "options": {"version": "2"}}),
        ("POST", "/secrets/v1/auth/approle/role/billing", {"token_policies": ["readers"]}),
    ]
    for method, url, body in calls:
        answer = await client.request(method, url, json=body, headers=headers)
        assert answer.status_code in (200, 204), (url, answer.text)

    events: dict[tuple[str, str | None], StoredEvent] = {}
    for event in await audit_events(app, admin.tenant_id, action_prefix="secrets."):
        events.setdefault((event.action, event.target_id), event)
    for key in (
        ("secrets.kv.write", "secret/data/apps/db"),
        ("secrets.kv.read", "secret/data/apps/db"),
        ("secrets.policy.write", "sys/policies/acl/readers"),
        ("secrets.mount.write", "team"),
        ("secrets.policy.write", "auth/approle/role/billing"),
    ):
        event = events[key]
        assert (event.actor_type, event.actor_id) == ("user", admin.user_id), key
        assert event.ip_address == "127.0.0.1", key  # httpx's ASGI transport's client
        assert event.user_agent == USER_AGENT, key
    # The AppRole's service account and role are auth's changes, made by the same caller.
    role = next(e for e in await audit_events(app, admin.tenant_id, action_prefix="auth.role."))
    assert (role.actor_id, role.user_agent) == (admin.user_id, USER_AGENT)
