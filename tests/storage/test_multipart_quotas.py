"""Multipart parts and quotas, on SQLite and PostgreSQL: each stored part counts its bytes
against the bucket's and the tenant's ``quota_bytes`` as it arrives (a part that does not fit
is a 409 and is not kept), a part sent again moves the count by the difference, an abort and
the lifecycle sweep's expiry give the bytes back, and a completion hands them over to the
version without counting them twice (a refused completion changes nothing). The invariant,
over random sequences of all of these:

    ``GET /storage/v1/usage`` = the bytes of the stored versions + the bytes of the stored
    parts of live uploads (and one object a version), and every refused part left no blob;

and concurrent parts racing for the last bytes of a quota never pass it together."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from keel.core.db import utcnow
from keel.core.tenancy import bind_tenant
from keel.storage.models import StorageBucket, StorageObject, StorageUpload, StorageUploadPart
from keel.storage.service.lifecycle import sweep_tenant
from tests.storage.test_multipart import (
    API,
    PREFIX,
    blob_root,
    complete,
    make_bucket,
    part_files,
    problem,
    send_part,
    start,
)
from tests.support.apps import unit_of_work
from tests.support.tenants import TenantAdmin

#: The start of a PNG: a part beginning with it, completed alone, is refused by type.
PNG = b"\x89PNG\r\n\x1a\n"
#: A bound on the racing tests' waiting.
TIMEOUT_SECONDS = 60


async def set_tenant_quota(client: httpx.AsyncClient, admin: TenantAdmin, quota_bytes: int) -> None:
    answer = await client.put(
        f"{API}/quota",
        json={"quota_bytes": quota_bytes, "quota_objects": None},
        headers=admin.headers,
    )
    assert answer.status_code == 200, answer.text


async def usage(client: httpx.AsyncClient, admin: TenantAdmin) -> dict[str, tuple[int, int]]:
    """``GET /usage`` as ``{bucket name or "(tenant)": (used_bytes, used_objects)}``."""
    answer = await client.get(f"{API}/usage", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    document = answer.json()
    found = {
        bucket["name"]: (bucket["used_bytes"], bucket["used_objects"])
        for bucket in document["buckets"]
    }
    found["(tenant)"] = (document["tenant"]["used_bytes"], document["tenant"]["used_objects"])
    return found


async def stored_totals(app: FastAPI, tenant_id: str) -> dict[str, tuple[int, int]]:
    """What the rows say is stored, per bucket and in all: the bytes of versions (not delete
    markers) plus the bytes of live uploads' parts, and the versions."""
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant_id)
        names = dict((await session.execute(select(StorageBucket.id, StorageBucket.name))).all())
        versions = (
            await session.execute(
                select(
                    StorageObject.bucket_id,
                    func.coalesce(func.sum(StorageObject.size), 0),
                    func.count(),
                )
                .where(StorageObject.is_delete_marker.is_(False))
                .group_by(StorageObject.bucket_id)
            )
        ).all()
        parts = (
            await session.execute(
                select(StorageUpload.bucket_id, func.coalesce(func.sum(StorageUploadPart.size), 0))
                .join(StorageUpload, StorageUpload.id == StorageUploadPart.upload_id)
                .group_by(StorageUpload.bucket_id)
            )
        ).all()
    totals = {name: [0, 0] for name in names.values()}
    for bucket_id, size, count in versions:
        totals[names[bucket_id]][0] += int(size)
        totals[names[bucket_id]][1] += int(count)
    for bucket_id, size in parts:
        totals[names[bucket_id]][0] += int(size)
    result = {name: (size, count) for name, (size, count) in totals.items()}
    result["(tenant)"] = (
        sum(size for size, _ in result.values()),
        sum(count for _, count in result.values()),
    )
    return result


def all_part_files(app: FastAPI) -> int:
    folder = blob_root(app) / "uploads"
    return sum(1 for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


async def expire(app: FastAPI, tenant_id: str, upload_id: str) -> None:
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant_id)
        await session.execute(
            update(StorageUpload)
            .where(StorageUpload.id == upload_id)
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )


