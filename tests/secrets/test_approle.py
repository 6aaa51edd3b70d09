"""Vault's AppRole login on Keel's client credentials grant: the answer names the policies
the signed token carries, every login is audited, and a secret ID revoked between two logins
is refused at once, though the first login's lookup of its client is kept a moment."""

from __future__ import annotations

import httpx
import jwt
from fastapi import FastAPI

from keel.auth.dependencies import AUTH_RESOURCE
from keel.auth.service import AuthService
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.secrets_api import DATA, vault, write
from tests.support.tenants import TenantAdmin

LOGIN = "/secrets/v1/auth/approle/login"
POLICY = 'path "secret/data/apps/billing/*" {\n  capabilities = ["read"]\n}\n'


async def billing_approle(client: httpx.AsyncClient, admin: TenantAdmin) -> dict[str, str]:
    """A secret, a policy reading it and an AppRole holding the policy: its role ID, one
    secret ID and that secret ID's accessor (its client's id)."""
    headers = vault(admin.api_key)
    assert (await write(client, admin.api_key, "apps/billing/db", {"p": "1"})).status_code == 200
    answer = await client.put(
        "/secrets/v1/sys/policies/acl/billing-read", headers=headers, json={"policy": POLICY}
    )
    assert answer.status_code == 204, answer.text
    answer = await client.post(
        "/secrets/v1/auth/approle/role/billing",
        headers=headers,
        json={"token_policies": ["billing-read"]},
    )
    assert answer.status_code == 204, answer.text
    role = await client.get("/secrets/v1/auth/approle/role/billing/role-id", headers=headers)
    secret = await client.post("/secrets/v1/auth/approle/role/billing/secret-id", headers=headers)
    return {
        "role_id": role.json()["data"]["role_id"],
        "secret_id": secret.json()["data"]["secret_id"],
        "accessor": secret.json()["data"]["secret_id_accessor"],
    }


async def test_a_login_answers_the_policies_its_token_carries_and_is_audited(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    approle = await billing_approle(client, admin)
    body = {"role_id": approle["role_id"], "secret_id": approle["secret_id"]}

    tokens = []
    for _ in range(2):  # the second login finds the secret's client without a query
        answer = await client.post(LOGIN, json=body)
        assert answer.status_code == 200, answer.text
        auth = answer.json()["auth"]
        assert auth["policies"] == auth["token_policies"] == ["billing-read"]
        claims = jwt.decode(auth["client_token"], options={"verify_signature": False})
        assert claims["permissions"] == ["secrets:policy:billing-read"]
        tokens.append(auth["client_token"])

    wrong = {"role_id": approle["role_id"], "secret_id": approle["secret_id"] + "x"}
    assert (await client.post(LOGIN, json=wrong)).status_code == 400
    read = await client.get(f"{DATA}/apps/billing/db", headers=vault(tokens[1]))
    assert read.status_code == 200, read.text
    assert read.json()["data"]["data"] == {"p": "1"}
    issued = await audit_events(app, admin.tenant_id, action_prefix="auth.token.issue")
    assert [event.target_id for event in issued[:2]] == [approle["accessor"]] * 2


async def test_a_secret_id_revoked_after_a_login_is_refused_at_once(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    approle = await billing_approle(client, admin)
    body = {"role_id": approle["role_id"], "secret_id": approle["secret_id"]}
    assert (await client.post(LOGIN, json=body)).status_code == 200

    auth: AuthService = app.state.keel.resources[AUTH_RESOURCE]
    async with unit_of_work(app) as session:
        await auth.revoke_client_secret(session, admin.tenant_id, approle["accessor"])

    answer = await client.post(LOGIN, json=body)
    assert answer.status_code == 400
    assert answer.json() == {"errors": ["invalid role or secret ID"]}
