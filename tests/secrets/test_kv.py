"""The KV engine over its Vault API, on SQLite and PostgreSQL: sealed storage, tampering, the
policy matrix with every denial audited, tenants apart, and bad input."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text

from keel.core.tenancy import bind_tenant
from keel.secrets.engines.policies import allowed, parse_policy
from keel.secrets.models import SecretVersion
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.secrets_api import DATA, member, put_policy, vault, write
from tests.support.tenants import (
    TenantAdmin,
    make_tenant_admin,
)


async def test_no_value_reaches_the_database_and_a_flipped_byte_fails_clearly(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    secret_value = f"s3cr3t-{uuid.uuid4().hex}"
    written = await write(client, admin.api_key, "apps/db", {"password": secret_value})
    assert written.status_code == 200, written.text

    async with unit_of_work(app) as session:
        connection = await session.connection()
        dump = []
        for table in ("secrets_versions", "secrets_secrets", "secrets_mounts", "audit_payloads"):
            rows = (await connection.execute(text(f"SELECT * FROM {table}"))).all()  # noqa: S608
            dump.extend(repr(row) for row in rows)
    assert dump
    assert not any(secret_value in row for row in dump)
    assert not any(secret_value.encode().hex() in row for row in dump)

    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        row = await session.scalar(
            select(SecretVersion).where(SecretVersion.tenant_id == admin.tenant_id)
        )
        assert row is not None
        assert row.sealed is not None
        tampered = bytearray(row.sealed)
        tampered[-5] ^= 0x01
        row.sealed = bytes(tampered)

    read = await client.get(f"{DATA}/apps/db", headers=vault(admin.api_key))
    assert read.status_code == 500
    (message,) = read.json()["errors"]
    assert "does not open" in message
    assert secret_value not in read.text


async def test_a_version_moved_to_another_path_does_not_open(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    """The associated data binds a ciphertext to its tenant, mount, path and version."""
    await write(client, admin.api_key, "a", {"v": "of a"})
    await write(client, admin.api_key, "b", {"v": "of b"})
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        versions = list(
            await session.scalars(
                select(SecretVersion).where(SecretVersion.tenant_id == admin.tenant_id)
            )
        )
        assert len(versions) == 2
        versions[1].sealed = versions[0].sealed
    answers = [
        await client.get(f"{DATA}/{path}", headers=vault(admin.api_key)) for path in ("a", "b")
    ]
    assert sorted(answer.status_code for answer in answers) == [200, 500]


POLICY = """
path "secret/data/apps/billing/*" { capabilities = ["read", "create", "update"] }
path "secret/data/apps/billing/root" { capabilities = ["deny"] }
path "secret/data/apps/+/shared" { capabilities = ["read"] }
path "secret/metadata/apps/*" { capabilities = ["list"] }
"""


#: ``(method, path under secret/, allowed)`` for a member holding only ``POLICY``.
MATRIX = [
    ("GET", "data/apps/billing/db", True),
    ("POST", "data/apps/billing/db", True),
    ("GET", "data/apps/billing/root", False),  # deny wins over the glob's read
    ("POST", "data/apps/billing/root", False),
    ("GET", "data/apps/web/db", False),  # outside every rule: denied by default
    ("GET", "data/apps/web/shared", True),  # + is one segment
    ("GET", "data/apps/web/x/shared", False),  # ... and not two
    ("GET", "data/apps/billing", False),  # the glob's prefix is not under it
    ("DELETE", "data/apps/billing/db", False),  # no delete capability
    ("LIST", "metadata/apps/billing", True),
    ("GET", "metadata/apps/billing/db", False),  # list is not read
]


async def test_policy_matrix(app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin) -> None:
    """Every case of ``MATRIX``; each refusal is a Vault 403 and a ``denied`` audit event."""
    secrets = ("apps/billing/db", "apps/billing/root", "apps/web/db", "apps/web/shared")
    for secret in (*secrets, "apps/web/x/shared"):
        await write(client, admin.api_key, secret, {"k": "v"})
    await put_policy(client, admin, "billing", POLICY)
    key = await member(app, admin, "billing")
    outcomes = {}
    for method, path, _ in MATRIX:
        url = f"/secrets/v1/secret/{path}"
        if method == "LIST":
            response = await client.get(url, params={"list": "true"}, headers=vault(key))
        elif method == "POST":
            response = await client.post(url, headers=vault(key), json={"data": {"k": "new"}})
        else:
            response = await client.request(method, url, headers=vault(key))
        outcomes[(method, path)] = response
    expected = {(method, path): allowed_ for method, path, allowed_ in MATRIX}
    assert {case: answer.status_code in (200, 204) for case, answer in outcomes.items()} == (
        expected
    )
    refusals = [answer for case, answer in outcomes.items() if not expected[case]]
    assert {answer.status_code for answer in refusals} == {403}
    assert all(
        answer.json() == {"errors": ["1 error occurred:\n\t* permission denied\n\n"]}
        for answer in refusals
    )
    denied = [
        event
        for event in await audit_events(app, admin.tenant_id, action_prefix="secrets.")
        if event.document["outcome"] == "denied"
    ]
    assert sorted(event.document["target"]["id"] for event in denied) == sorted(
        f"secret/{path}" for method, path, allowed_ in MATRIX if not allowed_
    )


async def test_every_access_is_audited_without_its_value(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    value = f"v-{uuid.uuid4().hex}"
    await write(client, admin.api_key, "apps/x", {"token": value})
    await client.get(f"{DATA}/apps/x", headers=vault(admin.api_key))
    await client.get(
        "/secrets/v1/secret/metadata/apps", params={"list": "true"}, headers=vault(admin.api_key)
    )
    await client.delete(f"{DATA}/apps/x", headers=vault(admin.api_key))
    events = await audit_events(app, admin.tenant_id, action_prefix="secrets.")
    # Reads are in the log at once, changes a moment after their commit: compare as a set.
    actions = sorted(event.document["action"] for event in events)
    expected = ["secrets.kv.delete", "secrets.kv.list", "secrets.kv.read", "secrets.kv.write"]
    assert actions == expected
    assert {event.document["target"]["id"] for event in events} >= {"secret/data/apps/x"}
    assert not any(value in str(event.document) for event in events)


async def test_tenants_see_only_their_own_secrets(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    other = await make_tenant_admin(app)
    await write(client, admin.api_key, "shared/name", {"owner": "a"})
    assert (
        await client.get(f"{DATA}/shared/name", headers=vault(other.api_key))
    ).status_code == 404
    await write(client, other.api_key, "shared/name", {"owner": "b"})
    mine = await client.get(f"{DATA}/shared/name", headers=vault(admin.api_key))
    theirs = await client.get(f"{DATA}/shared/name", headers=vault(other.api_key))
    assert mine.json()["data"]["data"] == {"owner": "a"}
    assert theirs.json()["data"]["data"] == {"owner": "b"}
    # A policy of one tenant is not held by a same-named role of another.
    await put_policy(client, admin, "all", 'path "secret/*" { capabilities = ["read"] }')
    outsider = await member(app, other, "all")
    denied = await client.get(f"{DATA}/shared/name", headers=vault(outsider))
    assert denied.status_code == 403


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "message"),
    [
        ("POST", f"{DATA}/a/%2e%2e/b", {"data": {}}, 400, "invalid path segment"),
        ("POST", f"{DATA}/a", {"data": "not an object"}, 400, "no data provided"),
        ("POST", f"{DATA}/a", {"data": {}, "options": {"cas": -1}}, 400, "cas"),
        ("POST", f"{DATA}/a", [1, 2], 400, "JSON object"),
        ("GET", f"{DATA}/a?version=x", None, 400, "version"),
        ("POST", "/secrets/v1/secret/destroy/a", {"versions": ["1"]}, 400, "versions"),
        ("POST", "/secrets/v1/secret/metadata/a", {"max_versions": "ten"}, 400, "max_versions"),
        ("POST", "/secrets/v1/secret/metadata/a", {"delete_version_after": "1y"}, 400, "duration"),
        ("GET", "/secrets/v1/nomount/data/a", None, 404, None),
        ("PUT", "/secrets/v1/sys/policies/acl/p", {"policy": "path {"}, 400, "parse"),
        (
            "PUT",
            "/secrets/v1/sys/policies/acl/p",
            {"policy": 'path "x/*" { capabilities = ["fly"] }'},
            400,
            "unknown capabilities",
        ),
        ("POST", "/secrets/v1/sys/mounts/Bad Mount", {"type": "kv"}, 400, "mount path"),
        ("POST", "/secrets/v1/sys/mounts/m2", {"type": "kv", "options": "v2"}, 400, "options"),
        ("PUT", "/secrets/v1/sys/mounts/m3", {"type": "kv", "options": True}, 400, "options"),
    ],
)
async def test_bad_input_gets_a_vault_error(
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    method: str,
    url: str,
    body: Any,
    status: int,
    message: str | None,
) -> None:
    response = await client.request(method, url, headers=vault(admin.api_key), json=body)
    assert response.status_code == status, response.text
    errors = response.json()["errors"]
    if message is None:
        assert errors == []
    else:
        assert len(errors) == 1
        assert message in errors[0]


async def test_patching_metadata_merges_custom_metadata(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await write(client, admin.api_key, "m", {"k": "v"})
    url = "/secrets/v1/secret/metadata/m"
    headers = vault(admin.api_key)
    await client.post(url, headers=headers, json={"custom_metadata": {"a": "1", "b": "2"}})
    await client.patch(url, headers=headers, json={"custom_metadata": {"b": None, "c": "3"}})
    metadata = (await client.get(url, headers=headers)).json()["data"]
    assert metadata["custom_metadata"] == {"a": "1", "c": "3"}


def test_policy_globs() -> None:
    rules = parse_policy(
        '{"path": {"secret/data/a/*": {"capabilities": ["read"]},'
        ' "secret/data/+/b": {"capabilities": ["update"]}}}'
    )
    assert allowed(rules, "secret/data/a/x/y", "read")
    assert allowed(rules, "secret/data/a/", "read")
    assert not allowed(rules, "secret/data/a", "read")
    assert allowed(rules, "secret/data/z/b", "update")
    assert not allowed(rules, "secret/data/z/y/b", "update")
    assert not allowed(rules, "secret/data/a/x", "delete")


async def test_every_change_is_read_at_once_though_reads_are_cached(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    """Reads keep the sealed version for a moment (keel.secrets.engines.kv._ROWS); every change
    through Keel drops it when it commits, and a change behind Keel's back (a tampered
    ciphertext) shows within the cache's lifetime."""
    path = f"apps/cached-{uuid.uuid4().hex[:8]}"
    url = f"{DATA}/{path}"
    metadata_url = url.replace("/data/", "/metadata/")
    headers = vault(admin.api_key)

    async def read(**params: Any) -> httpx.Response:
        return await client.get(url, headers=headers, params=params)

    assert (await write(client, admin.api_key, path, {"v": "1"})).status_code == 200
    assert (await read()).json()["data"]["data"] == {"v": "1"}
    assert (await write(client, admin.api_key, path, {"v": "2"})).status_code == 200
    assert (await read()).json()["data"]["data"] == {"v": "2"}
    assert (await read(version=1)).json()["data"]["data"] == {"v": "1"}

    changed = await client.post(
        metadata_url, headers=headers, json={"custom_metadata": {"owner": "billing"}}
    )
    assert changed.status_code == 204, changed.text
    assert (await read()).json()["data"]["metadata"]["custom_metadata"] == {"owner": "billing"}

    assert (await client.delete(url, headers=headers)).status_code == 204
    assert (await read()).status_code == 404
    undeleted = await client.post(
        url.replace("/data/", "/undelete/"), headers=headers, json={"versions": [2]}
    )
    assert undeleted.status_code == 204
    assert (await read()).json()["data"]["data"] == {"v": "2"}
    destroyed = await client.post(
        url.replace("/data/", "/destroy/"), headers=headers, json={"versions": [1]}
    )
    assert destroyed.status_code == 204
    assert (await read(version=1)).status_code == 404

    async with unit_of_work(app) as session:  # behind Keel's back
        bind_tenant(session, admin.tenant_id)
        row = await session.scalar(
            select(SecretVersion)
            .where(SecretVersion.tenant_id == admin.tenant_id, SecretVersion.version == 2)
            .order_by(SecretVersion.created_at.desc())
        )
        assert row is not None
        assert row.sealed is not None
        row.sealed = row.sealed[:-5] + bytes([row.sealed[-5] ^ 1]) + row.sealed[-4:]
    answers = [(await read()).status_code]  # may still be the cached row, for at most 2 s
    await asyncio.sleep(2.1)
    answer = await read()
    assert answers[0] in (200, 500)
    assert answer.status_code == 500
    assert "does not open" in answer.json()["errors"][0]


