"""The proxy authorization endpoints (nginx auth_request, Traefik forwardAuth, Envoy
ext_authz) and the rate-limit endpoint, on SQLite and PostgreSQL, against the policy of the
tenant the gateway serves: allowed callers get a Keel-Identity Keel's JWKS verifies, refusals
get the status each proxy understands, a client's Keel-Identity is never echoed, and rate
limits counted for services stay within the caller's tenant."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.gateway.enforcement import GATEWAY_ENFORCEMENT
from keel.settings import GatewaySettings, Settings
from keel_client.edge._identity import IdentityVerifier, InvalidIdentity
from keel_client.edge._ratelimit import RateLimit
from keel_client.edge._remote_limits import KeelLimiterStore
from keel_client.http import BaseAPIClient
from tests.support.keel_process import TEST_MASTER_KEY
from tests.support.logins import login_tokens
from tests.support.tenants import (
    TenantAdmin,
    bearer,
    create_role,
    create_user,
    make_tenant_admin,
)

NGINX = "/gateway/v1/authz/nginx"
TRAEFIK = "/gateway/v1/authz/traefik"
ENVOY = "/gateway/v1/authz/envoy"
HIT = "/gateway/v1/ratelimit/hit"
ISSUER = "http://keel.test"
READ_ORDERS = "orders:orders:read"

POLICY: dict[str, Any] = {
    "upstreams": [{"name": "orders", "targets": [{"url": "http://127.0.0.1:9"}]}],
    "routes": [
        {
            "name": "orders",
            "path": "/orders",
            "upstream": "orders",
            "auth": {"permissions": [READ_ORDERS]},
            "rate_limits": [
                {
                    "name": "per-ip",
                    "algorithm": "fixed_window",
                    "limit": 3,
                    "period_seconds": 3600,
                    "key": "ip",
                }
            ],
        },
        {"name": "public", "path": "/public", "upstream": "orders", "auth": {"mode": "none"}},
    ],
}


@pytest.fixture
def tenant_slug() -> str:
    return f"gw-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(database_url: str, tmp_path: Path, tenant_slug: str) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path / ".keel",
        redis_url=None,
        master_key=TEST_MASTER_KEY,
        public_url=ISSUER,
        gateway=GatewaySettings(tenant=tenant_slug),
    )


@pytest.fixture
async def admin(app: FastAPI, tenant_slug: str) -> TenantAdmin:
    """The served tenant's administrator."""
    return await make_tenant_admin(app, tenant_slug)


@pytest.fixture
async def served(app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin) -> TenantAdmin:
    """The served tenant with :data:`POLICY` written and loaded by the gateway."""
    written = await client.put("/gateway/v1/policy", headers=admin.headers, json=POLICY)
    assert written.status_code == 200, written.text
    assert await app.state.keel.resources[GATEWAY_ENFORCEMENT].reload() in (True, False)
    assert app.state.keel.resources[GATEWAY_ENFORCEMENT].revision == written.json()["revision"]
    return admin


@pytest.fixture
async def reader_token(app: FastAPI, client: httpx.AsyncClient, served: TenantAdmin) -> str:
    """An access token of a user holding the orders route's permission."""
    await create_role(app, served.tenant_id, "order-reader", [READ_ORDERS])
    await create_user(app, served.tenant_id, "reader", roles=["order-reader"])
    return str((await login_tokens(client, served.tenant_slug, "reader"))["access_token"])


@pytest.fixture
async def outsider_token(app: FastAPI, client: httpx.AsyncClient, served: TenantAdmin) -> str:
    """An access token of a user of the tenant without the permission."""
    await create_user(app, served.tenant_id, "outsider")
    return str((await login_tokens(client, served.tenant_slug, "outsider"))["access_token"])


def nginx_headers(
    uri: str, *, method: str = "GET", client_ip: str = "198.51.100.7", **extra: str
) -> dict[str, str]:
    return {
        "X-Original-Method": method,
        "X-Original-URI": uri,
        "X-Original-Host": "shop.example",
        "X-Forwarded-For": client_ip,
        **extra,
    }


