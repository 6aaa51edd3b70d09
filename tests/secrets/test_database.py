"""Dynamic PostgreSQL credentials (Vault's database engine) against a real target database.

Keel runs on SQLite and on PostgreSQL: as a real ``keel serve`` driven by ``hvac`` (plus
``keel worker`` on PostgreSQL, where the sweeper runs there), and in process for the policy,
audit, bad-input and database-dump checks. The target is a throw-away PostgreSQL database.

The local PostgreSQL trusts 127.0.0.1, so a login alone does not prove a password: the tests
also check the role's SCRAM verifier against the issued password, and that the role is gone
(it cannot log in at all) after revocation and expiry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import hvac
import pytest
from fastapi import FastAPI
from hvac.exceptions import InvalidRequest
from sqlalchemy import select, text

from keel.core.sealed import sealed_columns
from keel.secrets.engines.database import (
    DEFAULT_REVOCATION_STATEMENTS,
    EXAMPLE_CREATION_STATEMENTS,
    generate_username,
    render_statement,
    retry_delay,
)
from keel.secrets.models import DatabaseConnection
from tests.support.audit import audit_events
from tests.support.databases import (
    create_postgres_database,
    database_for,
    drop_postgres_database,
    postgres_dsn,
)
from tests.support.keel_cli import initialise
from tests.support.keel_process import (
    KEEL,
    KeelServer,
    keel_env,
    keel_server,
    stop_process,
    wait_for,
)
from tests.support.tenants import TenantAdmin, create_api_key, create_role, create_user

pytestmark = pytest.mark.postgres  # the target database is PostgreSQL, whatever Keel runs on

ADMIN_PASSWORD = f"admin-pw-{uuid.uuid4().hex}"
PLUGIN = "postgresql-database-plugin"


# -- the target database ---------------------------------------------------------------------


@dataclass
class Target:
    """A throw-away PostgreSQL database to create users in, and a superuser DSN to inspect it."""

    name: str
    admin_dsn: str
    #: Keel's connection URL for it, with Vault's placeholders.
    connection_url: str
    issued: list[str] = field(default_factory=list)

    def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            connection = await asyncpg.connect(self.admin_dsn)
            try:
                return list(await connection.fetch(sql, *args))
            finally:
                await connection.close()

        return asyncio.run(run())

    def role(self, username: str) -> asyncpg.Record | None:
        rows = self.query(
            "SELECT rolname, rolcanlogin, rolvaliduntil, rolpassword FROM pg_authid "
            "WHERE rolname = $1",
            username,
        )
        return rows[0] if rows else None

    def login(self, username: str, password: str) -> list[asyncpg.Record]:
        """Log in as ``username`` and read the table the example statements grant."""
        self.issued.append(username)

        async def run() -> list[asyncpg.Record]:
            dsn = self.admin_dsn.rsplit("@", 1)[1]
            connection = await asyncpg.connect(
                f"postgresql://{username}:{password}@{dsn}", timeout=5
            )
            try:
                return list(await connection.fetch("SELECT name FROM widgets"))
            finally:
                await connection.close()

        return asyncio.run(run())

    def cannot_log_in(self, username: str) -> bool:
        try:
            self.login(username, "whatever")
        except asyncpg.InvalidAuthorizationSpecificationError:
            return True  # role "…" does not exist
        return False


@pytest.fixture(scope="module")
def target(postgres_admin_url: str) -> Iterator[Target]:
    name = f"keel_target_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(create_postgres_database(postgres_admin_url, name))
    dsn = postgres_dsn(url)
    host = dsn.rsplit("@", 1)[1]
    found = Target(name, dsn, f"postgresql://{{{{username}}}}:{{{{password}}}}@{host}")
    found.query("CREATE TABLE widgets (name text)")
    found.query("INSERT INTO widgets VALUES ('sprocket')")
    try:
        yield found
    finally:
        asyncio.run(drop_postgres_database(postgres_admin_url, name))
        leftovers = {u for u in found.issued if u.startswith("v-")}
        admin = Target("test", postgres_dsn(postgres_admin_url), "")
        for username in leftovers:
            admin.query(f'DROP ROLE IF EXISTS "{username}"')


def scram_matches(verifier: str, password: str) -> bool:
    """Whether PostgreSQL's SCRAM-SHA-256 verifier was made from ``password`` (RFC 5802)."""
    method, rest = verifier.split("$", 1)
    assert method == "SCRAM-SHA-256"
    params, keys = rest.split("$")
    iterations, salt = params.split(":")
    stored_key = keys.split(":")[0]
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key))


