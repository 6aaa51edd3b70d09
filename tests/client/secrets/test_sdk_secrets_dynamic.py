"""``SecretsClient.get_dynamic``: database credentials from Keel's database engine, renewed in
the background at two thirds of their TTL until the role's max TTL, and revoked.

Keel runs in process on SQLite and PostgreSQL; the target database the credentials are for is
a throw-away PostgreSQL database (so every test here needs PostgreSQL). The local server
trusts 127.0.0.1, so the tests prove the issued role exists, logs in, and follows the lease
(its ``VALID UNTIL`` moves with each renewal; it is gone after revocation).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from keel.secrets.engines.database import EXAMPLE_CREATION_STATEMENTS
from keel_client.secrets import DynamicCredential, SecretPermissionDenied, SecretsClient
from tests.client.secrets.sdk_secrets_support import BASE_URL, CountingTransport, member
from tests.support.databases import create_postgres_database, drop_postgres_database, postgres_dsn
from tests.support.tenants import TenantAdmin

pytestmark = pytest.mark.postgres  # the target database is PostgreSQL, whatever Keel runs on

PLUGIN = "postgresql-database-plugin"
#: The role's lease: renewed at 2 s and 4 s; at 4 s only 2 s are left before the max TTL.
# Long enough that a renewal due at two thirds of the TTL still lands before the lease
# ends on a loaded CI machine (with 3 s, one landed a second late and found it expired).
DEFAULT_TTL = 6
MAX_TTL = 12
#: Past the time a fresh credential renews (two thirds of its TTL).
PAST_RENEWAL = DEFAULT_TTL * 2 / 3 + 0.2


@dataclass
class Target:
    admin_dsn: str
    connection_url: str
    issued: list[str] = field(default_factory=list)

    async def valid_until(self, username: str) -> datetime | None:
        """The role's ``VALID UNTIL``; ``None`` when the role does not exist."""
        connection = await asyncpg.connect(self.admin_dsn)
        try:
            row = await connection.fetchrow(
                "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", username
            )
        finally:
            await connection.close()
        return None if row is None else row["rolvaliduntil"]

    async def read_as(self, username: str, password: str) -> list[str]:
        host = self.admin_dsn.rsplit("@", 1)[1]
        connection = await asyncpg.connect(f"postgresql://{username}:{password}@{host}")
        try:
            return [row["name"] for row in await connection.fetch("SELECT name FROM widgets")]
        finally:
            await connection.close()


@pytest.fixture
async def target(postgres_admin_url: str) -> AsyncIterator[Target]:
    name = f"keel_target_{uuid.uuid4().hex[:12]}"
    dsn = postgres_dsn(await create_postgres_database(postgres_admin_url, name))
    host = dsn.rsplit("@", 1)[1]
    found = Target(dsn, f"postgresql://{{{{username}}}}:{{{{password}}}}@{host}")
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE TABLE widgets (name text)")
        await connection.execute("INSERT INTO widgets VALUES ('sprocket')")
    finally:
        await connection.close()
    yield found
    await drop_postgres_database(postgres_admin_url, name)
    # Roles are the cluster's, not the database's: drop any a failed test left behind.
    connection = await asyncpg.connect(postgres_dsn(postgres_admin_url))
    try:
        for username in found.issued:
            await connection.execute(f'DROP ROLE IF EXISTS "{username}"')
    finally:
        await connection.close()


@pytest.fixture
async def database_mount(app: FastAPI, admin: TenantAdmin, target: Target) -> str:
    """A database mount of the tenant with a connection to ``target`` and a role ``reader``."""
    mount = f"db{uuid.uuid4().hex[:8]}"
    calls = [
        (f"sys/mounts/{mount}", {"type": "database"}),
        (
            f"{mount}/config/target",
            {
                "plugin_name": PLUGIN,
                "connection_url": target.connection_url,
                "username": "postgres",
                "password": f"admin-{uuid.uuid4().hex}",
                "allowed_roles": "reader",
            },
        ),
        (
            f"{mount}/roles/reader",
            {
                "db_name": "target",
                "creation_statements": EXAMPLE_CREATION_STATEMENTS,
                "default_ttl": DEFAULT_TTL,
                "max_ttl": MAX_TTL,
            },
        ),
    ]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL) as http:
        for path, body in calls:
            answer = await http.post(
                f"/secrets/v1/{path}", headers={"X-Vault-Token": admin.api_key}, json=body
            )
            assert answer.status_code == 204, answer.text
    return mount


async def issue(secrets: SecretsClient, mount: str, target: Target) -> DynamicCredential:
    credential = await secrets.get_dynamic("reader", mount=mount)
    target.issued.append(credential.username)
    return credential