def traefik_headers(uri: str, *, client_ip: str = "198.51.100.8", **extra: str) -> dict[str, str]:
    return {
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Uri": uri,
        "X-Forwarded-Host": "shop.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": client_ip,
        **extra,
    }


async def verified_identity(client: httpx.AsyncClient, token: str) -> Mapping[str, Any]:
    jwks = (await client.get("/.well-known/jwks.json")).json()

    async def fetch() -> Mapping[str, Any]:
        return dict(jwks)

    verifier = IdentityVerifier(fetch, issuer=ISSUER, audience="gateway:orders")
    principal = await verifier.verify(token)
    return principal.claims


def assert_problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert body["status"] == status
    return body


class TestAllowed:
    async def test_an_api_key_with_the_permission_gets_a_verified_identity(
        self, client: httpx.AsyncClient, served: TenantAdmin
    ) -> None:
        answer = await client.get(
            NGINX, headers={**nginx_headers("/orders/42?x=1"), **served.headers}
        )
        assert answer.status_code == 200, answer.text
        claims = await verified_identity(client, answer.headers["keel-identity"])
        assert claims["sub"] == served.user_id
        assert claims["tid"] == served.tenant_id
        assert claims["cred"] == "api_key"
        assert answer.headers["x-keel-subject"] == served.user_id
        assert answer.headers["x-keel-tenant"] == served.tenant_id
        assert (
            answer.headers["ratelimit"]
            == '"per-ip";r=2;t=' + answer.headers["ratelimit"].rsplit("t=", 1)[1]
        )

    async def test_an_access_token_with_the_permission_passes_every_flavour(
        self, client: httpx.AsyncClient, reader_token: str
    ) -> None:
        for answer in (
            await client.get(NGINX, headers={**nginx_headers("/orders"), **bearer(reader_token)}),
            await client.get(
                TRAEFIK, headers={**traefik_headers("/orders/1"), **bearer(reader_token)}
            ),
            await client.post(
                f"{ENVOY}/orders/7",
                headers={"Host": "shop.example", **bearer(reader_token)},
            ),
        ):
            assert answer.status_code == 200, answer.text
            claims = await verified_identity(client, answer.headers["keel-identity"])
            assert READ_ORDERS in claims["permissions"]
            assert claims["cred"] == "jwt"

    async def test_the_identity_is_not_accepted_for_another_audience(
        self, client: httpx.AsyncClient, served: TenantAdmin
    ) -> None:
        answer = await client.get(NGINX, headers={**nginx_headers("/orders"), **served.headers})
        jwks = (await client.get("/.well-known/jwks.json")).json()

        async def fetch() -> Mapping[str, Any]:
            return dict(jwks)

        verifier = IdentityVerifier(fetch, issuer=ISSUER, audience="gateway:billing")
        with pytest.raises(InvalidIdentity):
            await verifier.verify(answer.headers["keel-identity"])

    async def test_a_forged_keel_identity_is_never_echoed(
        self, client: httpx.AsyncClient, served: TenantAdmin
    ) -> None:
        forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290In0."
        anonymous = await client.get(
            NGINX, headers={**nginx_headers("/public"), "Keel-Identity": forged}
        )
        assert anonymous.status_code == 200, anonymous.text
        assert "keel-identity" not in anonymous.headers
        signed = await client.get(
            NGINX,
            headers={**nginx_headers("/orders"), **served.headers, "Keel-Identity": forged},
        )
        assert signed.status_code == 200
        assert signed.headers.get_list("keel-identity") != [forged]
        assert forged not in signed.text
        await verified_identity(client, signed.headers["keel-identity"])


