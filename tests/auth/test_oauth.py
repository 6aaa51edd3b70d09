"""OAuth 2.0 endpoints: token (RFC 6749), introspection (RFC 7662), revocation (RFC 7009)
and the discovery documents."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import jwt
from fastapi import FastAPI
from sqlalchemy import func, select

from keel.app import create_app
from keel.audit.service import AUDIT_RESOURCE, EventFilter
from keel.auth.models import PrincipalType
from keel.core.audit import AuditOutbox
from keel.settings import Settings
from tests.support.apps import lifespan_of, unit_of_work
from tests.support.logins import login_tokens
from tests.support.tenants import (
    TenantAdmin,
    auth_service,
    bearer,
    create_role,
    create_service_account,
    create_user,
    make_tenant_admin,
)

TOKEN = "/auth/v1/oauth/token"
INTROSPECT = "/auth/v1/oauth/introspect"
REVOKE = "/auth/v1/oauth/revoke"


def basic(client_id: str, secret: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


async def _service_client(app: FastAPI, admin: TenantAdmin) -> tuple[str, str, str]:
    await create_role(app, admin.tenant_id, "introspector", ["auth:user:read"])
    return await create_service_account(app, admin.tenant_id, "billing", roles=["introspector"])


async def _introspect(
    client: httpx.AsyncClient, token: str, headers: dict[str, str]
) -> dict[str, Any]:
    response = await client.post(INTROSPECT, headers=headers, data={"token": token})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


async def test_client_credentials_with_basic_and_with_post(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    account_id, client_id, secret = await _service_client(app, admin)

    answers = [
        await client.post(
            TOKEN, headers=basic(client_id, secret), data={"grant_type": "client_credentials"}
        ),
        await client.post(
            TOKEN,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        ),
    ]

    for response in answers:
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 900
        assert "refresh_token" not in body
        me = (await client.get("/auth/v1/me", headers=bearer(body["access_token"]))).json()
        assert me["subject"] == account_id
        assert me["principal_type"] == "service_account"
        assert me["permissions"] == ["auth:user:read"]


async def test_a_role_change_reaches_the_next_client_credentials_token_at_once(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    """Token requests keep the client's grant in a cache; a role change drops it."""
    account_id, client_id, secret = await _service_client(app, admin)

    async def permissions() -> list[str]:
        answer = await client.post(
            TOKEN, headers=basic(client_id, secret), data={"grant_type": "client_credentials"}
        )
        assert answer.status_code == 200, answer.text
        token = answer.json()["access_token"]
        me = (await client.get("/auth/v1/me", headers=bearer(token))).json()
        return list(me["permissions"])

    assert await permissions() == ["auth:user:read"]  # cached from here on
    await create_role(app, admin.tenant_id, "auditor", ["audit:events:read"])
    async with unit_of_work(app) as session:
        await auth_service(app).assign_role(
            session, admin.tenant_id, "auditor", PrincipalType.service_account, account_id
        )
    assert await permissions() == ["audit:events:read", "auth:user:read"]
    async with unit_of_work(app) as session:
        await auth_service(app).update_role(
            session, admin.tenant_id, "auditor", permissions=["audit:*:read"], if_match=None
        )
    assert await permissions() == ["audit:*:read", "auth:user:read"]
    async with unit_of_work(app) as session:
        await auth_service(app).unassign_role(
            session, admin.tenant_id, "introspector", PrincipalType.service_account, account_id
        )
    assert await permissions() == ["audit:*:read"]


