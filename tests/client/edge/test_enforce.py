"""The edge policy applied to requests (``EdgeEnforcer`` and ``EdgeMiddleware``): the checks
the gateway and a service's middleware share, through a real Starlette app.

Tokens are signed with a key made here and verified by the SDK's own ``TokenVerifier``
reading that key's JWKS, so authentication runs exactly as in a service.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute

from keel_client.auth import Authenticator, TokenVerifier
from keel_client.edge._enforce import EdgeEnforcer
from keel_client.edge._middleware import PRINCIPAL_SCOPE_KEY, EdgeMiddleware
from keel_client.edge._model import EdgePolicy
from keel_client.edge._ratelimit import MemoryLimiterStore
from keel_client.http import SSRFPolicy

ISSUER = "https://keel.test"
KEY = Ed25519PrivateKey.generate()
JWK = json.loads(OKPAlgorithm.to_jwk(KEY.public_key())) | {
    "kid": "k1",
    "alg": "EdDSA",
    "use": "sig",
}
OTHER_KEY = Ed25519PrivateKey.generate()


async def fetch_jwks() -> dict[str, Any]:
    return {"keys": [JWK]}


def token(
    *,
    tenant: str = "t1",
    permissions: tuple[str, ...] = (),
    roles: tuple[str, ...] = (),
    aud: str = "orders",
    key: Ed25519PrivateKey = KEY,
    **claims: Any,
) -> str:
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "sub": "user-1",
        "tid": tenant,
        "aud": aud,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "typ": "user",
        "token_use": "access",
        "permissions": list(permissions),
        "roles": list(roles),
        **claims,
    }
    return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": "k1", "typ": "at+jwt"})


def policy(*routes: dict[str, Any]) -> EdgePolicy:
    return EdgePolicy.model_validate({"routes": list(routes)})


@dataclass
class Source:
    """A fixed policy, as an EdgeClient holding one revision would give it."""

    policy: EdgePolicy
    revision: int = 1
    tenant_id: str | None = None

    @property
    def snapshot(self) -> Source:
        return self

    async def start(self) -> None:
        return None


async def echo(request: Request) -> JSONResponse:
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    body = await request.body()
    return JSONResponse(
        {
            "path": request.url.path,
            "subject": principal.subject if principal else None,
            "identity": request.headers.get("keel-identity"),
            "x-added": request.headers.get("x-added"),
            "x-dropped": request.headers.get("x-dropped"),
            "body": len(body),
        },
        headers={"server": "uvicorn", "x-powered-by": "starlette"},
    )


def service(edge_policy: EdgePolicy, **options: Any) -> httpx.AsyncClient:
    app = Starlette(
        routes=[
            StarletteRoute(
                "/{path:path}", echo, methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"]
            )
        ]
    )
    verifier = TokenVerifier(fetch_jwks, issuer=ISSUER, audience=None)
    wrapped = EdgeMiddleware(
        app,
        source=Source(edge_policy),
        authenticator=Authenticator(verifier),
        limiter=options.pop("limiter", MemoryLimiterStore()),
        tenant_id=options.pop("tenant_id", "t1"),
        **options,
    )
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=wrapped), base_url="http://orders.internal"
    )


@pytest.fixture
async def orders() -> AsyncIterator[httpx.AsyncClient]:
    edge = policy(
        {"name": "health", "path": "/health", "auth": {"mode": "none"}},
        {
            "name": "orders",
            "path": "/orders",
            "auth": {"mode": "jwt", "audience": "orders", "permissions": ["orders:order:read"]},
            "rate_limits": [
                {
                    "name": "per-user",
                    "algorithm": "fixed_window",
                    "limit": 3,
                    "period_seconds": 60,
                    "key": "principal",
                }
            ],
            "request_headers": {"set": {"x-added": "yes"}, "remove": ["x-dropped"]},
            "cors": {
                "allow_origins": ["https://app.example.com"],
                "allow_methods": ["GET", "POST"],
                "allow_credentials": True,
            },
            "max_body_bytes": 100,
        },
    )
    async with service(edge) as client:
        yield client


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


async def test_an_unrouted_request_passes_untouched_but_for_a_forged_identity(
    orders: httpx.AsyncClient,
) -> None:
    answer = await orders.get("/elsewhere", headers={"keel-identity": "forged"})
    assert answer.status_code == 200
    assert answer.json()["identity"] is None
    assert answer.headers["server"] == "uvicorn"  # no route, no header profile


async def test_an_anonymous_route_gets_the_security_profile(orders: httpx.AsyncClient) -> None:
    answer = await orders.get("/health")
    assert answer.status_code == 200
    assert "server" not in answer.headers
    assert "x-powered-by" not in answer.headers
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "x-xss-protection" not in answer.headers


@pytest.mark.parametrize(
    "authorization",
    [
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer a b",
        "Bearer not-a-jwt",
        "bearer ....",
        "Bearer \u00e9",
    ],
)
async def test_a_malformed_authorization_header_is_401_problem_json(
    orders: httpx.AsyncClient, authorization: str
) -> None:
    answer = await orders.get("/orders", headers={"authorization": authorization.encode()})
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    problem = answer.json()
    assert problem["type"] == "urn:keel:problem:unauthorized"
    assert problem["status"] == 401
    assert "not-a-jwt" not in answer.text


async def test_tokens_refused_for_signature_tenant_audience_and_kind(
    orders: httpx.AsyncClient,
) -> None:
    good = ("orders:order:read",)
    refused = [
        token(permissions=good, key=OTHER_KEY),
        token(permissions=good, tenant="t2"),
        token(permissions=good, aud="billing"),
        "keel_abc_" + "x" * 40,  # an API key where the route takes only JWTs
    ]
    for credential in refused:
        answer = await orders.get("/orders", headers=bearer(credential))
        assert answer.status_code == 401, credential


async def test_a_missing_permission_is_403(orders: httpx.AsyncClient) -> None:
    answer = await orders.get("/orders", headers=bearer(token(permissions=("orders:order:write",))))
    assert answer.status_code == 403
    assert "orders:order:read" in answer.json()["detail"]


async def test_an_authorised_request_reaches_the_app_with_its_principal_and_transforms(
    orders: httpx.AsyncClient,
) -> None:
    answer = await orders.get(
        "/orders/7",
        headers=bearer(token(permissions=("orders:*",)))
        | {"x-dropped": "1", "keel-identity": "forged"},
    )
    assert answer.status_code == 200
    assert answer.json() == {
        "path": "/orders/7",
        "subject": "user-1",
        "identity": None,
        "x-added": "yes",
        "x-dropped": None,
        "body": 0,
    }
    assert answer.headers["ratelimit-policy"] == '"per-user";q=3;w=60'
    assert answer.headers["ratelimit"].startswith('"per-user";r=2;t=')


async def test_the_principal_limit_counts_per_principal_and_answers_429_with_retry_after(
    orders: httpx.AsyncClient,
) -> None:
    first = bearer(token(permissions=("orders:*",)))
    other = bearer(token(permissions=("orders:*",), sub="user-2"))
    statuses = [(await orders.get("/orders", headers=first)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = await orders.get("/orders", headers=first)
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["type"] == "urn:keel:problem:rate-limited"
    assert (await orders.get("/orders", headers=other)).status_code == 200


async def test_cors_preflight_is_answered_before_credentials_and_actual_responses_carry_the_origin(
    orders: httpx.AsyncClient,
) -> None:
    preflight = await orders.options(
        "/orders",
        headers={"origin": "https://app.example.com", "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert preflight.headers["access-control-allow-methods"] == "GET, POST"
    assert preflight.headers["access-control-max-age"] == "600"
    assert preflight.headers["x-content-type-options"] == "nosniff"  # the route's profile too
    evil = await orders.options(
        "/orders",
        headers={
            "origin": "https://app.example.com.evil.test",
            "access-control-request-method": "POST",
        },
    )
    assert evil.status_code == 403
    assert "access-control-allow-origin" not in evil.headers
    actual = await orders.get(
        "/orders",
        headers=bearer(token(permissions=("orders:*",))) | {"origin": "https://evil.test"},
    )
    assert actual.status_code == 200
    assert "access-control-allow-origin" not in actual.headers
    assert "Origin" in actual.headers["vary"]


async def test_a_body_over_the_limit_is_413_declared_or_streamed(orders: httpx.AsyncClient) -> None:
    credential = bearer(token(permissions=("orders:*",)))
    declared = await orders.post("/orders", headers=credential, content=b"x" * 101)
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"y" * 30

    streamed = await orders.post("/orders", headers=credential, content=chunks())
    assert streamed.status_code == 413
    assert streamed.headers["content-type"] == "application/problem+json"
    fits = await orders.post("/orders", headers=credential, content=b"z" * 100)
    assert fits.status_code == 200
    assert fits.json()["body"] == 100


async def test_dot_segments_are_refused_not_resolved_past_a_route() -> None:
    edge = policy({"name": "admin", "path": "/admin", "auth": {"mode": "jwt"}})
    enforcer = EdgeEnforcer(edge, authenticator=None, limiter=MemoryLimiterStore())
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/public/../admin",
        "headers": [],
        "query_string": b"",
    }
    verdict = await enforcer.check(scope, _no_body)
    assert verdict.refusal is not None
    assert verdict.refusal.status == 400


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def test_ssrf_parameters_are_checked_by_address_not_by_spelling() -> None:
    edge = policy(
        {
            "name": "hooks",
            "path": "/hooks",
            "auth": {"mode": "none"},
            "ssrf": [
                {"location": "json", "name": "targets.*.url", "schemes": ["http", "https"]},
                {"location": "query", "name": "image"},
            ],
        }
    )
    resolver_answers = {"public.example": ["93.184.216.34"], "rebind.example": ["169.254.169.254"]}
    ssrf = SSRFPolicy(resolver=lambda host, port: resolver_answers.get(host, []))
    async with service(edge, ssrf=ssrf) as client:
        ok = await client.post("/hooks", json={"targets": [{"url": "https://public.example/x"}]})
        assert ok.status_code == 200
        assert ok.json()["body"] > 0
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data",
            "https://rebind.example/",
            "file:///etc/passwd",
            "http://localhost:8080/",
        ]:
            refused = await client.post(
                "/hooks", json={"targets": [{"url": "https://public.example/"}, {"url": url}]}
            )
            assert refused.status_code == 400, url
            assert refused.json()["type"] == "urn:keel:problem:ssrf-refused"
        query = await client.get("/hooks", params={"image": "http://0177.0.0.1/"})
        assert query.status_code == 400
        https_only = await client.get("/hooks", params={"image": "http://public.example/"})
        assert https_only.status_code == 400
        not_json = await client.post(
            "/hooks", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 400


async def test_a_route_change_takes_effect_on_the_next_request() -> None:
    source = Source(policy({"name": "open", "path": "/", "auth": {"mode": "none"}}))
    app = Starlette(routes=[StarletteRoute("/{path:path}", echo)])
    wrapped = EdgeMiddleware(app, source=source, authenticator=None, limiter=MemoryLimiterStore())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=wrapped), base_url="http://s"
    ) as client:
        assert (await client.get("/x")).status_code == 200
        source.policy = policy({"name": "closed", "path": "/", "auth": {"mode": "jwt"}})
        source.revision = 2
        assert (await client.get("/x")).status_code == 401


async def test_api_keys_are_counted_under_a_keyed_hash_never_the_key() -> None:
    edge = policy(
        {
            "name": "r",
            "path": "/",
            "auth": {"mode": "none"},
            "rate_limits": [
                {"name": "k", "limit": 5, "period_seconds": 60, "key": "header:x-api-key"}
            ],
        }
    )
    seen: list[str] = []

    class Recording(MemoryLimiterStore):
        async def hit_many(self, rules_and_keys: Any, *, cost: int = 1) -> Any:
            seen.extend(key for _, key in rules_and_keys)
            return await super().hit_many(rules_and_keys, cost=cost)

    enforcer = EdgeEnforcer(edge, authenticator=None, limiter=Recording(), tenant_id="t1")
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"x-api-key", b"abc")],
        "query_string": b"",
        "client": ("10.0.0.1", 1),
    }
    verdict = await enforcer.check(scope, _no_body)
    assert verdict.refusal is None
    assert seen == ["t1:r:h:abc"]


class Unreachable:
    """A policy source whose start fails, as an EdgeClient's does with Keel away and no copy."""

    def __init__(self) -> None:
        self.starts = 0

    @property
    def snapshot(self) -> None:
        return None

    async def start(self) -> None:
        self.starts += 1
        raise ConnectionError("keel is away")