class TestRefused:
    async def test_no_credential_is_401_with_a_challenge(
        self, client: httpx.AsyncClient, served: TenantAdmin
    ) -> None:
        for answer in (
            await client.get(NGINX, headers=nginx_headers("/orders")),
            await client.get(TRAEFIK, headers=traefik_headers("/orders")),
        ):
            assert_problem(answer, 401)
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert "keel-identity" not in answer.headers

    @pytest.mark.parametrize(
        "authorization",
        [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer a b",
            "Bearer not-a-jwt",
            "Bearer keel_nope",
            "Bearer \xff\xfe",
        ],
    )
    async def test_a_malformed_authorization_is_401_problem_json(
        self, client: httpx.AsyncClient, served: TenantAdmin, authorization: str
    ) -> None:
        headers = [(k.encode(), v.encode()) for k, v in nginx_headers("/orders").items()]
        headers.append((b"authorization", authorization.encode("latin-1")))
        answer = await client.get(NGINX, headers=headers)
        assert_problem(answer, 401)

    async def test_a_caller_without_the_permission_is_403(
        self, client: httpx.AsyncClient, outsider_token: str
    ) -> None:
        nginx = await client.get(
            NGINX, headers={**nginx_headers("/orders"), **bearer(outsider_token)}
        )
        assert nginx.status_code == 403
        assert nginx.headers["x-keel-status"] == "403"
        traefik = await client.get(
            TRAEFIK, headers={**traefik_headers("/orders"), **bearer(outsider_token)}
        )
        assert "permission" in assert_problem(traefik, 403)["detail"]

    async def test_over_the_limit_nginx_gets_403_with_the_real_status_traefik_gets_429(
        self, client: httpx.AsyncClient, served: TenantAdmin
    ) -> None:
        for _ in range(3):
            passed = await client.get(
                NGINX,
                headers={**nginx_headers("/orders", client_ip="203.0.113.9"), **served.headers},
            )
            assert passed.status_code == 200
        nginx = await client.get(
            NGINX, headers={**nginx_headers("/orders", client_ip="203.0.113.9"), **served.headers}
        )
        assert nginx.status_code == 403
        assert nginx.headers["x-keel-status"] == "429"
        assert int(nginx.headers["retry-after"]) >= 1
        assert "keel-identity" not in nginx.headers

        # Counted by the address the proxy saw (the last X-Forwarded-For entry): another
        # address has its own count, and a spoofed first entry changes nothing.
        other = await client.get(
            NGINX,
            headers={
                **nginx_headers("/orders", client_ip="203.0.113.9, 192.0.2.1"),
                **served.headers,
            },
        )
        assert other.status_code == 200

        for _ in range(3):
            await client.get(
                TRAEFIK,
                headers={**traefik_headers("/orders", client_ip="203.0.113.10"), **served.headers},
            )
        traefik = await client.get(
            TRAEFIK,
            headers={**traefik_headers("/orders", client_ip="203.0.113.10"), **served.headers},
        )
        body = assert_problem(traefik, 429)
        assert body["type"] == "urn:keel:problem:rate-limited"
        assert int(traefik.headers["retry-after"]) >= 1

    async def test_no_route_and_bad_targets_carry_their_status_to_nginx(
        self, client: httpx.AsyncClient, served: TenantAdmin
    ) -> None:
        unrouted = await client.get(NGINX, headers=nginx_headers("/nowhere"))
        assert (unrouted.status_code, unrouted.headers["x-keel-status"]) == (403, "404")
        dotted = await client.get(NGINX, headers=nginx_headers("/orders/../admin"))
        assert (dotted.status_code, dotted.headers["x-keel-status"]) == (403, "400")
        missing = await client.get(NGINX, headers={"X-Original-Method": "GET"})
        assert (missing.status_code, missing.headers["x-keel-status"]) == (403, "400")
        assert_problem(await client.get(TRAEFIK, headers=traefik_headers("/nowhere")), 404)


async def test_decisions_are_counted_by_engine_and_outcome(
    client: httpx.AsyncClient, served: TenantAdmin
) -> None:
    await client.get(NGINX, headers={**nginx_headers("/orders"), **served.headers})
    await client.get(NGINX, headers=nginx_headers("/orders"))
    await client.get(TRAEFIK, headers=traefik_headers("/nowhere"))
    metrics = (await client.get("/metrics")).text
    assert 'keel_gateway_authz_decisions_total{engine="nginx",outcome="allowed"} 1.0' in metrics
    assert (
        'keel_gateway_authz_decisions_total{engine="nginx",outcome="unauthenticated"} 1.0'
        in metrics
    )
    assert 'keel_gateway_authz_decisions_total{engine="traefik",outcome="no_route"} 1.0' in metrics