async def test_wrong_client_secret_is_invalid_client(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    _, client_id, secret = await _service_client(app, admin)

    for headers, data in [
        (basic(client_id, secret + "x"), {"grant_type": "client_credentials"}),
        (basic("kc_unknown", secret), {"grant_type": "client_credentials"}),
        ({}, {"grant_type": "client_credentials", "client_id": client_id}),
        ({}, {"grant_type": "client_credentials"}),
    ]:
        response = await client.post(TOKEN, headers=headers, data=data)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/json"
        assert response.headers["www-authenticate"].startswith("Basic")
        assert response.json()["error"] == "invalid_client"
        assert secret not in response.text


async def test_unsupported_grant_type(client: httpx.AsyncClient) -> None:
    response = await client.post(TOKEN, data={"grant_type": "password"})
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


async def test_refresh_token_grant_rotates(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "alice")
    tokens = await login_tokens(client, admin.tenant_slug, "alice")

    rotated = await client.post(
        TOKEN, data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    assert rotated.status_code == 200
    body = rotated.json()
    assert body["refresh_token"] != tokens["refresh_token"]
    assert (await client.get("/auth/v1/me", headers=bearer(body["access_token"]))).is_success
    again = await client.post(
        TOKEN, data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    )
    missing = await client.post(TOKEN, data={"grant_type": "refresh_token"})

    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    assert missing.json()["error"] == "invalid_request"


async def test_introspection_of_each_token_kind(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    _, client_id, secret = await _service_client(app, admin)
    auth_header = basic(client_id, secret)
    user = await create_user(app, admin.tenant_id, "alice")
    tokens = await login_tokens(client, admin.tenant_slug, "alice")

    access = await _introspect(client, tokens["access_token"], auth_header)
    assert access["active"] is True
    assert access["token_type"] == "access_token"
    assert access["sub"] == user.id
    assert access["tid"] == admin.tenant_id
    assert isinstance(access["exp"], int)

    refresh = await _introspect(client, tokens["refresh_token"], auth_header)
    assert refresh["active"] is True
    assert refresh["token_type"] == "refresh_token"
    assert refresh["sub"] == user.id

    api_key = await _introspect(client, admin.api_key, auth_header)
    assert api_key["active"] is True
    assert api_key["token_type"] == "api_key"
    assert api_key["sub"] == admin.user_id

    # Rotated, garbage and look-alike tokens are simply inactive.
    await client.post("/auth/v1/refresh", json={"refresh_token": tokens["refresh_token"]})
    look_alike = admin.api_key[:-1] + ("1" if admin.api_key.endswith("0") else "0")
    for token in (tokens["refresh_token"], "garbage", "krt_unknown", look_alike):
        assert await _introspect(client, token, auth_header) == {"active": False}


async def test_introspection_needs_client_or_permission(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    _, client_id, _secret = await _service_client(app, admin)
    await create_user(app, admin.tenant_id, "alice")
    tokens = await login_tokens(client, admin.tenant_slug, "alice")
    token = {"token": tokens["access_token"]}

    anonymous = await client.post(INTROSPECT, data=token)
    wrong_secret = await client.post(INTROSPECT, headers=basic(client_id, "nope"), data=token)
    unprivileged = await client.post(INTROSPECT, headers=bearer(tokens["access_token"]), data=token)
    privileged = await client.post(INTROSPECT, headers=admin.headers, data=token)

    for refused in (anonymous, wrong_secret, unprivileged):
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_client"
        assert "sub" not in refused.text
    assert privileged.status_code == 200
    assert privileged.json()["active"] is True


async def test_introspection_does_not_reveal_another_tenants_tokens(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    other = await make_tenant_admin(app)
    _, client_id, secret = await _service_client(app, other)
    await create_user(app, admin.tenant_id, "alice")
    tokens = await login_tokens(client, admin.tenant_slug, "alice")

    for token in (tokens["access_token"], tokens["refresh_token"], admin.api_key):
        by_client = await _introspect(client, token, basic(client_id, secret))
        by_admin = await _introspect(client, token, other.headers)
        assert by_client == {"active": False}
        assert by_admin == {"active": False}
        assert (await _introspect(client, token, admin.headers))["active"] is True


async def test_revoking_an_access_token(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "alice")
    tokens = await login_tokens(client, admin.tenant_slug, "alice")
    access = tokens["access_token"]
    assert (await client.get("/auth/v1/me", headers=bearer(access))).status_code == 200

    revoked = await client.post(REVOKE, data={"token": access})

    assert revoked.status_code == 200
    assert (await client.get("/auth/v1/me", headers=bearer(access))).status_code == 401
    assert await _introspect(client, access, admin.headers) == {"active": False}
    # Only that access token: the session's refresh token still works.
    refreshed = await client.post(
        "/auth/v1/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200


async def test_revoking_a_refresh_token_ends_its_session(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "alice")
    tokens = await login_tokens(client, admin.tenant_slug, "alice")

    revoked = await client.post(REVOKE, data={"token": tokens["refresh_token"]})

    assert revoked.status_code == 200
    refreshed = await client.post(
        "/auth/v1/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert refreshed.status_code == 401
    assert (
        await client.get("/auth/v1/me", headers=bearer(tokens["access_token"]))
    ).status_code == 401


async def test_revoking_an_unknown_token_answers_200(client: httpx.AsyncClient) -> None:
    for token in ("krt_never-issued", "eyJhbGciOiJub25lIn0.e30.", "anything"):
        response = await client.post(REVOKE, data={"token": token})
        assert response.status_code == 200
        assert response.content == b""


async def test_discovery_document_and_jwks_headers(client: httpx.AsyncClient) -> None:
    discovery = await client.get("/.well-known/openid-configuration")
    jwks = await client.get("/.well-known/jwks.json")

    assert discovery.status_code == 200
    document = discovery.json()
    assert document["issuer"] == "http://keel.test"
    assert document["jwks_uri"] == "http://keel.test/.well-known/jwks.json"
    assert document["token_endpoint"] == "http://keel.test/auth/v1/oauth/token"
    assert document["introspection_endpoint"] == "http://keel.test/auth/v1/oauth/introspect"
    assert document["revocation_endpoint"] == "http://keel.test/auth/v1/oauth/revoke"
    assert {"client_credentials", "refresh_token"} <= set(document["grant_types_supported"])
    assert {"client_secret_basic", "client_secret_post"} <= set(
        document["token_endpoint_auth_methods_supported"]
    )
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert jwks.status_code == 200
    assert jwks.headers["cache-control"] == "public, max-age=300"
    keys = jwks.json()["keys"]
    assert len(keys) >= 2  # the active key and the next one
    for key in keys:
        assert set(key) >= {"kid", "kty", "alg", "use"}
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)  # public parts only


async def test_malformed_token_requests_answer_invalid_request(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    _, client_id, secret = await _service_client(app, admin)
    auth = basic(client_id, secret)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    cases = [
        ({**auth}, {"json": {"grant_type": "client_credentials"}}, "x-www-form-urlencoded"),
        ({**auth, **form}, {"content": b"scope=a"}, "grant_type is required"),
        (
            {**auth, **form},
            {"content": b"grant_type=client_credentials&grant_type=password"},
            "more than once",
        ),
        (
            {**auth, **form},
            {"content": b"grant_type=client_credentials&scope=" + b"a" * 2001},
            "longer",
        ),
        ({**auth, **form}, {"content": b"grant_type=%ff%fe"}, "cannot be read"),
    ]
    for headers, body, fragment in cases:
        response = await client.post(TOKEN, headers=headers, **body)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_request"
        assert fragment in response.json()["error_description"]
        assert response.headers["cache-control"] == "no-store"
    unknown = await client.post(TOKEN, headers=auth, data={"grant_type": "password"})
    assert unknown.json()["error"] == "unsupported_grant_type"
    schema = (await client.get("/openapi.json")).json()["paths"][TOKEN]["post"]["requestBody"]
    assert (
        "grant_type" in schema["content"]["application/x-www-form-urlencoded"]["schema"]["required"]
    )


async def test_a_clients_token_is_revoked_only_by_that_client_authenticated(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    _, client_id, secret = await _service_client(app, admin)
    _, other_id, other_secret = await create_service_account(app, admin.tenant_id, "other")
    issued = await client.post(
        TOKEN, headers=basic(client_id, secret), data={"grant_type": "client_credentials"}
    )
    access = issued.json()["access_token"]

    anonymous = await client.post(REVOKE, data={"token": access})
    wrong_secret = await client.post(
        REVOKE, headers=basic(client_id, secret + "x"), data={"token": access}
    )
    another_client = await client.post(
        REVOKE, headers=basic(other_id, other_secret), data={"token": access}
    )
    for refused in (anonymous, wrong_secret, another_client):
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "invalid_client"
    assert (await _introspect(client, access, admin.headers))["active"] is True

    revoked = await client.post(REVOKE, headers=basic(client_id, secret), data={"token": access})
    assert revoked.status_code == 200
    assert await _introspect(client, access, admin.headers) == {"active": False}


async def test_issued_tokens_are_in_the_log_before_the_answer_in_group_commits(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    """Issuing a token changes nothing in the database; its audit event is appended at once,
    concurrent issues sharing a transaction, not queued in the outbox; their signed head comes
    within the log's merge delay, or at once for whoever asks."""
    account_id, client_id, secret = await _service_client(app, admin)
    audit = app.state.keel.resources[AUDIT_RESOURCE]
    await audit.sequence_outbox(admin.tenant_id)  # the set-up's own events
    heads_before = await _heads(app, admin.tenant_id)

    answers = await asyncio.gather(
        *(
            client.post(
                TOKEN, headers=basic(client_id, secret), data={"grant_type": "client_credentials"}
            )
            for _ in range(12)
        )
    )

    assert [answer.status_code for answer in answers] == [200] * 12
    async with unit_of_work(app) as session:
        waiting = await session.scalar(
            select(func.count())
            .select_from(AuditOutbox)
            .where(AuditOutbox.tenant_id == admin.tenant_id)
        )
        issued = await audit.events(
            session, admin.tenant_id, filters=EventFilter(action_prefix="auth.token.issue")
        )
    assert waiting == 0
    assert len(issued) == 12
    assert {event.document["actor"]["id"] for event in issued} == {account_id}
    async with unit_of_work(app) as session:
        head = await audit.fresh_head(session, admin.tenant_id)
    assert head is not None
    assert head.tree_size > max(event.leaf_index for event in issued)
    new_heads = len(await _heads(app, admin.tenant_id)) - len(heads_before)
    assert 1 <= new_heads < 12  # batched: fewer heads than events


async def test_without_the_audit_service_an_issued_token_is_recorded_through_the_outbox(
    settings: Settings,
) -> None:
    application = create_app(settings.model_copy(update={"services": ["auth"]}))
    async with lifespan_of(application):
        admin = await make_tenant_admin(application)
        _, client_id, secret = await _service_client(application, admin)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as client:
            answer = await client.post(
                TOKEN, headers=basic(client_id, secret), data={"grant_type": "client_credentials"}
            )
        assert answer.status_code == 200, answer.text
        async with unit_of_work(application) as session:
            documents = list(
                await session.scalars(
                    select(AuditOutbox.document).where(AuditOutbox.tenant_id == admin.tenant_id)
                )
            )
    assert any(b'"auth.token.issue"' in document for document in documents)


async def _heads(app: FastAPI, tenant_id: str) -> list[Any]:
    audit = app.state.keel.resources[AUDIT_RESOURCE]
    async with unit_of_work(app) as session:
        return list(await audit.heads(session, tenant_id))


async def _token_for(
    client: httpx.AsyncClient, client_id: str, secret: str, audience: str | None
) -> str:
    form = {"grant_type": "client_credentials"}
    if audience is not None:
        form["audience"] = audience
    response = await client.post(TOKEN, headers=basic(client_id, secret), data=form)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def test_a_token_issued_for_another_service_is_refused_by_keels_own_apis(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    """Whoever receives a caller's token for ``billing`` cannot replay it at Keel with the
    caller's permissions; a token that names Keel among its audiences still works."""
    await create_role(app, admin.tenant_id, "reader", ["auth:*", "secrets:*"])
    _, client_id, secret = await create_service_account(
        app, admin.tenant_id, "caller", roles=["reader"]
    )
    for_billing = await _token_for(client, client_id, secret, "billing")
    assert jwt.decode(for_billing, options={"verify_signature": False})["aud"] == "billing"
    for path in ("/auth/v1/me", "/auth/v1/roles", "/secrets/v1/secret/data/apps/db"):
        refused = await client.get(path, headers=bearer(for_billing))
        assert refused.status_code in (401, 403), (path, refused.text)
    vault = await client.get(
        "/secrets/v1/secret/data/apps/db", headers={"X-Vault-Token": for_billing}
    )
    assert vault.status_code in (401, 403)

    both = await _token_for(client, client_id, secret, "billing keel")
    assert jwt.decode(both, options={"verify_signature": False})["aud"] == ["billing", "keel"]
    assert (await client.get("/auth/v1/me", headers=bearer(both))).status_code == 200
    default = await _token_for(client, client_id, secret, None)
    assert (await client.get("/auth/v1/me", headers=bearer(default))).status_code == 200

    # Billing itself may still ask Keel whether the token it received is active.
    _, billing_id, billing_secret = await _service_client(app, admin)
    introspected = await _introspect(client, for_billing, basic(billing_id, billing_secret))
    assert introspected["active"] is True
    assert introspected["aud"] == "billing"