# -- Keel served for hvac -----------------------------------------------------------------------


@dataclass
class Keel:
    """``keel serve`` (and ``keel worker`` on PostgreSQL), stoppable and restartable."""

    cwd: Path
    env: dict[str, str]
    with_worker: bool
    admin_key: str = ""
    _stack: contextlib.ExitStack | None = None
    server: KeelServer | None = None

    def start(self) -> None:
        self._stack = contextlib.ExitStack()
        self.server = self._stack.enter_context(keel_server(self.cwd, self.env))
        if self.with_worker:
            log = (self.cwd / f"worker-{time.monotonic_ns()}.log").open("wb")
            self._stack.callback(log.close)
            worker = subprocess.Popen(
                [KEEL, "worker"], cwd=self.cwd, env=self.env, stdout=log, stderr=log
            )
            self._stack.callback(stop_process, worker)

    def stop(self) -> None:
        assert self._stack is not None
        self._stack.close()
        self._stack, self.server = None, None

    def vault(self, token: str | None = None) -> hvac.Client:
        assert self.server is not None
        return hvac.Client(url=f"{self.server.base_url}/secrets", token=token or self.admin_key)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def keel(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Keel]:
    """One Keel per database for the module's hvac tests (each works in a mount of its own)."""
    cwd = tmp_path_factory.mktemp("dynamic")
    request.getfixturevalue("postgres_admin_url")  # the targets are PostgreSQL databases
    with database_for(request, "keel_dyn") as url:
        env = keel_env() if url is None else keel_env(KEEL_DATABASE_URL=url)
        running = Keel(cwd, env, with_worker=url is not None)
        running.admin_key = initialise(cwd, env)
        try:
            running.start()
            yield running
        finally:
            if running.server is not None:
                running.stop()


def database_mount(client: hvac.Client, target: Target, role: str = "reader", **ttls: Any) -> str:
    """A new database mount with a connection to ``target`` and one role; its path."""
    mount = f"db{uuid.uuid4().hex[:8]}"
    client.sys.enable_secrets_engine("database", path=mount)
    client.secrets.database.configure(
        "target",
        PLUGIN,
        allowed_roles=[role],
        connection_url=target.connection_url,
        username="postgres",
        password=ADMIN_PASSWORD,
        mount_point=mount,
    )
    client.secrets.database.create_role(
        role,
        "target",
        EXAMPLE_CREATION_STATEMENTS,
        mount_point=mount,
        **{"default_ttl": "1h", "max_ttl": "2h", **ttls},
    )
    return mount


def seconds_until(moment: datetime) -> float:
    return (moment - datetime.now(UTC)).total_seconds()


# -- through hvac ------------------------------------------------------------------------------


