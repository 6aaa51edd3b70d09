"""Buckets over the API, on SQLite and PostgreSQL: create, read, list, replace the policy under
``If-Match`` and delete (empty only); names and policies validated into 4xx problems; who may
do what; another tenant's buckets invisible; and the policy rules that never loosen a lock."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.core.audit import SYSTEM
from keel.core.db import utcnow
from keel.core.errors import Conflict, PreconditionFailed
from keel.storage.models import StorageBucket, StorageObject, StorageUpload
from keel.storage.schemas import BucketPolicy
from keel.storage.service.buckets import get_bucket, put_bucket
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.keel_cli import Deployment, initialised_deployment
from tests.support.tenants import TenantAdmin, make_tenant_admin, member

API = "/storage/v1"


def assert_problem(answer: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    if slug is not None:
        assert body["type"] == f"urn:keel:problem:{slug}"
    return body


async def put(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    name: str,
    policy: dict[str, Any] | None = None,
    **extra: str,
) -> httpx.Response:
    return await client.put(
        f"{API}/buckets/{name}", json=policy or {}, headers={**headers, **extra}
    )


async def test_create_read_list_replace_and_delete_a_bucket(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    headers = admin.headers
    created = await put(client, headers, "photos", {"allowed_types": ["image/*"], "scan": False})
    assert created.status_code == 201, created.text
    assert created.headers["etag"] == '"1"'
    body = created.json()
    assert body["name"] == "photos"
    assert body["revision"] == 1
    assert body["policy"]["allowed_types"] == ["image/*"]
    assert body["policy"]["scan"] is False
    assert body["policy"]["encrypted"] is True  # the default
    assert (body["used_bytes"], body["used_objects"]) == (0, 0)

    read = await client.get(f"{API}/buckets/photos", headers=headers)
    assert read.status_code == 200
    assert read.headers["etag"] == '"1"'
    assert read.json()["policy"] == body["policy"]
    cached = await client.get(f"{API}/buckets/photos", headers={**headers, "If-None-Match": '"1"'})
    assert cached.status_code == 304

    # The same create again (a retry) changes nothing; another policy needs If-Match.
    again = await put(client, headers, "photos", {"allowed_types": ["image/*"], "scan": False})
    assert again.status_code == 200
    assert again.json()["revision"] == 1
    other = await put(client, headers, "photos", {"allowed_types": ["application/pdf"]})
    assert assert_problem(other, 409)["current_etag"] == '"1"'

    replaced = await put(
        client, headers, "photos", {"allowed_types": ["image/png"]}, **{"If-Match": '"1"'}
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.headers["etag"] == '"2"'
    assert replaced.json()["policy"]["allowed_types"] == ["image/png"]
    assert replaced.json()["policy"]["scan"] is True  # a replace, not a merge

    # A stale revision, and a create-only write of an existing bucket, are 412.
    stale = await put(client, headers, "photos", {"versioning": True}, **{"If-Match": '"1"'})
    assert assert_problem(stale, 412)["current_etag"] == '"2"'
    exists = await put(client, headers, "photos", {}, **{"If-None-Match": "*"})
    assert_problem(exists, 412)
    missing = await put(client, headers, "nothing-here", {}, **{"If-Match": '"1"'})
    assert_problem(missing, 412)
    create_only = await put(client, headers, "docs", None, **{"If-None-Match": "*"})
    assert create_only.status_code == 201

    listed = await client.get(f"{API}/buckets", headers=headers)
    assert listed.status_code == 200
    assert [b["name"] for b in listed.json()["buckets"]] == ["docs", "photos"]

    stale_delete = await client.delete(
        f"{API}/buckets/photos", headers={**headers, "If-Match": '"1"'}
    )
    assert_problem(stale_delete, 412)
    deleted = await client.delete(f"{API}/buckets/photos", headers=headers)
    assert deleted.status_code == 204
    assert_problem(await client.get(f"{API}/buckets/photos", headers=headers), 404, "not-found")
    assert_problem(await client.delete(f"{API}/buckets/photos", headers=headers), 404)

    actions = [event.action for event in await audit_events(app, admin.tenant_id)]
    for action in ("storage.bucket.create", "storage.bucket.update", "storage.bucket.delete"):
        assert action in actions
    assert actions.count("storage.bucket.create") == 2  # the no-op retry is not audited
    assert actions.count("storage.bucket.update") == 1


async def test_the_policy_quotas_are_mirrored_into_the_bucket_row(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    created = await put(client, admin.headers, "quoted", {"quota_bytes": 1000, "quota_objects": 5})
    assert created.status_code == 201
    async with unit_of_work(app) as session:
        bucket = await get_bucket(session, admin.tenant_id, "quoted")
        assert (bucket.quota_bytes, bucket.quota_objects) == (1000, 5)
        bucket_id = bucket.id
    changed = await put(
        client, admin.headers, "quoted", {"quota_objects": 2}, **{"If-Match": '"1"'}
    )
    assert changed.status_code == 200
    async with unit_of_work(app) as session:
        bucket = await get_bucket(session, admin.tenant_id, "quoted")
        assert (bucket.id, bucket.quota_bytes, bucket.quota_objects) == (bucket_id, None, 2)
    usage = await client.get(f"{API}/usage", headers=admin.headers)
    assert usage.json()["buckets"] == [
        {
            "name": "quoted",
            "quota_bytes": None,
            "quota_objects": 2,
            "used_bytes": 0,
            "used_objects": 0,
        }
    ]


@pytest.mark.parametrize(
    "name",
    [
        "ab",  # too short
        "a" * 64,  # too long
        "Photos",  # upper case
        "-photos",
        "photos-",
        ".photos",
        "pho..tos",
        "pho_tos",
        "pho tos",
        "phötos",
    ],
)
async def test_a_bad_bucket_name_is_a_422_problem(
    client: httpx.AsyncClient, headers: dict[str, str], name: str
) -> None:
    answer = await put(client, headers, name)
    assert_problem(answer, 422, "validation")
    listed = await client.get(f"{API}/buckets", headers=headers)
    assert listed.json()["buckets"] == []


async def test_the_longest_and_shortest_names_are_fine(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for name in ("abc", "a" * 63, "my.photos-2024"):
        assert (await put(client, headers, name)).status_code == 201


@pytest.mark.parametrize(
    ("policy", "status"),
    [
        ({"allowed_types": ["not a type"]}, 422),
        ({"allowed_types": []}, 422),
        ({"allowed_types": ["*/png"]}, 422),
        ({"nonsense": True}, 422),
        ({"lock": {"mode": "forever", "days": 1}}, 422),
        ({"lock": {"mode": "compliance", "days": 0}}, 422),
        ({"retention": {"min_days": 10, "max_days": 5}}, 422),
        ({"quota_bytes": -1}, 422),
        # Beyond JSON's safe integers (the audit log's canonical JSON would not hold them).
        ({"quota_bytes": 2**53}, 422),
        ({"quota_objects": 2**63}, 422),
        ({"max_object_bytes": 0}, 422),
        ({"on_clean": {"queue": "a b", "task": "t"}}, 422),
        # Keel's own queues take no fleet job (the hook would be dropped).
        ({"on_clean": {"queue": "keel.storage", "task": "t"}}, 422),
        ({"visibility": "world"}, 422),
        # Above the platform's largest object (KEEL_STORAGE__MAX_OBJECT_BYTES, 5 GiB).
        ({"max_object_bytes": 5 * 1024**3 + 1}, 400),
    ],
)
async def test_a_bad_policy_is_a_4xx_problem_and_nothing_is_made(
    client: httpx.AsyncClient, headers: dict[str, str], policy: dict[str, Any], status: int
) -> None:
    assert_problem(await put(client, headers, "bad-policy", policy), status)
    assert_problem(await client.get(f"{API}/buckets/bad-policy", headers=headers), 404)


async def test_malformed_requests_are_4xx_problems(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    not_json = await client.put(
        f"{API}/buckets/fine-name",
        content=b"{nope",
        headers={**headers, "Content-Type": "application/json"},
    )
    assert 400 <= not_json.status_code < 500
    assert not_json.headers["content-type"].startswith("application/problem+json")
    assert_problem(await put(client, headers, "fine-name", {}, **{"If-None-Match": '"3"'}), 400)
    assert_problem(
        await put(client, headers, "fine-name", {}, **{"If-Match": "x" * 300}), 422, "validation"
    )
    assert_problem(await client.get(f"{API}/buckets/{'a' * 300}", headers=headers), 422)
    for bad in (-5, 2**53, 2**64, "lots"):
        quota = await client.put(f"{API}/quota", json={"quota_bytes": bad}, headers=headers)
        assert_problem(quota, 422, "validation")


async def test_a_bucket_reader_cannot_write_and_a_writer_cannot_delete(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    assert (await put(client, admin.headers, "shared")).status_code == 201
    reader = await member(app, admin, "storage:buckets:read")
    writer = await member(app, admin, "storage:buckets:write")
    objects_only = await member(app, admin, "storage:objects:admin")

    assert (await client.get(f"{API}/buckets", headers=reader)).status_code == 200
    assert (await client.get(f"{API}/buckets/shared", headers=reader)).status_code == 200
    assert (await client.get(f"{API}/usage", headers=reader)).status_code == 200
    assert_problem(await put(client, reader, "readers-own"), 403, "forbidden")
    assert_problem(await put(client, reader, "shared", {}, **{"If-Match": '"1"'}), 403)
    assert_problem(await client.delete(f"{API}/buckets/shared", headers=reader), 403)
    assert_problem(await client.put(f"{API}/quota", json={}, headers=reader), 403)

    assert (await put(client, writer, "writers-own")).status_code == 201
    assert_problem(await client.delete(f"{API}/buckets/writers-own", headers=writer), 403)
    assert_problem(await client.put(f"{API}/quota", json={}, headers=writer), 403)

    assert_problem(await client.get(f"{API}/buckets", headers=objects_only), 403)
    assert_problem(await put(client, objects_only, "objects-own"), 403)

    assert_problem(await client.get(f"{API}/buckets"), 401)
    names = [
        b["name"] for b in (await client.get(f"{API}/buckets", headers=reader)).json()["buckets"]
    ]
    assert names == ["shared", "writers-own"]


async def test_another_tenants_bucket_is_not_found(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    assert (
        await put(client, admin.headers, "private-stuff", {"quota_objects": 3})
    ).status_code == 201
    other = await make_tenant_admin(app)

    assert_problem(await client.get(f"{API}/buckets/private-stuff", headers=other.headers), 404)
    assert_problem(await client.delete(f"{API}/buckets/private-stuff", headers=other.headers), 404)
    assert_problem(
        await put(client, other.headers, "private-stuff", {}, **{"If-Match": '"1"'}), 412
    )
    assert (await client.get(f"{API}/buckets", headers=other.headers)).json()["buckets"] == []
    assert (await client.get(f"{API}/usage", headers=other.headers)).json()["buckets"] == []
    # Names are per tenant: the other tenant makes its own bucket of that name.
    theirs = await put(client, other.headers, "private-stuff", {"versioning": True})
    assert theirs.status_code == 201
    mine = await client.get(f"{API}/buckets/private-stuff", headers=admin.headers)
    assert mine.json()["policy"]["versioning"] is False
    assert mine.json()["policy"]["quota_objects"] == 3


LOCKED = {"versioning": True, "lock": {"mode": "compliance", "days": 30}}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"versioning": True, "lock": None}, "lock"),
        ({"versioning": True, "lock": {"mode": "compliance", "days": 29}}, "lock.days"),
        ({"versioning": True, "lock": {"mode": "governance", "days": 30}}, "lock"),
        ({"versioning": False, "lock": {"mode": "compliance", "days": 30}}, "versioning"),
    ],
)
async def test_a_compliance_lock_is_never_loosened(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    change: dict[str, Any],
    field: str,
) -> None:
    assert (await put(client, headers, "vault", LOCKED)).status_code == 201
    refused = await put(client, headers, "vault", change, **{"If-Match": '"1"'})
    assert assert_problem(refused, 409, "conflict")["field"] == field
    read = await client.get(f"{API}/buckets/vault", headers=headers)
    assert read.headers["etag"] == '"1"'
    assert read.json()["policy"]["lock"] == {"mode": "compliance", "days": 30}


async def test_a_lock_may_be_tightened_and_other_settings_changed(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    governance = {"versioning": True, "lock": {"mode": "governance", "days": 10}}
    assert (await put(client, headers, "records", governance)).status_code == 201
    # Governance may be shortened (it is the bypassable lock) but not removed.
    shorter = {"versioning": True, "lock": {"mode": "governance", "days": 5}}
    assert (
        await put(client, headers, "records", shorter, **{"If-Match": '"1"'})
    ).status_code == 200
    removed = await put(client, headers, "records", {"versioning": True}, **{"If-Match": '"2"'})
    assert_problem(removed, 409)
    stronger = {
        "versioning": True,
        "lock": {"mode": "compliance", "days": 40},
        "allowed_types": ["application/pdf"],
        "quota_bytes": 0,  # below what it holds: allowed, only new uploads are refused
    }
    answer = await put(client, headers, "records", stronger, **{"If-Match": '"2"'})
    assert answer.status_code == 200, answer.text
    assert answer.json()["policy"]["lock"] == {"mode": "compliance", "days": 40}
    longer = {**stronger, "lock": {"mode": "compliance", "days": 41}}
    assert (await put(client, headers, "records", longer, **{"If-Match": '"3"'})).status_code == 200


async def test_a_bucket_holding_versions_or_uploads_is_not_deleted(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    headers = admin.headers
    for name in ("with-version", "with-upload"):
        assert (await put(client, headers, name)).status_code == 201
    async with unit_of_work(app) as session:
        versioned = await get_bucket(session, admin.tenant_id, "with-version")
        uploading = await get_bucket(session, admin.tenant_id, "with-upload")
        session.add(
            StorageObject(
                tenant_id=admin.tenant_id,
                bucket_id=versioned.id,
                key="a.txt",
                state="infected",  # quarantined versions count too
                reason="Eicar-Test-Signature",
                created_by="user:x",
            )
        )
        session.add(
            StorageUpload(
                tenant_id=admin.tenant_id,
                bucket_id=uploading.id,
                key="big.bin",
                created_by="user:x",
                expires_at=utcnow(),
            )
        )
    admin_only = await member(app, admin, "storage:buckets:admin")
    for name in ("with-version", "with-upload"):
        refused = await client.delete(f"{API}/buckets/{name}", headers=admin_only)
        assert_problem(refused, 409, "conflict")
        assert (await client.get(f"{API}/buckets/{name}", headers=headers)).status_code == 200
    async with unit_of_work(app) as session:
        kept = await get_bucket(session, admin.tenant_id, "with-version")
        assert isinstance(kept, StorageBucket)
        assert kept.id == versioned.id


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    with initialised_deployment(
        request, tmp_path, f"keel_storage_{uuid.uuid4().hex[:12]}"
    ) as found:
        yield found


def test_an_operator_creates_lists_and_shows_buckets(
    deployment: Deployment, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"allowed_types": ["image/*"], "quota_objects": 9, "scan": False}))
    created = json.loads(
        deployment.ok("storage", "buckets", "create", "photos", "--policy", str(policy))
    )
    assert created["name"] == "photos"
    assert created["revision"] == 1
    assert created["policy"]["allowed_types"] == ["image/*"]
    # The default policy scans, and this deployment has no clamd: refused, saying what to do.
    refusal = deployment.refused("storage", "buckets", "create", "plain")
    assert "KEEL_STORAGE__CLAMD_ADDRESS" in refusal
    assert '"scan": false' in refusal
    unscanned = tmp_path / "unscanned.json"
    unscanned.write_text(json.dumps({"scan": False}))
    deployment.ok("storage", "buckets", "create", "plain", "--policy", str(unscanned))

    table = deployment.ok("storage", "buckets", "list").splitlines()
    assert table[0].split() == [
        "NAME",
        "REVISION",
        "BYTES",
        "QUOTA",
        "BYTES",
        "OBJECTS",
        "QUOTA",
        "OBJECTS",
    ]
    assert [line.split() for line in table[1:]] == [
        ["photos", "1", "0", "-", "0", "9"],
        ["plain", "1", "0", "-", "0", "-"],
    ]
    listed = json.loads(deployment.ok("storage", "buckets", "list", "--json"))
    assert [bucket["name"] for bucket in listed] == ["photos", "plain"]
    shown = json.loads(deployment.ok("storage", "buckets", "show", "photos"))
    assert shown["policy"]["quota_objects"] == 9

    assert "exists" in deployment.refused(
        "storage", "buckets", "create", "photos", "--policy", str(unscanned)
    )
    assert "No bucket" in deployment.refused("storage", "buckets", "show", "nothing")
    assert "bucket name" in deployment.refused("storage", "buckets", "create", "Bad_Name")
    policy.write_text(json.dumps({"allowed_types": "image/*", "colour": "red"}))
    line = deployment.refused("storage", "buckets", "create", "other", "--policy", str(policy))
    assert "allowed_types" in line
    assert "colour" in line
    policy.write_text("{nope")
    assert "not JSON" in deployment.refused(
        "storage", "buckets", "create", "other", "--policy", str(policy)
    )
    assert "cannot read" in deployment.refused(
        "storage", "buckets", "create", "other", "--policy", str(tmp_path / "missing.json")
    )
    assert (
        "tenant"
        in deployment.refused("storage", "buckets", "list", "--tenant", "no-such-tenant").lower()
    )


async def test_concurrent_creates_and_replaces_of_one_bucket_have_one_winner(
    app: FastAPI, admin: TenantAdmin
) -> None:
    """Eight creates of one new name at once make one bucket (the others: 409 or, once it is
    visible, the same-policy no-op); eight replaces of revision 1 at once: one passes, seven
    are 412 — on PostgreSQL each in a transaction of its own at the same time."""
    database = app.state.keel.database
    platform_max = app.state.keel.settings.storage.max_object_bytes

    async def create() -> str:
        try:
            async with database.session() as session:
                outcome = await put_bucket(
                    session,
                    admin.tenant_id,
                    "contested",
                    BucketPolicy(),
                    actor=SYSTEM,
                    platform_max_object_bytes=platform_max,
                )
                await asyncio.sleep(0.01)
                return "created" if outcome.created else "same"
        except Conflict:
            return "conflict"

    async def replace(days: int) -> str:
        try:
            async with database.session() as session:
                await put_bucket(
                    session,
                    admin.tenant_id,
                    "contested",
                    BucketPolicy.model_validate({"retention": {"min_days": days}}),
                    actor=SYSTEM,
                    platform_max_object_bytes=platform_max,
                    if_match='"1"',
                )
                await asyncio.sleep(0.01)
                return "replaced"
        except PreconditionFailed:
            return "stale"

    async with asyncio.timeout(30):
        created = await asyncio.gather(*(create() for _ in range(8)))
        assert created.count("created") == 1
        assert created.count("created") + created.count("same") + created.count("conflict") == 8
        replaced = await asyncio.gather(*(replace(days) for days in range(1, 9)))
    assert sorted(replaced) == ["replaced"] + ["stale"] * 7
    async with unit_of_work(app) as session:
        bucket = await get_bucket(session, admin.tenant_id, "contested")
        assert bucket.revision == 2
        assert bucket.policy["retention"]["min_days"] in range(1, 9)