async def test_vault_writes_at_once_are_upserts_and_none_fails(
    app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    """Vault's writes create or update: requests that each find the AppRole, the metadata or
    the first version missing all land, one creating and the others updating, instead of
    the losers of the unique key answering an error. A check-and-set still holds."""
    keys = [admin.api_key] + [
        (await make_tenant_admin(app, admin.tenant_slug)).api_key for _ in range(4)
    ]

    async def each(method: str, url: str, body: dict[str, Any]) -> list[int]:
        answers = await asyncio.gather(
            *(client.request(method, url, headers=vault(key), json=body) for key in keys)
        )
        return sorted(answer.status_code for answer in answers)

    assert (
        await each("POST", "/secrets/v1/auth/approle/role/billing", {"token_policies": ["p1"]})
        == [204] * 5
    )
    assert (
        await each("POST", "/secrets/v1/secret/metadata/race/meta", {"max_versions": 3})
        == [204] * 5
    )
    assert await each("POST", f"{DATA}/race/plain", {"data": {"v": "1"}}) == [200] * 5
    first_only = await each("POST", f"{DATA}/race/cas", {"options": {"cas": 0}, "data": {"v": "1"}})
    assert first_only == [200, 400, 400, 400, 400]
    versions = await client.get(
        "/secrets/v1/secret/metadata/race/plain", headers=vault(admin.api_key)
    )
    assert versions.json()["data"]["current_version"] == 5