def test_issued_credentials_log_in_until_their_lease_is_revoked(keel: Keel, target: Target) -> None:
    client = keel.vault()
    mount = database_mount(client, target)
    assert client.sys.list_mounted_secrets_engines()["data"][f"{mount}/"]["type"] == "database"
    connection = client.secrets.database.read_connection("target", mount_point=mount)["data"]
    assert connection["connection_details"]["username"] == "postgres"
    assert ADMIN_PASSWORD not in str(connection)
    assert client.secrets.database.list_connections(mount_point=mount)["data"]["keys"] == ["target"]
    role = client.secrets.database.read_role("reader", mount_point=mount)["data"]
    assert (role["default_ttl"], role["max_ttl"], role["db_name"]) == (3600, 7200, "target")
    assert client.secrets.database.list_roles(mount_point=mount)["data"]["keys"] == ["reader"]

    issued = client.secrets.database.generate_credentials("reader", mount_point=mount)
    username, password = issued["data"]["username"], issued["data"]["password"]
    assert issued["lease_id"].startswith(f"{mount}/creds/reader/")
    assert issued["renewable"] is True
    assert issued["lease_duration"] == 3600
    assert username.startswith("v-")
    assert len(username) <= 63
    assert "-reader-" in username

    assert [row["name"] for row in target.login(username, password)] == ["sprocket"]
    stored = target.role(username)
    assert stored is not None
    assert stored["rolcanlogin"]
    assert scram_matches(stored["rolpassword"], password)
    assert not scram_matches(stored["rolpassword"], password + "x")
    assert abs(seconds_until(stored["rolvaliduntil"]) - 3600) < 10  # VALID UNTIL the lease end

    lease = client.sys.read_lease(issued["lease_id"])["data"]
    assert lease["id"] == issued["lease_id"]
    assert 3590 <= lease["ttl"] <= 3600

    client.sys.revoke_lease(issued["lease_id"])
    assert target.role(username) is None
    assert target.cannot_log_in(username)
    assert client.sys.read_lease(issued["lease_id"])["data"]["ttl"] == 0
    client.sys.revoke_lease(issued["lease_id"])  # again: nothing left to do, no error
    with pytest.raises(InvalidRequest, match="revoked"):
        client.sys.renew_lease(issued["lease_id"], increment=60)


def test_renewal_extends_a_lease_but_never_past_its_max_ttl(keel: Keel, target: Target) -> None:
    client = keel.vault()
    mount = database_mount(client, target, default_ttl="20s", max_ttl="1m")
    issued = client.secrets.database.generate_credentials("reader", mount_point=mount)
    username = issued["data"]["username"]
    target.issued.append(username)
    assert issued["lease_duration"] == 20

    renewed = client.sys.renew_lease(issued["lease_id"], increment=40)
    assert renewed["lease_id"] == issued["lease_id"]
    assert renewed["lease_duration"] == 40
    stored = target.role(username)
    assert stored is not None
    assert abs(seconds_until(stored["rolvaliduntil"]) - 40) < 5  # the renew statement ran

    capped = client.sys.renew_lease(issued["lease_id"], increment=3600)
    assert 50 <= capped["lease_duration"] <= 60
    assert capped["warnings"]
    assert "capped" in capped["warnings"][0]
    stored = target.role(username)
    assert stored is not None
    assert abs(seconds_until(stored["rolvaliduntil"]) - capped["lease_duration"]) < 5
    client.sys.revoke_lease(issued["lease_id"])
    assert target.role(username) is None


def test_expired_credentials_are_revoked_by_the_sweeper(keel: Keel, target: Target) -> None:
    client = keel.vault()
    mount = database_mount(client, target, default_ttl=2, max_ttl=10)
    issued = client.secrets.database.generate_credentials("reader", mount_point=mount)
    username, password = issued["data"]["username"], issued["data"]["password"]
    assert target.login(username, password)
    wait_for(
        lambda: target.role(username) is None,
        timeout=15,
        interval=0.3,
        message="the sweeper did not revoke the expired lease",
    )
    assert target.cannot_log_in(username)
    assert client.sys.read_lease(issued["lease_id"])["data"]["ttl"] == 0