async def wait_until_done(credential: DynamicCredential, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while credential.is_renewing:
        assert time.monotonic() < deadline, "the renewal did not stop"
        await asyncio.sleep(0.1)


async def test_a_slow_answer_does_not_make_the_renewal_late(
    secrets: SecretsClient,
    transport: CountingTransport,
    database_mount: str,
    target: Target,
) -> None:
    """Keel counts the TTL from its side of the request: a lease counted from the answer
    (3 s late here) would be renewed at 7 s, after Keel let it expire at 6 s.

    The renewal is due 4 s after the request, so Keel must answer within 1 s of it: on the
    loaded CI machine it once took 5.4 s to issue the credential, which then expired before
    its answer arrived. Such a run proves nothing either way and is made again (twice at
    most); a renewal counted from the answer fails every run."""
    delay = 3.0
    transport.delays[("GET", f"/secrets/v1/{database_mount}/creds/reader")] = delay
    for _ in range(3):
        requested, requested_at = time.monotonic(), datetime.now(UTC)
        credential = await issue(secrets, database_mount, target)
        if time.monotonic() - requested < delay + DEFAULT_TTL * 2 / 3 - 0.5:
            break
        await credential.close()  # its lease ended before the answer: Keel drops the login
    assert (credential.expires_at - requested_at).total_seconds() <= DEFAULT_TTL + 0.5
    while credential.renewals == 0:
        assert time.monotonic() < requested + DEFAULT_TTL, "the renewal came too late"
        assert credential.is_renewing, "the renewal was refused: the lease had expired"
        await asyncio.sleep(0.05)
    await credential.revoke()
    assert await target.valid_until(credential.username) is None


async def test_a_lease_is_renewed_at_two_thirds_until_its_max_ttl_then_revoked(
    secrets: SecretsClient,
    transport: CountingTransport,
    database_mount: str,
    target: Target,
) -> None:
    issued_at = datetime.now(UTC)
    credential = await issue(secrets, database_mount, target)

    assert isinstance(credential.password, SecretStr)
    assert credential.password.get_secret_value() not in repr(credential)
    assert credential.lease_id.startswith(f"{database_mount}/creds/reader/")
    assert credential.renewable
    assert credential.lease_duration == DEFAULT_TTL
    assert credential.is_renewing
    assert await target.read_as(credential.username, credential.password.get_secret_value()) == [
        "sprocket"
    ]

    await asyncio.sleep(1.5)  # before two thirds of the TTL: nothing renewed yet
    assert transport.requests[("PUT", "/secrets/v1/sys/leases/renew")] == 0

    await wait_until_done(credential, timeout=MAX_TTL)

    # Renewed at 4 s (a full TTL granted) and at 8 s (capped: 4 s left), then stopped. On a
    # loaded machine the first renewal can land after 6 s, is capped already, and is the last.
    renewals = credential.renewals
    assert renewals in (1, 2)
    # A request per renewal, or more: the client retries one that timed out (a CI run on a
    # loaded machine sent 2 requests for 1 renewal).
    assert transport.requests[("PUT", "/secrets/v1/sys/leases/renew")] >= renewals
    assert credential.lease_duration < DEFAULT_TTL  # the last one was capped at the max TTL
    lease_end = (credential.expires_at - issued_at).total_seconds()
    assert MAX_TTL - 1 <= lease_end <= MAX_TTL + 1
    valid_until = await target.valid_until(credential.username)
    assert valid_until is not None
    assert abs((valid_until - credential.expires_at).total_seconds()) < 2

    await credential.revoke()

    assert credential.is_revoked
    assert credential.is_expired
    assert await target.valid_until(credential.username) is None
    assert transport.requests[("PUT", "/secrets/v1/sys/leases/revoke")] == 1


async def test_closing_stops_renewing_and_leaving_the_block_revokes(
    secrets: SecretsClient,
    transport: CountingTransport,
    database_mount: str,
    target: Target,
) -> None:
    kept = await issue(secrets, database_mount, target)
    await kept.close()
    assert not kept.is_renewing

    async with await issue(secrets, database_mount, target) as scoped:
        assert scoped.is_renewing
        assert await target.valid_until(scoped.username) is not None

    assert scoped.is_revoked
    assert await target.valid_until(scoped.username) is None
    await asyncio.sleep(PAST_RENEWAL)  # of both
    assert transport.requests[("PUT", "/secrets/v1/sys/leases/renew")] == 0
    assert await target.valid_until(kept.username) is not None  # closed, not revoked
    await kept.revoke()


async def test_closing_the_client_stops_its_renewals(
    admin: TenantAdmin,
    transport: CountingTransport,
    database_mount: str,
    target: Target,
) -> None:
    async with SecretsClient(BASE_URL, auth=admin.api_key, transport=transport) as client:
        credential = await issue(client, database_mount, target)
        assert credential.is_renewing
    assert not credential.is_renewing
    renewals = transport.requests[("PUT", "/secrets/v1/sys/leases/renew")]
    await asyncio.sleep(PAST_RENEWAL)
    assert transport.requests[("PUT", "/secrets/v1/sys/leases/renew")] == renewals == 0
    async with SecretsClient(BASE_URL, auth=admin.api_key, transport=transport) as other:
        # A credential outlives its client; revoking takes a client that is open.
        answer = await other.api.put(
            "/secrets/v1/sys/leases/revoke", json={"lease_id": credential.lease_id}
        )
    assert answer.status_code == 204, answer.text


async def test_credentials_need_a_policy_granting_their_path(
    app: FastAPI,
    admin: TenantAdmin,
    transport: CountingTransport,
    database_mount: str,
    target: Target,
) -> None:
    key = await member(app, admin, f'path "{database_mount}/roles/*" {{ capabilities = ["read"] }}')
    async with SecretsClient(BASE_URL, auth=key, transport=transport) as stranger:
        with pytest.raises(SecretPermissionDenied) as refused:
            await stranger.get_dynamic("reader", mount=database_mount)
    assert refused.value.status == 403
    assert f"issue credentials from role {database_mount}/reader" in str(refused.value)
