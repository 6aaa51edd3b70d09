"""OAuth 2.0 authorization code flow with PKCE (S256): the login page, its CSRF protection,
RFC 6749 error handling, single-use codes and the token exchange."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pyotp
from fastapi import FastAPI
from sqlalchemy import update

from keel.auth.models import AuthorizationCode
from keel.core.db import utcnow
from keel.core.tenancy import bind_tenant
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.logins import login_tokens
from tests.support.tenants import PASSWORD, TenantAdmin, bearer, create_user

REDIRECT_URI = "http://127.0.0.1:8765/callback"
AUTHORIZE = "/auth/v1/oauth/authorize"
TOKEN = "/auth/v1/oauth/token"
_FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')


def new_verifier() -> str:
    return secrets.token_urlsafe(48)


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def register_client(
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    *,
    public: bool = True,
    name: str = "Example app",
    redirect_uris: list[str] | None = None,
) -> dict[str, Any]:
    response = await client.post(
        "/auth/v1/clients",
        json={"name": name, "redirect_uris": redirect_uris or [REDIRECT_URI], "is_public": public},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def authorize_query(client_id: str, verifier: str, **overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge_of(verifier),
        "code_challenge_method": "S256",
        "state": "xyz-state-123",
        "scope": "openid profile",
        **overrides,
    }
    return {key: value for key, value in params.items() if value is not None}


def form_token_of(page: httpx.Response) -> str:
    match = _FORM_TOKEN.search(page.text)
    assert match is not None, page.text
    return match.group(1)


async def sign_in(
    client: httpx.AsyncClient,
    client_id: str,
    verifier: str,
    username: str,
    password: str = PASSWORD,
    **form: str,
) -> httpx.Response:
    """GET the login page, POST the credentials; the answer (a redirect) is not followed."""
    page = await client.get(AUTHORIZE, params=authorize_query(client_id, verifier))
    assert page.status_code == 200, page.text
    return await client.post(
        AUTHORIZE,
        data={
            "form_token": form_token_of(page),
            "username": username,
            "password": password,
            **form,
        },
    )


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI + "?")
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


async def exchange(
    client: httpx.AsyncClient,
    client_id: str,
    code: str,
    verifier: str,
    redirect_uri: str = REDIRECT_URI,
    **extra: str,
) -> httpx.Response:
    return await client.post(
        TOKEN,
        data={
            "grant_type": "authorization_code",
            "client_id": client_id,
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            **extra,
        },
    )


async def code_for(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin, username: str
) -> tuple[str, str, str]:
    """A public client, a user and a fresh code: ``(client_id, code, verifier)``."""
    registered = await register_client(client, admin)
    await create_user(app, admin.tenant_id, username)
    verifier = new_verifier()
    params = redirect_params(await sign_in(client, registered["client_id"], verifier, username))
    return registered["client_id"], params["code"], verifier


# -- the happy path ---------------------------------------------------------------------------


async def test_signing_in_redirects_with_a_code_and_the_state_and_the_code_buys_tokens(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    registered = await register_client(client, admin)
    assert registered["client_secret"] is None
    user = await create_user(app, admin.tenant_id, "anna")
    verifier = new_verifier()

    page = await client.get(AUTHORIZE, params=authorize_query(registered["client_id"], verifier))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Sign in to Example app" in page.text
    assert "<script" not in page.text
    assert "script-src" not in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"

    answer = await client.post(
        AUTHORIZE,
        data={"form_token": form_token_of(page), "username": "anna", "password": PASSWORD},
    )
    params = redirect_params(answer)
    assert params["state"] == "xyz-state-123"
    assert params["iss"] == "http://keel.test"
    assert params["code"].startswith("kac_")

    tokens = await exchange(client, registered["client_id"], params["code"], verifier)
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    assert body["token_type"] == "Bearer"
    assert body["refresh_token"]
    assert tokens.headers["cache-control"] == "no-store"
    me = await client.get("/auth/v1/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["subject"] == user.id
    introspected = await client.post(
        "/auth/v1/oauth/introspect", data={"token": body["access_token"]}, headers=admin.headers
    )
    assert introspected.json()["client_id"] == registered["client_id"]


async def test_the_refresh_token_is_bound_to_the_client(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    client_id, code, verifier = await code_for(app, client, admin, "bert")
    other = await register_client(client, admin, name="Other app")
    refresh_token = (await exchange(client, client_id, code, verifier)).json()["refresh_token"]

    as_other = await client.post(
        TOKEN,
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": other["client_id"],
        },
    )
    assert as_other.status_code == 400
    assert as_other.json()["error"] == "invalid_grant"
    without_client = await client.post("/auth/v1/refresh", json={"refresh_token": refresh_token})
    assert without_client.status_code == 401
    as_owner = await client.post(
        TOKEN,
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": client_id,
        },
    )
    assert as_owner.status_code == 200, as_owner.text


async def test_a_confidential_client_must_authenticate_to_exchange_its_code(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    registered = await register_client(client, admin, public=False)
    secret = registered["client_secret"]
    assert secret
    await create_user(app, admin.tenant_id, "cora")
    verifier = new_verifier()
    code = redirect_params(await sign_in(client, registered["client_id"], verifier, "cora"))["code"]

    unauthenticated = await exchange(client, registered["client_id"], code, verifier)
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"] == "invalid_client"
    authenticated = await client.post(
        TOKEN,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        auth=(registered["client_id"], secret),
    )
    assert authenticated.status_code == 200, authenticated.text


async def test_a_user_with_mfa_signs_in_with_a_code(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    registered = await register_client(client, admin)
    await create_user(app, admin.tenant_id, "dora")
    headers = bearer((await login_tokens(client, admin.tenant_slug, "dora"))["access_token"])
    secret = (await client.post("/auth/v1/mfa/totp", headers=headers)).json()["secret"]
    totp = pyotp.TOTP(secret)
    now = time.time()
    if 30 - now % 30 < 3:  # keep the codes inside one step of the server's clock
        await asyncio.sleep(3.1)
        now = time.time()
    confirmed = await client.post(
        "/auth/v1/mfa/totp/confirm", json={"code": totp.at(now - 30)}, headers=headers
    )
    assert confirmed.status_code == 200

    verifier = new_verifier()
    without_code = await sign_in(client, registered["client_id"], verifier, "dora")
    assert without_code.status_code == 401
    assert "Enter the code from your authenticator app." in without_code.text
    with_code = await sign_in(
        client, registered["client_id"], verifier, "dora", totp_code=totp.at(now)
    )
    assert "code" in redirect_params(with_code)


# -- PKCE -------------------------------------------------------------------------------------


async def test_a_wrong_code_verifier_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    client_id, code, _ = await code_for(app, client, admin, "emil")
    response = await exchange(client, client_id, code, new_verifier())
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    missing = await client.post(
        TOKEN,
        data={
            "grant_type": "authorization_code",
            "client_id": client_id,
            "code": code,
            "redirect_uri": REDIRECT_URI,
        },
    )
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"


async def test_the_plain_method_is_refused_with_a_redirect_carrying_the_state(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    registered = await register_client(client, admin)
    verifier = new_verifier()
    response = await client.get(
        AUTHORIZE,
        params=authorize_query(
            registered["client_id"],
            verifier,
            code_challenge=verifier,
            code_challenge_method="plain",
        ),
    )
    params = redirect_params(response)
    assert params["error"] == "invalid_request"
    assert "S256" in params["error_description"]
    assert params["state"] == "xyz-state-123"
    assert "code" not in params


async def test_a_missing_code_challenge_is_refused(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    registered = await register_client(client, admin)
    for overrides in ({"code_challenge": None}, {"code_challenge_method": None}):
        response = await client.get(
            AUTHORIZE, params=authorize_query(registered["client_id"], new_verifier(), **overrides)
        )
        assert redirect_params(response)["error"] == "invalid_request"


async def test_an_unsupported_response_type_is_refused(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    registered = await register_client(client, admin)
    response = await client.get(
        AUTHORIZE,
        params=authorize_query(registered["client_id"], new_verifier(), response_type="token"),
    )
    assert redirect_params(response)["error"] == "unsupported_response_type"


# -- never redirect to an untrusted place -----------------------------------------------------


async def test_an_unregistered_redirect_uri_shows_an_error_page_and_redirects_nowhere(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    registered = await register_client(client, admin)
    for redirect_uri in (
        "http://127.0.0.1:8765/callback/../evil",
        "http://127.0.0.1:8765/callback?x=1",
        "https://evil.example/callback",
        None,
    ):
        response = await client.get(
            AUTHORIZE,
            params=authorize_query(
                registered["client_id"], new_verifier(), redirect_uri=redirect_uri
            ),
        )
        assert response.status_code == 400
        assert "location" not in response.headers
        assert "redirect URI" in response.text


async def test_an_unknown_client_shows_an_error_page(client: httpx.AsyncClient) -> None:
    response = await client.get(AUTHORIZE, params=authorize_query("kc_unknown", new_verifier()))
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "unauthorized_client" in response.text


async def test_a_service_accounts_client_cannot_use_the_authorization_endpoint(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    created = await client.post(
        "/auth/v1/service-accounts", json={"name": "batch"}, headers=admin.headers
    )
    response = await client.get(
        AUTHORIZE, params=authorize_query(created.json()["client_id"], new_verifier())
    )
    assert response.status_code == 400
    assert "location" not in response.headers


async def test_a_repeated_parameter_is_refused(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    registered = await register_client(client, admin)
    query = urlencode(authorize_query(registered["client_id"], new_verifier()))
    response = await client.get(f"{AUTHORIZE}?{query}&state=second")
    assert redirect_params(response)["error"] == "invalid_request"
    twice = await client.get(f"{AUTHORIZE}?{query}&redirect_uri=https://evil.example/")
    assert twice.status_code == 400
    assert "location" not in twice.headers


async def test_the_page_escapes_what_it_shows(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    registered = await register_client(client, admin, name='<script>alert("x")</script>')
    page = await client.get(
        AUTHORIZE, params=authorize_query(registered["client_id"], new_verifier())
    )
    assert "<script>" not in page.text
    assert "&lt;script&gt;" in page.text


# -- codes are single use ---------------------------------------------------------------------


async def test_a_reused_code_is_refused_and_revokes_the_tokens_it_bought(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    client_id, code, verifier = await code_for(app, client, admin, "finn")
    first = (await exchange(client, client_id, code, verifier)).json()

    second = await exchange(client, client_id, code, verifier)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    me = await client.get("/auth/v1/me", headers=bearer(first["access_token"]))
    assert me.status_code == 401
    refreshed = await client.post(
        TOKEN,
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": client_id,
        },
    )
    assert refreshed.status_code == 400

    events = await audit_events(app, admin.tenant_id, action_prefix="auth.token.issue")
    assert "code_reuse" in {event.reason for event in events}


async def test_an_expired_code_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    client_id, code, verifier = await code_for(app, client, admin, "gwen")
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        await session.execute(
            update(AuthorizationCode).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    response = await exchange(client, client_id, code, verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_the_code_is_bound_to_its_redirect_uri_and_client(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    client_id, code, verifier = await code_for(app, client, admin, "hugo")
    other = await register_client(client, admin, name="Other app")
    wrong_uri = await exchange(client, client_id, code, verifier, "http://127.0.0.1:8765/other")
    assert wrong_uri.status_code == 400
    assert wrong_uri.json()["error"] == "invalid_grant"
    wrong_client = await exchange(client, other["client_id"], code, verifier)
    assert wrong_client.status_code == 400
    assert wrong_client.json()["error"] == "invalid_grant"
    assert (await exchange(client, client_id, code, verifier)).status_code == 200


# -- the login form ---------------------------------------------------------------------------


async def test_the_form_post_needs_its_form_token_from_this_browser(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    registered = await register_client(client, admin)
    await create_user(app, admin.tenant_id, "iris")
    page = await client.get(
        AUTHORIZE, params=authorize_query(registered["client_id"], new_verifier())
    )
    token = form_token_of(page)
    credentials = {"username": "iris", "password": PASSWORD}

    missing = await client.post(AUTHORIZE, data=credentials)
    assert missing.status_code == 400
    assert "location" not in missing.headers

    payload, _, signature = token.partition(".")
    tampered = await client.post(
        AUTHORIZE, data={**credentials, "form_token": f"{payload}x.{signature}"}
    )
    assert tampered.status_code == 400
    assert "location" not in tampered.headers

    # Another browser (no cookie of this one) cannot submit this form.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keel.test") as other:
        cross = await other.post(AUTHORIZE, data={**credentials, "form_token": token})
    assert cross.status_code == 400
    assert "location" not in cross.headers

    genuine = await client.post(AUTHORIZE, data={**credentials, "form_token": token})
    assert genuine.status_code == 302


async def test_the_browser_cookie_is_http_only_and_same_site_strict(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    registered = await register_client(client, admin)
    page = await client.get(
        AUTHORIZE, params=authorize_query(registered["client_id"], new_verifier())
    )
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert f"path={AUTHORIZE}" in cookie


async def test_wrong_credentials_show_the_form_again_and_are_audited(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    registered = await register_client(client, admin)
    await create_user(app, admin.tenant_id, "jack")
    answer = await sign_in(
        client, registered["client_id"], new_verifier(), "jack", "wrong-password-9"
    )
    assert answer.status_code == 401
    assert "location" not in answer.headers
    assert "Invalid username, password or code." in answer.text
    assert 'value="jack"' in answer.text
    assert "wrong-password-9" not in answer.text
    form_token_of(answer)  # a fresh form to try again

    events = await audit_events(app, admin.tenant_id, action_prefix="auth.session.login")
    assert [event.reason for event in events] == ["bad_password"]


# -- registration and discovery ---------------------------------------------------------------


async def test_registering_a_client_needs_the_permission(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await create_user(app, admin.tenant_id, "kurt")
    tokens = await login_tokens(client, admin.tenant_slug, "kurt")
    response = await client.post(
        "/auth/v1/clients",
        json={"name": "x", "redirect_uris": [REDIRECT_URI]},
        headers=bearer(tokens["access_token"]),
    )
    assert response.status_code == 403
    invalid = await client.post(
        "/auth/v1/clients",
        json={"name": "x", "redirect_uris": ["javascript:alert(1)"]},
        headers=admin.headers,
    )
    assert invalid.status_code == 422
    too_long = await client.post(
        "/auth/v1/clients",
        json={"name": "x", "redirect_uris": ["https://a.example/" + "a" * 2000]},
        headers=admin.headers,
    )
    assert too_long.status_code == 422


async def test_discovery_advertises_the_authorization_code_flow(client: httpx.AsyncClient) -> None:
    document = (await client.get("/.well-known/openid-configuration")).json()
    assert document["authorization_endpoint"] == "http://keel.test/auth/v1/oauth/authorize"
    assert document["response_types_supported"] == ["code"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert "authorization_code" in document["grant_types_supported"]
    assert "none" in document["token_endpoint_auth_methods_supported"]