def test_expiry_is_honoured_across_a_restart(keel: Keel, target: Target) -> None:
    """Stopped before expiry, started after it: the lease is in the database, so the new
    process's sweeper revokes it."""
    client = keel.vault()
    mount = database_mount(client, target, default_ttl=3, max_ttl=10)
    issued = client.secrets.database.generate_credentials("reader", mount_point=mount)
    username = issued["data"]["username"]
    target.issued.append(username)
    keel.stop()
    stored = target.role(username)
    assert stored is not None
    time.sleep(max(0.0, seconds_until(stored["rolvaliduntil"])) + 1.5)
    # Expired while no Keel ran: nothing swept it (its VALID UNTIL has passed, though).
    still = target.role(username)
    assert still is not None
    assert seconds_until(still["rolvaliduntil"]) < 0
    keel.start()
    wait_for(
        lambda: target.role(username) is None,
        timeout=15,
        interval=0.3,
        message="the restarted Keel did not revoke the lease that expired meanwhile",
    )


# -- in process: policies, audit, bad input, the stored bytes ---------------------------------


def vault(key: str) -> dict[str, str]:
    return {"X-Vault-Token": key}


async def configure(
    client: httpx.AsyncClient, key: str, target: Target, mount: str = "database"
) -> None:
    """A database mount, a connection to ``target`` allowing ``reader``, and ``reader``."""
    calls = [
        (f"sys/mounts/{mount}", {"type": "database"}),
        (
            f"{mount}/config/target",
            {
                "plugin_name": PLUGIN,
                "connection_url": target.connection_url,
                "username": "postgres",
                "password": ADMIN_PASSWORD,
                "allowed_roles": "reader",
            },
        ),
        (
            f"{mount}/roles/reader",
            {"db_name": "target", "creation_statements": EXAMPLE_CREATION_STATEMENTS},
        ),
        (
            f"{mount}/roles/stranger",
            {"db_name": "target", "creation_statements": EXAMPLE_CREATION_STATEMENTS},
        ),
    ]
    for path, body in calls:
        response = await client.post(f"/secrets/v1/{path}", headers=vault(key), json=body)
        assert response.status_code == 204, response.text