class TestRateLimitEndpoint:
    RULE: Mapping[str, Any] = {
        "name": "svc",
        "algorithm": "fixed_window",
        "limit": 2,
        "period_seconds": 3600,
    }

    async def test_counts_are_kept_apart_per_tenant(
        self, app: FastAPI, client: httpx.AsyncClient, served: TenantAdmin
    ) -> None:
        key = f"user-{uuid.uuid4().hex}"
        body = {"hits": [{"rule": self.RULE, "key": key}]}
        answers = [
            (await client.post(HIT, headers=served.headers, json=body)).json()["decisions"][0]
            for _ in range(3)
        ]
        assert [answer["allowed"] for answer in answers] == [True, True, False]
        assert answers[2]["retry_after"] >= 1
        assert answers[1]["remaining"] == 0

        other = await make_tenant_admin(app)
        theirs = await client.post(HIT, headers=other.headers, json=body)
        assert theirs.status_code == 200, theirs.text
        assert theirs.json()["decisions"][0] == {
            "allowed": True,
            "remaining": 1,
            "reset_seconds": theirs.json()["decisions"][0]["reset_seconds"],
            "retry_after": None,
            "degraded": False,
        }

    async def test_the_permission_is_needed_and_the_body_is_checked(
        self, client: httpx.AsyncClient, outsider_token: str, served: TenantAdmin
    ) -> None:
        body = {"hits": [{"rule": self.RULE, "key": "k"}]}
        assert (await client.post(HIT, json=body)).status_code == 401
        assert (
            await client.post(HIT, headers=bearer(outsider_token), json=body)
        ).status_code == 403
        too_many = {"hits": [{"rule": self.RULE, "key": "k"}] * 9}
        assert (await client.post(HIT, headers=served.headers, json=too_many)).status_code == 422
        long_key = {"hits": [{"rule": self.RULE, "key": "k" * 513}]}
        assert (await client.post(HIT, headers=served.headers, json=long_key)).status_code == 422

    async def test_keel_limiter_store_counts_through_keel(
        self, app: FastAPI, served: TenantAdmin
    ) -> None:
        rule = RateLimit.model_validate(self.RULE)
        other_rule = RateLimit(name="wide", limit=100, period_seconds=60)
        async with store_for(app, served.headers) as store:
            first = await store.hit(rule, "shared-key")
            both = await store.hit_many([(rule, "shared-key"), (other_rule, "shared-key")])
            third = await store.hit(rule, "shared-key")
        assert (first.allowed, first.remaining) == (True, 1)
        assert [decision.allowed for decision in both] == [True, True]
        assert both[1].rule == other_rule
        assert (third.allowed, third.degraded) == (False, False)

    async def test_keel_limiter_store_fails_by_the_rule_when_refused(
        self, app: FastAPI, outsider_token: str
    ) -> None:
        open_rule = RateLimit(name="open", limit=1, period_seconds=60, fail="open")
        closed_rule = RateLimit(name="closed", limit=1, period_seconds=60, fail="closed")
        async with store_for(app, bearer(outsider_token)) as store:
            decisions = await store.hit_many([(open_rule, "k"), (closed_rule, "k")])
        assert [(d.allowed, d.degraded) for d in decisions] == [(True, True), (False, True)]


class store_for:
    """A KeelLimiterStore talking to the app in this process."""

    def __init__(self, app: FastAPI, headers: Mapping[str, str]) -> None:
        self.api = BaseAPIClient(
            "http://keel.test", headers=headers, transport=httpx.ASGITransport(app=app)
        )

    async def __aenter__(self) -> KeelLimiterStore:
        return KeelLimiterStore(self.api)

    async def __aexit__(self, *_: object) -> None:
        await self.api.aclose()
