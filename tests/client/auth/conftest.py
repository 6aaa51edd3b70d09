"""Fixtures of the SDK auth tests: a real ``keel serve`` per module, its accounts, and the
fleet service (see ``fleet_support``)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from keel_client.auth import TokenIntrospector, TokenVerifier
from keel_client.fastapi import KeelAuth
from tests.client.auth.fleet_support import (
    ACCESS_TOKEN_TTL,
    FLEET_AUDIENCE,
    FLEET_URL,
    Client,
    CountingTransport,
    Fleet,
    Keel,
    counting_fetcher,
    fleet_app,
)
from tests.support.keel_cli import invoke_keel
from tests.support.keel_process import keel_env, keel_server


@pytest.fixture(scope="module")
def keel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keel]:
    directory = tmp_path_factory.mktemp("keel")
    env = keel_env(
        KEEL_AUTH__ACCESS_TOKEN_TTL_SECONDS=str(ACCESS_TOKEN_TTL),
        KEEL_AUTH__LOGIN_RATE_PER_IP_PER_MINUTE="1000",
        KEEL_LOG_LEVEL="warning",
    )
    initialised = invoke_keel("init", cwd=directory, env=env)
    assert initialised.returncode == 0, initialised.stderr
    match = re.search(r"admin API key \(shown once, store it now\): (keel_\w+)", initialised.stdout)
    assert match is not None, initialised.stdout
    with keel_server(directory, env) as server:
        yield Keel(server.base_url, match.group(1), directory)


@pytest.fixture(scope="module")
def reader_role(keel: Keel) -> str:
    return keel.create_role(["orders:order:read"])


@pytest.fixture(scope="module")
def admin_role(keel: Keel) -> str:
    return keel.create_role(["orders:*"])


@pytest.fixture(scope="module")
def reader(keel: Keel, reader_role: str) -> Client:
    """A service account allowed to read orders."""
    return keel.create_service_account([reader_role])


@pytest.fixture(scope="module")
def outsider(keel: Keel) -> Client:
    """A service account with no role at all."""
    return keel.create_service_account()


@pytest.fixture
async def fleet(keel: Keel, reader: Client) -> AsyncIterator[Fleet]:
    """The fleet service accepting JWTs for ``orders`` and API keys (introspected with the
    reader service account's own client credentials)."""
    served: list[tuple[str, str, str | None]] = []
    app = fleet_app(served)
    transport = CountingTransport(app)
    skew, cache_skew, fetches = [0.0], [0.0], []
    verifier = TokenVerifier(
        counting_fetcher(keel.base_url, fetches),
        issuer=keel.base_url,
        audience=FLEET_AUDIENCE,
        min_refresh_interval=1.0,
        clock=lambda: time.time() + skew[0],
    )
    introspector = TokenIntrospector(
        keel.base_url,
        auth=keel.credentials(reader).client_authentication(),
        cache_ttl=30.0,
        negative_ttl=5.0,
        clock=lambda: time.monotonic() + cache_skew[0],
        transport=transport,
    )
    keel_auth = KeelAuth(verifier, introspector)
    keel_auth.install(app)
    async with httpx.AsyncClient(transport=transport, base_url=FLEET_URL, timeout=30.0) as http:
        yield Fleet(
            app=app,
            keel_auth=keel_auth,
            verifier=verifier,
            introspector=introspector,
            transport=transport,
            http=http,
            clock_skew=skew,
            cache_clock_skew=cache_skew,
            jwks_fetches=fetches,
            served=served,
        )
    await keel_auth.aclose()