async def issue(client: httpx.AsyncClient, key: str, target: Target) -> dict[str, Any]:
    response = await client.get("/secrets/v1/database/creds/reader", headers=vault(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    target.issued.append(body["data"]["username"])
    return body


async def member(app: FastAPI, admin: TenantAdmin, policy: str) -> str:
    role = f"r-{uuid.uuid4().hex[:8]}"
    await create_role(app, admin.tenant_id, role, [f"secrets:policy:{policy}"])
    user = await create_user(app, admin.tenant_id, f"u-{uuid.uuid4().hex[:8]}", roles=[role])
    _, key = await create_api_key(app, admin.tenant_id, user.id)
    return key


async def test_creds_need_read_on_their_path_and_each_denial_is_audited(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin, target: Target
) -> None:
    await configure(client, admin.api_key, target)
    policies = {
        "roles-only": 'path "database/roles/*" { capabilities = ["read"] }',
        "creds": 'path "database/creds/reader" { capabilities = ["read"] }\n'
        'path "sys/leases/renew" { capabilities = ["update"] }',
    }
    for name, hcl in policies.items():
        written = await client.put(
            f"/secrets/v1/sys/policies/acl/{name}",
            headers=vault(admin.api_key),
            json={"policy": hcl},
        )
        assert written.status_code == 204, written.text
    outsider = await member(app, admin, "roles-only")
    insider = await member(app, admin, "creds")

    denied = await client.get("/secrets/v1/database/creds/reader", headers=vault(outsider))
    assert denied.status_code == 403
    assert denied.json() == {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}
    issued = await issue(client, insider, target)
    revoke = await client.put(
        "/secrets/v1/sys/leases/revoke",
        headers=vault(insider),
        json={"lease_id": issued["lease_id"]},
    )
    assert revoke.status_code == 403  # the policy grants renew, not revoke
    renew = await client.put(
        "/secrets/v1/sys/leases/renew",
        headers=vault(insider),
        json={"lease_id": issued["lease_id"]},
    )
    assert renew.status_code == 200, renew.text
    # Vault's older forms, the lease ID in the path.
    lease_id = issued["lease_id"]
    older = await client.put(f"/secrets/v1/sys/renew/{lease_id}", headers=vault(admin.api_key))
    assert older.status_code == 200, older.text
    assert older.json()["lease_id"] == lease_id
    revoked = await client.put(f"/secrets/v1/sys/revoke/{lease_id}", headers=vault(admin.api_key))
    assert revoked.status_code == 204
    assert await asyncio.to_thread(target.cannot_log_in, issued["data"]["username"])

    events = await audit_events(app, admin.tenant_id, action_prefix="secrets.")
    documents = [event.document for event in events if event.document is not None]
    assert len(documents) == len(events)
    denials = sorted(
        (document["action"], document["target"]["id"])
        for document in documents
        if document["outcome"] == "denied"
    )
    assert denials == [
        ("secrets.creds.issue", "database/creds/reader"),
        ("secrets.lease.revoke", "sys/leases/revoke"),
    ]
    actions = {document["action"] for document in documents}
    assert {
        "secrets.db_connection.write",
        "secrets.db_role.write",
        "secrets.creds.issue",
        "secrets.lease.renew",
        "secrets.lease.revoke",
    } <= actions
    assert not any(issued["data"]["password"] in str(document) for document in documents)
    assert not any(ADMIN_PASSWORD in str(document) for document in documents)


async def test_neither_password_is_stored(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin, target: Target
) -> None:
    """The admin password is sealed, the issued one never kept: a dump of Keel's tables holds
    neither (nor their hex), and the sealed password does not open at another name."""
    await configure(client, admin.api_key, target)
    issued = await issue(client, admin.api_key, target)
    secrets = (ADMIN_PASSWORD, issued["data"]["password"])
    async with app.state.keel.database.session() as session:
        connection = await session.connection()
        dump: list[str] = []
        tables = (
            "secrets_db_connections",
            "secrets_db_roles",
            "secrets_leases",
            "secrets_mounts",
            "audit_payloads",
        )
        for table in tables:
            rows = (await connection.execute(text(f"SELECT * FROM {table}"))).all()  # noqa: S608
            dump.extend(repr(row) for row in rows)
    assert any(issued["lease_id"] in row for row in dump)
    for value in secrets:
        assert not any(value in row or value.encode().hex() in row for row in dump)

    # Registered for master key rotation, with associated data that opens the stored value.
    (registered,) = [c for c in sealed_columns() if c.column is DatabaseConnection.password_sealed]
    query = select(registered.primary_key, registered.column, *registered.context).where(
        DatabaseConnection.tenant_id == admin.tenant_id
    )
    for joined, onclause in registered.joins:
        query = query.join(joined, onclause)
    async with app.state.keel.database.session() as session:
        rows = (await session.execute(query.execution_options(all_tenants=True))).all()
    assert len(rows) == 1
    keyring = app.state.keel.keyring
    assert keyring.open(rows[0][1], registered.associated_data(rows[0])) == ADMIN_PASSWORD.encode()


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("sys/mounts/other", {"type": "mysql"}, "secrets engines available"),
        ("database/config/target", {"plugin_name": "mysql-database-plugin"}, "plugin_name"),
        (
            "database/config/down",
            {
                "plugin_name": PLUGIN,
                "connection_url": "postgresql://{{username}}:{{password}}@127.0.0.1:1/x",
                "username": "postgres",
                "password": ADMIN_PASSWORD,
            },
            "error verifying connection",
        ),
        (
            "database/config/inline",
            {
                "plugin_name": PLUGIN,
                "connection_url": f"postgresql://postgres:{ADMIN_PASSWORD}@127.0.0.1/x",
            },
            "{{password}} placeholder",
        ),
        ("database/config/target", {"allowed_roles": 7}, "allowed_roles"),
        ("database/roles/r", {"db_name": "target"}, "creation_statements is required"),
        (
            "database/roles/r",
            {"db_name": "target", "creation_statements": "SELECT 1", "default_ttl": "1y"},
            "invalid duration",
        ),
        (
            "database/roles/r",
            {
                "db_name": "target",
                "creation_statements": ["SELECT 1"],
                "default_ttl": "2h",
                "max_ttl": "1h",
            },
            "greater than max_ttl",
        ),
        ("database/creds/nobody", None, "unknown role: nobody"),
        ("database/creds/stranger", None, '"stranger" is not an allowed role'),
        ("sys/leases/renew", {"lease_id": "database/creds/reader/nope"}, "invalid lease"),
        ("sys/leases/renew", {"lease_id": 5}, "lease_id is required"),
        ("sys/leases/lookup", {"lease_id": "database/creds/reader/nope"}, "invalid lease"),
        (
            "database/roles/broken",
            {
                "db_name": "target",
                "creation_statements": "CREATE ROLE \"{{name}}\" PASSWORD '{{password}}' NONSENSE",
            },
            None,
        ),
    ],
)
async def test_bad_input_gets_a_vault_error_without_the_password(
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    target: Target,
    path: str,
    body: dict[str, Any] | None,
    message: str | None,
) -> None:
    await configure(client, admin.api_key, target)
    url = f"/secrets/v1/{path}"
    if message is None:  # the role is accepted; the database refuses its statement
        written = await client.post(url, headers=vault(admin.api_key), json=body)
        assert written.status_code == 204, written.text
        allow = await client.post(
            "/secrets/v1/database/config/target",
            headers=vault(admin.api_key),
            json={"allowed_roles": "*", "verify_connection": False},
        )
        assert allow.status_code == 204, allow.text
        url, body, message = "/secrets/v1/database/creds/broken", None, "refused"
    if body is None:
        response = await client.get(url, headers=vault(admin.api_key))
    elif path.startswith("sys/leases"):
        response = await client.put(url, headers=vault(admin.api_key), json=body)
    else:
        response = await client.post(url, headers=vault(admin.api_key), json=body)
    assert response.status_code == 400, response.text
    (error,) = response.json()["errors"]
    assert message in error
    assert ADMIN_PASSWORD not in response.text


