"""Interoperability with independent OAuth/JWT implementations, against a real ``keel serve``.

* Authlib's OAuth 2.0 client: the client credentials grant, and the authorization code grant
  with PKCE (S256) for a public client registered with ``keel auth create-client``; the login
  form is driven with plain httpx, as a browser would, and the redirect is read, not followed.
* PyJWT's ``PyJWKClient``: keys found through ``/.well-known/openid-configuration``, access
  tokens verified with audience and issuer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client, OAuthError

from tests.support.keel_cli import invoke_keel
from tests.support.keel_process import ADMIN_KEY, KeelServer, free_port, keel_env, keel_server

PASSWORD = "plum-Tractor-kettle-47"
_CLIENT_ID = re.compile(r"client_id: (kc_\S+)")
_FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')


@dataclass(frozen=True)
class Deployment:
    server: KeelServer
    admin_key: str
    public_client_id: str
    redirect_uri: str
    discovery: dict[str, Any]

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """``keel init``, a public client made with the CLI, then ``keel serve``."""
    cwd: Path = tmp_path_factory.mktemp("interop")
    env = keel_env()
    initialised = invoke_keel("init", cwd=cwd, env=env)
    assert initialised.returncode == 0, initialised.stderr
    key_match = ADMIN_KEY.search(initialised.stdout)
    assert key_match is not None, initialised.stdout

    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    created = invoke_keel(
        "auth",
        "create-client",
        "Interop app",
        "--redirect-uri",
        redirect_uri,
        "--public",
        cwd=cwd,
        env=env,
    )
    assert created.returncode == 0, created.stderr
    assert "client_secret" not in created.stdout  # a public client has none
    client_match = _CLIENT_ID.search(created.stdout)
    assert client_match is not None, created.stdout

    with keel_server(cwd, env) as server:
        with server.client() as http:
            discovery = http.get("/.well-known/openid-configuration").json()
        yield Deployment(server, key_match.group(1), client_match.group(1), redirect_uri, discovery)


def _verify_with_pyjwt(deployment: Deployment, token: str) -> dict[str, Any]:
    jwks_client = jwt.PyJWKClient(deployment.discovery["jwks_uri"])
    signing_key = jwks_client.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        signing_key.key,
        algorithms=["RS256"],
        audience="keel",
        issuer=deployment.discovery["issuer"],
    )
    return claims


def test_discovery_names_the_served_address_as_issuer(deployment: Deployment) -> None:
    issuer = deployment.server.base_url
    assert deployment.discovery["issuer"] == issuer
    assert deployment.discovery["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert deployment.discovery["authorization_endpoint"] == f"{issuer}/auth/v1/oauth/authorize"
    assert deployment.discovery["code_challenge_methods_supported"] == ["S256"]


def test_authlib_client_credentials_and_pyjwt_verification(deployment: Deployment) -> None:
    with deployment.server.client() as http:
        role = http.post(
            "/auth/v1/roles",
            json={"name": "reader", "permissions": ["auth:user:read"]},
            headers=deployment.admin_headers,
        )
        assert role.status_code == 201, role.text
        account = http.post(
            "/auth/v1/service-accounts",
            json={"name": "interop-robot", "roles": ["reader"]},
            headers=deployment.admin_headers,
        )
        assert account.status_code == 201, account.text
    credentials = account.json()

    with OAuth2Client(
        credentials["client_id"], credentials["client_secret"], timeout=10.0
    ) as oauth:
        token = oauth.fetch_token(
            deployment.discovery["token_endpoint"], grant_type="client_credentials"
        )
        assert token["token_type"] == "Bearer"
        me = oauth.get(f"{deployment.server.base_url}/auth/v1/me")
    assert me.status_code == 200
    assert me.json()["principal_type"] == "service_account"

    claims = _verify_with_pyjwt(deployment, token["access_token"])
    assert claims["sub"] == credentials["id"]
    assert claims["permissions"] == ["auth:user:read"]
    assert claims["client_id"] == credentials["client_id"]

    header, payload, signature = token["access_token"].split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    with pytest.raises(jwt.InvalidSignatureError):
        _verify_with_pyjwt(deployment, forged)
    key = jwt.PyJWKClient(deployment.discovery["jwks_uri"]).get_signing_key_from_jwt(
        token["access_token"]
    )
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token["access_token"], key.key, algorithms=["RS256"], audience="someone-else")


def test_authlib_authorization_code_with_pkce_for_a_public_client(
    deployment: Deployment,
) -> None:
    with deployment.server.client() as http:
        created = http.post(
            "/auth/v1/users",
            json={"username": "olive", "password": PASSWORD},
            headers=deployment.admin_headers,
        )
        assert created.status_code == 201, created.text
    user_id = created.json()["id"]

    with OAuth2Client(
        deployment.public_client_id,
        token_endpoint_auth_method="none",
        redirect_uri=deployment.redirect_uri,
        scope="openid profile",
        code_challenge_method="S256",
        timeout=10.0,
    ) as oauth:
        verifier = generate_token(64)
        url, state = oauth.create_authorization_url(
            deployment.discovery["authorization_endpoint"], code_verifier=verifier
        )
        assert "code_challenge_method=S256" in url

        # The browser: the login page, the form, and the redirect back (read, not followed).
        with httpx.Client(timeout=10.0, follow_redirects=False) as browser:
            page = browser.get(url)
            assert page.status_code == 200, page.text
            form_token = _FORM_TOKEN.search(page.text)
            assert form_token is not None
            answer = browser.post(
                str(page.url.copy_with(query=None)),
                data={
                    "form_token": form_token.group(1),
                    "username": "olive",
                    "password": PASSWORD,
                },
            )
        assert answer.status_code == 302, answer.text
        location = answer.headers["location"]
        assert location.startswith(deployment.redirect_uri + "?")
        assert f"state={state}" in location

        token = oauth.fetch_token(
            deployment.discovery["token_endpoint"],
            authorization_response=location,
            code_verifier=verifier,
        )
        assert token["refresh_token"].startswith("krt_")
        claims = _verify_with_pyjwt(deployment, token["access_token"])
        assert claims["sub"] == user_id
        assert claims["client_id"] == deployment.public_client_id
        assert claims["scope"] == "openid profile"

        userinfo = oauth.get(deployment.discovery["userinfo_endpoint"])
        assert userinfo.status_code == 200
        assert userinfo.json()["preferred_username"] == "olive"

        refreshed = oauth.refresh_token(deployment.discovery["token_endpoint"])
        assert refreshed["access_token"] != token["access_token"]
        assert _verify_with_pyjwt(deployment, refreshed["access_token"])["sub"] == user_id

        # The same code a second time: refused (and what it bought is revoked).
        with pytest.raises(OAuthError, match="invalid_grant"):
            oauth.fetch_token(
                deployment.discovery["token_endpoint"],
                authorization_response=location,
                code_verifier=verifier,
            )
