"""Helpers of the SDK auth tests: the Keel under test and a "fleet service" protected by the SDK.

The Keel server runs the embedded default (SQLite) in a temporary directory, with 30-second
access tokens; ``keel init`` gives the admin API key, and every account the tests use is made
through the HTTP API with it. The fleet service is a small FastAPI app of the tests,
protected by ``keel_client.fastapi`` and served in-process; it fetches JWKS from and
introspects API keys with the real Keel over HTTP.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Request

from keel_client.auth import (
    Principal,
    ServiceCredentials,
    TokenIntrospector,
    TokenVerifier,
)
from keel_client.fastapi import CurrentPrincipal, KeelAuth, require_permission, require_role

ACCESS_TOKEN_TTL = 30
PASSWORD = "plum-Tractor-kettle-47"
FLEET_URL = "http://fleet.test"
#: The audience the fleet service accepts; tokens are asked for it with ``audience=``.
FLEET_AUDIENCE = "orders"


@dataclass(frozen=True)
class Client:
    client_id: str
    client_secret: str
    account_id: str


@dataclass
class Keel:
    """A running Keel and the admin calls the tests need (through its HTTP API)."""

    base_url: str
    admin_key: str
    directory: Path

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        with httpx.Client(base_url=self.base_url, timeout=30.0) as http:
            response = http.request(
                method, path, headers={"Authorization": f"Bearer {self.admin_key}"}, **kwargs
            )
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def create_role(self, permissions: list[str], name: str | None = None) -> str:
        name = name or f"role-{uuid.uuid4().hex[:8]}"
        self._call("POST", "/auth/v1/roles", json={"name": name, "permissions": permissions})
        return name

    def create_service_account(self, roles: Sequence[str] = ()) -> Client:
        created = self._call(
            "POST",
            "/auth/v1/service-accounts",
            json={"name": f"svc-{uuid.uuid4().hex[:8]}", "roles": list(roles)},
        )
        return Client(created["client_id"], created["client_secret"], created["id"])

    def create_user(self, roles: Sequence[str] = ()) -> str:
        username = f"user-{uuid.uuid4().hex[:8]}"
        self._call(
            "POST",
            "/auth/v1/users",
            json={"username": username, "password": PASSWORD, "roles": list(roles)},
        )
        return username

    def create_api_key(self, principal_id: str, principal_type: str) -> tuple[str, str]:
        """``(key id, key)`` of a new API key for a principal."""
        created = self._call(
            "POST",
            "/auth/v1/api-keys",
            json={
                "name": f"key-{uuid.uuid4().hex[:8]}",
                "principal_type": principal_type,
                "principal_id": principal_id,
            },
        )
        return created["id"], created["key"]

    def revoke_api_key(self, key_id: str) -> None:
        self._call("DELETE", f"/auth/v1/api-keys/{key_id}")

    def jwks_kids(self) -> list[str]:
        with httpx.Client(base_url=self.base_url) as http:
            return [key["kid"] for key in http.get("/.well-known/jwks.json").json()["keys"]]

    def credentials(self, client: Client, **options: Any) -> ServiceCredentials:
        return ServiceCredentials(
            self.base_url,
            client_id=client.client_id,
            client_secret=client.client_secret,
            **options,
        )


class CountingTransport(httpx.AsyncBaseTransport):
    """Sends ``fleet.test`` requests to the fleet app in-process and the rest over the network,
    counting requests per path (the tests' view of who called whom)."""

    def __init__(self, app: FastAPI) -> None:
        self.fleet = httpx.ASGITransport(app=app)
        self.network = httpx.AsyncHTTPTransport()
        self.paths: list[str] = []

    def count(self, path: str) -> int:
        return sum(1 for seen in self.paths if seen == path)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.url.host == "fleet.test":
            return await self.fleet.handle_async_request(request)
        return await self.network.handle_async_request(request)

    async def aclose(self) -> None:
        await self.network.aclose()


@dataclass
class Fleet:
    """The fleet service, the verifier's clock and JWKS fetch count, and a client for it."""

    app: FastAPI
    keel_auth: KeelAuth
    verifier: TokenVerifier
    introspector: TokenIntrospector
    transport: CountingTransport
    http: httpx.AsyncClient
    #: Seconds added to the verifier's clock (to see tokens expire without waiting).
    clock_skew: list[float] = field(default_factory=lambda: [0.0])
    #: Seconds added to the introspection cache's clock.
    cache_clock_skew: list[float] = field(default_factory=lambda: [0.0])
    jwks_fetches: list[float] = field(default_factory=list)
    #: (path, subject, jti) of every request a handler served.
    served: list[tuple[str, str, str | None]] = field(default_factory=list)

    async def get(self, path: str, credential: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        return await self.http.get(path, headers=headers)


def fleet_app(served: list[tuple[str, str, str | None]]) -> FastAPI:
    app = FastAPI()

    def record(path: str, principal: Principal) -> dict[str, Any]:
        jti = principal.claims.get("jti")
        served.append((path, principal.subject, jti if isinstance(jti, str) else None))
        return {
            "subject": principal.subject,
            "credential": principal.credential,
            "roles": sorted(principal.roles),
        }

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "pass"}

    @app.get("/orders", dependencies=[require_permission("orders:order:read")])
    async def list_orders(principal: CurrentPrincipal) -> dict[str, Any]:
        return record("/orders", principal)

    @app.delete("/orders/{order_id}")
    async def cancel_order(
        order_id: str, principal: Annotated[Principal, require_role("orders-admin")]
    ) -> dict[str, Any]:
        return record("/orders/cancel", principal)

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        # No dependency: the middleware alone authenticated this request.
        return record("/whoami", request.state.principal)

    return app


def counting_fetcher(base_url: str, fetches: list[float]) -> Any:
    """A JWKS fetcher like ``TokenVerifier.from_url``'s that records when it runs."""

    async def fetch() -> Mapping[str, Any]:
        fetches.append(time.monotonic())
        async with httpx.AsyncClient(timeout=5.0) as http:
            response = await http.get(f"{base_url}/.well-known/jwks.json")
            response.raise_for_status()
            document: Mapping[str, Any] = response.json()
            return document

    return fetch


async def fleet_token(keel: Keel, client: Client, audience: str = FLEET_AUDIENCE) -> str:
    """A fresh client-credentials access token for ``client``."""
    credentials = keel.credentials(client, audience=audience)
    try:
        return await credentials.token()
    finally:
        await credentials.aclose()