async def test_kv_calls_do_not_reach_a_database_mount(
    client: httpx.AsyncClient, admin: TenantAdmin, target: Target
) -> None:
    await configure(client, admin.api_key, target)
    written = await client.post(
        "/secrets/v1/database/data/x", headers=vault(admin.api_key), json={"data": {"a": "b"}}
    )
    assert written.status_code == 404
    kv_config = await client.get("/secrets/v1/database/config", headers=vault(admin.api_key))
    assert kv_config.status_code == 404
    # ... and the database calls do not reach a KV mount.
    creds = await client.get("/secrets/v1/secret/creds/reader", headers=vault(admin.api_key))
    assert creds.status_code == 404


# -- pure parts ------------------------------------------------------------------------------


def test_usernames_are_vaults_shape_and_fit_postgresql() -> None:
    moment = datetime(2025, 1, 2, tzinfo=UTC)
    name = generate_username("service_account", "Read.Only-Role", moment)
    display, role, random, unix = name.split("-", 1)[1].rsplit("-", 3)
    assert name.startswith("v-")
    assert len(name) <= 63
    assert (display, role, unix) == ("service_", "read_onl", str(int(moment.timestamp())))
    assert len(random) == 20
    assert random.isalnum()
    assert generate_username("a" * 100, "b" * 100, moment) != name


def test_templates_and_backoff() -> None:
    values = {"name": "v-x", "username": "v-x", "password": "pw", "expiration": "2030-01-01"}
    rendered = render_statement(
        "CREATE ROLE \"{{name}}\" PASSWORD '{{ password }}' VALID UNTIL '{{expiration}}' {{other}}",
        values,
    )
    assert rendered == "CREATE ROLE \"v-x\" PASSWORD 'pw' VALID UNTIL '2030-01-01' {{other}}"
    assert "'v-x'" in render_statement(DEFAULT_REVOCATION_STATEMENTS[0], values)
    delays = [retry_delay(n).total_seconds() for n in (1, 2, 3, 30)]
    assert delays == [5, 10, 20, 600]