async def test_without_a_policy_requests_are_refused_503_and_its_start_is_retried_later() -> None:
    source = Unreachable()
    app = Starlette(routes=[StarletteRoute("/{path:path}", echo)])
    wrapped = EdgeMiddleware(app, source=source, authenticator=None, limiter=MemoryLimiterStore())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=wrapped), base_url="http://s"
    ) as client:
        answers = [await client.get("/orders") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [503, 503, 503]
    assert answers[0].headers["content-type"] == "application/problem+json"
    assert answers[0].headers["retry-after"] == "5"
    assert source.starts == 1


async def test_the_middleware_refuses_callers_of_another_tenant_than_the_policys() -> None:
    edge = policy({"name": "orders", "path": "/orders", "auth": {"mode": "jwt"}})
    app = Starlette(routes=[StarletteRoute("/{path:path}", echo)])
    verifier = TokenVerifier(fetch_jwks, issuer=ISSUER, audience=None)
    wrapped = EdgeMiddleware(
        app,
        source=Source(edge, tenant_id="t1"),
        authenticator=Authenticator(verifier),
        limiter=MemoryLimiterStore(),
    )
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
        own = await client.get("/orders", headers=bearer(token(tenant="t1")))
        other = await client.get("/orders", headers=bearer(token(tenant="t2")))
    assert own.status_code == 200
    assert other.status_code == 401