def data_of(size: int, head: bytes = PREFIX) -> bytes:
    return (head + bytes(range(256)) * (size // 256 + 1))[:size]


async def test_parts_count_as_they_arrive_and_one_that_does_not_fit_is_refused_and_not_kept(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "capped", quota_bytes=100)
    upload_id = (await start(client, admin, "capped", "big.bin"))["upload_id"]
    assert (await send_part(client, admin, "capped", upload_id, 1, data_of(60))).status_code == 200
    assert (await usage(client, admin))["capped"] == (60, 0)

    refused = problem(await send_part(client, admin, "capped", upload_id, 2, data_of(41)), 409)
    assert refused["type"] == "urn:keel:problem:storage-quota-exceeded"
    assert (refused["scope"], refused["quota_bytes"], refused["used_bytes"]) == ("bucket", 100, 60)
    assert len(part_files(app, upload_id)) == 1  # the refused part's blob is gone at once
    listed = await client.get(f"{API}/buckets/capped/uploads/{upload_id}", headers=admin.headers)
    assert [part["number"] for part in listed.json()["parts"]] == [1]
    assert (await send_part(client, admin, "capped", upload_id, 2, data_of(40))).status_code == 200
    assert (await usage(client, admin))["capped"] == (100, 0)

    # The tenant's quota spans buckets: a bucket without a quota of its own is bounded by it.
    await set_tenant_quota(client, admin, 150)
    await make_bucket(client, admin, "open")
    other = (await start(client, admin, "open", "o.bin"))["upload_id"]
    refused = problem(await send_part(client, admin, "open", other, 1, data_of(51)), 409)
    assert (refused["scope"], refused["quota_bytes"], refused["used_bytes"]) == ("tenant", 150, 100)
    assert part_files(app, other) == []
    assert (await send_part(client, admin, "open", other, 1, data_of(50))).status_code == 200
    assert await usage(client, admin) == {"capped": (100, 0), "open": (50, 0), "(tenant)": (150, 0)}


async def test_a_part_sent_again_moves_the_count_by_the_difference(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "again", quota_bytes=100)
    upload_id = (await start(client, admin, "again", "a.bin"))["upload_id"]
    for size in (40, 70, 10, 95):  # 10 + 95 would not fit if the part counted twice
        answer = await send_part(client, admin, "again", upload_id, 1, data_of(size))
        assert answer.status_code == 200, answer.text
        assert (await usage(client, admin))["again"] == (size, 0)
    # A larger send that does not fit keeps the earlier part, and its count.
    problem(await send_part(client, admin, "again", upload_id, 1, data_of(101)), 409)
    listed = await client.get(f"{API}/buckets/again/uploads/{upload_id}", headers=admin.headers)
    assert [part["size"] for part in listed.json()["parts"]] == [95]
    assert (await usage(client, admin))["again"] == (95, 0)
    assert len(part_files(app, upload_id)) == 1


async def test_an_abort_and_the_expiry_sweep_give_the_parts_bytes_back(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "back", quota_bytes=100)
    aborted = (await start(client, admin, "back", "a.bin"))["upload_id"]
    expired = (await start(client, admin, "back", "e.bin"))["upload_id"]
    kept = (await start(client, admin, "back", "k.bin"))["upload_id"]
    for upload_id, size in ((aborted, 30), (expired, 20), (kept, 10)):
        answer = await send_part(client, admin, "back", upload_id, 1, data_of(size))
        assert answer.status_code == 200, answer.text
    assert (await usage(client, admin))["back"] == (60, 0)

    answer = await client.delete(f"{API}/buckets/back/uploads/{aborted}", headers=admin.headers)
    assert answer.status_code == 204, answer.text
    assert (await usage(client, admin))["back"] == (30, 0)
    await expire(app, admin.tenant_id, expired)
    assert (await sweep_tenant(app.state.keel, admin.tenant_id)).uploads_aborted == 1
    assert await usage(client, admin) == {"back": (10, 0), "(tenant)": (10, 0)}
    # A second abort of a gone upload gives nothing back twice.
    answer = await client.delete(f"{API}/buckets/back/uploads/{aborted}", headers=admin.headers)
    problem(answer, 404)
    assert (await usage(client, admin))["back"] == (10, 0)


async def test_a_completion_hands_the_parts_bytes_over_without_counting_them_twice(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    # Exactly the parts' bytes: a completion counting the object on top of them is refused.
    await make_bucket(client, admin, "exact", quota_bytes=90)
    upload_id = (await start(client, admin, "exact", "x.bin"))["upload_id"]
    first = await send_part(client, admin, "exact", upload_id, 1, data_of(60))
    unlisted = await send_part(client, admin, "exact", upload_id, 2, data_of(30))
    assert (first.status_code, unlisted.status_code) == (200, 200)
    assert (await usage(client, admin))["exact"] == (90, 0)

    done = await complete(client, admin, "exact", upload_id, [(1, first.json()["etag"])])
    assert done.status_code == 201, done.text
    # The object counts its 60 bytes and one object; the part left out gave its 30 back.
    assert await usage(client, admin) == {"exact": (60, 1), "(tenant)": (60, 1)}
    assert await stored_totals(app, admin.tenant_id) == await usage(client, admin)
    assert part_files(app, upload_id) == []


async def test_a_refused_completion_keeps_the_parts_counted_until_the_upload_goes(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(
        client, admin, "full", quota_objects=1, allowed_types=["application/octet-stream"]
    )
    put = await client.put(
        f"{API}/buckets/full/objects/first.bin",
        content=data_of(7),
        headers={**admin.headers, "Content-Type": "application/octet-stream"},
    )
    assert put.status_code == 201, put.text
    plain = (await start(client, admin, "full", "plain.bin"))["upload_id"]
    image = (await start(client, admin, "full", "image.png"))["upload_id"]
    sent = await send_part(client, admin, "full", plain, 1, data_of(50))
    png = await send_part(client, admin, "full", image, 1, data_of(20, PNG))
    assert (sent.status_code, png.status_code) == (200, 200)
    counted = {"full": (77, 1), "(tenant)": (77, 1)}
    assert await usage(client, admin) == counted

    # The object quota refuses the version: nothing moves, the upload stays (and counts).
    refused = problem(await complete(client, admin, "full", plain, [(1, sent.json()["etag"])]), 409)
    assert (refused["scope"], refused["quota_objects"], refused["used_objects"]) == ("bucket", 1, 1)
    # A type the bucket refuses: the same.
    problem(await complete(client, admin, "full", image, [(1, png.json()["etag"])]), 415)
    assert await usage(client, admin) == counted
    assert await stored_totals(app, admin.tenant_id) == counted

    deleted = await client.delete(f"{API}/buckets/full/objects/first.bin", headers=admin.headers)
    assert deleted.status_code == 204, deleted.text
    done = await complete(client, admin, "full", plain, [(1, sent.json()["etag"])])
    assert done.status_code == 201, done.text
    answer = await client.delete(f"{API}/buckets/full/uploads/{image}", headers=admin.headers)
    assert answer.status_code == 204, answer.text
    assert await usage(client, admin) == {"full": (50, 1), "(tenant)": (50, 1)}
    assert all_part_files(app) == 0


@pytest.mark.parametrize("scope", ["bucket", "tenant"])
async def test_parts_racing_for_the_last_bytes_of_a_quota_never_pass_it_together(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI, scope: str
) -> None:
    """60 bytes left, 20 parts of 10 at once (in two uploads): exactly 6 are kept."""
    if scope == "bucket":
        await make_bucket(client, admin, "race", quota_bytes=100)
        targets = ["race", "race"]
    else:
        await set_tenant_quota(client, admin, 100)
        await make_bucket(client, admin, "left")
        await make_bucket(client, admin, "right")
        targets = ["left", "right"]
    uploads = [(await start(client, admin, name, "r.bin"))["upload_id"] for name in targets]
    first = await send_part(client, admin, targets[0], uploads[0], 1, data_of(40))
    assert first.status_code == 200, first.text

    async with asyncio.timeout(TIMEOUT_SECONDS):
        answers = await asyncio.gather(
            *(
                send_part(client, admin, targets[i % 2], uploads[i % 2], 2 + i, data_of(10))
                for i in range(20)
            )
        )
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) == 6, [
        answer.text for answer in answers if answer.status_code != 409
    ]
    assert statuses.count(409) == 14
    assert {problem(answer, 409)["scope"] for answer in answers if answer.status_code == 409} == {
        scope
    }
    found = await usage(client, admin)
    assert found["(tenant)"] == (100, 0)
    assert found == await stored_totals(app, admin.tenant_id)
    assert all_part_files(app) == 7


# -- the invariant over random sequences ---------------------------------------------------


@dataclass
class Upload:
    id: str
    bucket: str
    key: str
    #: number -> (size, etag, is a PNG)
    parts: dict[int, tuple[int, str, bool]] = field(default_factory=dict)


@dataclass
class Model:
    """What should be stored: the live uploads and each bucket's versions (key -> size)."""

    quota_bytes: dict[str, int | None]
    quota_objects: dict[str, int | None]
    tenant_quota_bytes: int
    uploads: dict[str, Upload] = field(default_factory=dict)
    versions: dict[str, dict[str, int]] = field(default_factory=dict)

    def used(self, bucket: str) -> tuple[int, int]:
        parts = sum(
            size
            for upload in self.uploads.values()
            if upload.bucket == bucket
            for size, _, _ in upload.parts.values()
        )
        stored = self.versions.get(bucket, {})
        return parts + sum(stored.values()), len(stored)

    def usage(self) -> dict[str, tuple[int, int]]:
        found = {bucket: self.used(bucket) for bucket in self.quota_bytes}
        found["(tenant)"] = (
            sum(size for size, _ in found.values()),
            sum(count for _, count in found.values()),
        )
        return found

    def part_fits(self, bucket: str, more: int) -> bool:
        if more <= 0:
            return True
        limit = self.quota_bytes[bucket]
        bucket_fits = limit is None or self.used(bucket)[0] + more <= limit
        return bucket_fits and self.usage()["(tenant)"][0] + more <= self.tenant_quota_bytes


@pytest.mark.parametrize("seed", [11, 12])
async def test_usage_is_always_the_stored_versions_plus_the_live_parts(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI, seed: int
) -> None:
    """Random parts (new, sent again, some too large to fit, some PNGs the buckets refuse),
    aborts, completions (stored, or refused by type or by the object quota), expiry sweeps
    and deletes of objects; after every step the usage is what the model and the rows say,
    and the store holds a blob for each live part and no other."""
    rng = random.Random(seed)
    model = Model(
        quota_bytes={"capped": 200, "open": None},
        quota_objects={"capped": 2, "open": None},
        tenant_quota_bytes=320,
    )
    for bucket in model.quota_bytes:
        await make_bucket(
            client,
            admin,
            bucket,
            quota_bytes=model.quota_bytes[bucket],
            quota_objects=model.quota_objects[bucket],
            allowed_types=["application/octet-stream"],
        )
    await set_tenant_quota(client, admin, model.tenant_quota_bytes)
    tenant_id = admin.tenant_id
    counter = 0
    outcomes: dict[str, int] = {}

    for _ in range(45):
        roll = rng.random()
        live = list(model.uploads.values())
        with_parts = [upload for upload in live if upload.parts]
        stored = [(bucket, key) for bucket, keys in model.versions.items() for key in keys]
        if roll < 0.15 or not live:
            counter += 1
            bucket = rng.choice(list(model.quota_bytes))
            upload_id = (await start(client, admin, bucket, f"k{counter}"))["upload_id"]
            model.uploads[upload_id] = Upload(upload_id, bucket, f"k{counter}")
            step = "start"
        elif roll < 0.6:
            upload = rng.choice(live)
            number = rng.randint(1, 3)
            is_png = rng.random() < 0.2
            data = data_of(rng.randint(20, 90), PNG if is_png else PREFIX)
            earlier = upload.parts.get(number, (0, "", False))[0]
            answer = await send_part(client, admin, upload.bucket, upload.id, number, data)
            if model.part_fits(upload.bucket, len(data) - earlier):
                assert answer.status_code == 200, answer.text
                upload.parts[number] = (len(data), answer.json()["etag"], is_png)
                step = "part"
            else:
                problem(answer, 409)
                step = "part refused"
        elif roll < 0.75 and with_parts:
            upload = rng.choice(with_parts)
            number = rng.choice(list(upload.parts))
            size, etag, is_png = upload.parts[number]
            answer = await complete(client, admin, upload.bucket, upload.id, [(number, etag)])
            objects_limit = model.quota_objects[upload.bucket]
            objects_full = (
                objects_limit is not None and model.used(upload.bucket)[1] >= objects_limit
            )
            if is_png:
                problem(answer, 415)
                step = "completion refused (type)"
            elif objects_full:
                problem(answer, 409)
                step = "completion refused (quota)"
            else:
                assert answer.status_code == 201, answer.text
                del model.uploads[upload.id]
                model.versions.setdefault(upload.bucket, {})[upload.key] = size
                step = "completion"
        elif roll < 0.85:
            upload = rng.choice(live)
            answer = await client.delete(
                f"{API}/buckets/{upload.bucket}/uploads/{upload.id}", headers=admin.headers
            )
            assert answer.status_code == 204, answer.text
            del model.uploads[upload.id]
            step = "abort"
        elif roll < 0.93:
            upload = rng.choice(live)
            await expire(app, tenant_id, upload.id)
            assert (await sweep_tenant(app.state.keel, tenant_id)).uploads_aborted == 1
            del model.uploads[upload.id]
            step = "sweep"
        elif stored:
            bucket, key = rng.choice(stored)
            answer = await client.delete(
                f"{API}/buckets/{bucket}/objects/{key}", headers=admin.headers
            )
            assert answer.status_code == 204, answer.text
            del model.versions[bucket][key]
            step = "delete"
        else:
            continue
        outcomes[step] = outcomes.get(step, 0) + 1

        expected = model.usage()
        assert await usage(client, admin) == expected, step
        assert await stored_totals(app, tenant_id) == expected, step
        live_parts = sum(len(upload.parts) for upload in model.uploads.values())
        assert all_part_files(app) == live_parts, step

    # The sequence did meet what it is meant to.
    for step in ("part", "part refused", "completion", "abort"):
        assert outcomes.get(step, 0) > 0, outcomes
