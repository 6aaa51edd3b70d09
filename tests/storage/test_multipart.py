"""Multipart uploads over the API, on SQLite and PostgreSQL: parts sent in parallel and out of
order assemble into one object through the ingest pipeline; completion refuses parts listed
out of order, a wrong ETag or a small part that is not the last (400, the upload kept); a
client resumes by listing the parts; a part sent again replaces the earlier one; an abort
and the lifecycle sweep delete the parts; parts are encrypted at rest in encrypted buckets."""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from keel.core.db import utcnow
from keel.core.tenancy import bind_tenant
from keel.storage.models import StorageObject, StorageUpload
from keel.storage.service.blobio import read_version
from keel.storage.service.lifecycle import sweep_tenant
from keel.storage.service.multipart import MIN_PART_BYTES
from keel.storage.service.runtime import storage_runtime
from tests.storage.conftest import StorageApi
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.tenants import TenantAdmin, make_tenant_admin, member

API = "/storage/v1"
#: Bytes that sniff as nothing in particular (application/octet-stream).
PREFIX = b"\x00\x01keel-multipart\x00"


def blob_root(app: FastAPI) -> Path:
    settings = app.state.keel.settings
    root: Path = settings.storage.local_root(settings.data_dir)
    return root


def part_files(app: FastAPI, upload_id: str) -> list[Path]:
    folder = blob_root(app) / "uploads" / upload_id
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    return body


async def make_bucket(
    client: httpx.AsyncClient, admin: TenantAdmin, name: str, **policy: Any
) -> None:
    answer = await client.put(
        f"{API}/buckets/{name}", json={"scan": False, **policy}, headers=admin.headers
    )
    assert answer.status_code == 201, answer.text


async def start(
    client: httpx.AsyncClient, admin: TenantAdmin, bucket: str, key: str
) -> dict[str, Any]:
    answer = await client.post(
        f"{API}/buckets/{bucket}/uploads", json={"key": key}, headers=admin.headers
    )
    assert answer.status_code == 201, answer.text
    document: dict[str, Any] = answer.json()
    return document


async def send_part(
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    bucket: str,
    upload_id: str,
    number: int,
    data: bytes,
) -> httpx.Response:
    return await client.put(
        f"{API}/buckets/{bucket}/uploads/{upload_id}/parts/{number}",
        content=data,
        headers={**admin.headers, "Content-Type": "application/octet-stream"},
    )


async def complete(
    client: httpx.AsyncClient,
    admin: TenantAdmin,
    bucket: str,
    upload_id: str,
    parts: list[tuple[int, str]],
) -> httpx.Response:
    return await client.post(
        f"{API}/buckets/{bucket}/uploads/{upload_id}/complete",
        json={"parts": [{"number": number, "etag": etag} for number, etag in parts]},
        headers=admin.headers,
    )


async def stored_bytes(app: FastAPI, tenant_id: str, version_id: str) -> bytes:
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant_id)
        version = await session.get(StorageObject, version_id)
        assert version is not None
    return b"".join([chunk async for chunk in read_version(app.state.keel, version)])


def three_parts() -> list[bytes]:
    return [
        PREFIX + os.urandom(MIN_PART_BYTES - len(PREFIX)),
        os.urandom(MIN_PART_BYTES),
        os.urandom(1234),
    ]


@pytest.mark.parametrize("encrypted", [True, False])
async def test_parts_sent_in_parallel_and_out_of_order_assemble_into_one_object(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI, encrypted: bool
) -> None:
    await make_bucket(client, admin, "big", encrypted=encrypted)
    upload = await start(client, admin, "big", "videos/clip.bin")
    upload_id = upload["upload_id"]
    assert upload["key"] == "videos/clip.bin"
    assert upload["bucket"] == "big"
    parts = three_parts()

    answers = await asyncio.gather(
        *(
            send_part(client, admin, "big", upload_id, number, parts[number - 1])
            for number in (3, 1, 2)
        )
    )
    for answer in answers:
        assert answer.status_code == 200, answer.text
    etags = {answer.json()["number"]: answer.json()["etag"] for answer in answers}
    assert etags == {n: hashlib.sha256(parts[n - 1]).hexdigest() for n in (1, 2, 3)}
    assert len(part_files(app, upload_id)) == 3
    if encrypted:
        for path in part_files(app, upload_id):
            assert parts[1][:4096] not in path.read_bytes()  # ciphertext at rest

    done = await complete(
        client, admin, "big", upload_id, [(n, f'"{etags[n]}"') for n in (1, 2, 3)]
    )
    assert done.status_code == 201, done.text
    info = done.json()
    whole = b"".join(parts)
    assert info["key"] == "videos/clip.bin"
    assert info["size"] == len(whole)
    assert info["etag"] == hashlib.sha256(whole).hexdigest()
    assert info["state"] == "clean"
    assert info["encrypted"] is encrypted
    assert await stored_bytes(app, admin.tenant_id, info["version_id"]) == whole

    # The upload and its parts are gone; the bucket counts the object.
    problem(await client.get(f"{API}/buckets/big/uploads/{upload_id}", headers=admin.headers), 404)
    assert part_files(app, upload_id) == []
    bucket = (await client.get(f"{API}/buckets/big", headers=admin.headers)).json()
    assert (bucket["used_bytes"], bucket["used_objects"]) == (len(whole), 1)


async def test_a_completion_that_does_not_fit_the_parts_is_a_400_and_keeps_the_upload(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "strict")
    upload_id = (await start(client, admin, "strict", "a.bin"))["upload_id"]
    parts = three_parts()
    etags = {}
    for number, data in enumerate(parts, start=1):
        answer = await send_part(client, admin, "strict", upload_id, number, data)
        assert answer.status_code == 200, answer.text
        etags[number] = answer.json()["etag"]

    out_of_order = await complete(
        client, admin, "strict", upload_id, [(2, etags[2]), (1, etags[1]), (3, etags[3])]
    )
    assert problem(out_of_order, 400)["code"] == "part-order"
    repeated = await complete(client, admin, "strict", upload_id, [(1, etags[1]), (1, etags[1])])
    assert problem(repeated, 400)["code"] == "part-order"
    wrong_etag = await complete(
        client, admin, "strict", upload_id, [(1, etags[1]), (2, etags[3]), (3, etags[3])]
    )
    body = problem(wrong_etag, 400)
    assert (body["code"], body["part"]) == ("invalid-part", 2)
    missing = await complete(client, admin, "strict", upload_id, [(1, etags[1]), (4, etags[3])])
    assert problem(missing, 400)["code"] == "invalid-part"
    # The small part 3 may only come last.
    small_inside = await complete(client, admin, "strict", upload_id, [(3, etags[3]), (4, "x")])
    assert problem(small_inside, 400)["code"] in ("invalid-part", "part-too-small")
    small_first = await complete(client, admin, "strict", upload_id, [(1, etags[1]), (3, etags[3])])
    assert small_first.status_code == 201, small_first.text  # 1 is 5 MiB: fine

    # The refused completions stored nothing; the good one stored exactly parts 1 and 3.
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        versions = list(await session.scalars(select(StorageObject)))
    assert [version.size for version in versions] == [len(parts[0]) + len(parts[2])]


async def test_a_small_part_that_is_not_the_last_is_refused(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await make_bucket(client, admin, "small")
    upload_id = (await start(client, admin, "small", "a.bin"))["upload_id"]
    first = await send_part(client, admin, "small", upload_id, 1, b"tiny")
    second = await send_part(client, admin, "small", upload_id, 2, b"tail")
    listed = [(1, first.json()["etag"]), (2, second.json()["etag"])]
    body = problem(await complete(client, admin, "small", upload_id, listed), 400)
    assert (body["code"], body["part"]) == ("part-too-small", 1)
    # One small part alone is the last part: fine.
    alone = await complete(client, admin, "small", upload_id, listed[:1])
    assert alone.status_code == 201, alone.text
    assert alone.json()["size"] == 4


async def test_a_client_resumes_by_listing_parts_and_a_part_sent_again_replaces_the_first(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "resume")
    upload_id = (await start(client, admin, "resume", "r.bin"))["upload_id"]
    assert (await send_part(client, admin, "resume", upload_id, 2, b"first")).status_code == 200
    again = await send_part(client, admin, "resume", upload_id, 2, b"second")
    assert again.status_code == 200

    listing = await client.get(f"{API}/buckets/resume/uploads/{upload_id}", headers=admin.headers)
    assert listing.status_code == 200, listing.text
    parts = listing.json()["parts"]
    assert [(part["number"], part["size"]) for part in parts] == [(2, 6)]
    assert parts[0]["etag"] == hashlib.sha256(b"second").hexdigest()
    assert len(part_files(app, upload_id)) == 1  # the replaced blob is gone

    done = await complete(client, admin, "resume", upload_id, [(2, parts[0]["etag"])])
    assert done.status_code == 201, done.text
    assert await stored_bytes(app, admin.tenant_id, done.json()["version_id"]) == b"second"


async def test_an_abort_deletes_the_parts_and_is_audited(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "gone")
    upload_id = (await start(client, admin, "gone", "g.bin"))["upload_id"]
    assert (await send_part(client, admin, "gone", upload_id, 1, b"bytes")).status_code == 200
    assert part_files(app, upload_id)

    aborted = await client.delete(f"{API}/buckets/gone/uploads/{upload_id}", headers=admin.headers)
    assert aborted.status_code == 204, aborted.text
    assert part_files(app, upload_id) == []
    problem(await client.get(f"{API}/buckets/gone/uploads/{upload_id}", headers=admin.headers), 404)
    late = await send_part(client, admin, "gone", upload_id, 2, b"late")
    problem(late, 404)
    problem(await complete(client, admin, "gone", upload_id, [(1, "x")]), 404)
    events = await audit_events(app, admin.tenant_id, action_prefix="storage.upload")
    assert [event.action for event in events] == ["storage.upload.abort", "storage.upload.start"]
    assert events[0].data["expired"] is False


async def test_an_expired_upload_is_aborted_by_the_lifecycle_sweep(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "stale")
    stale = (await start(client, admin, "stale", "old.bin"))["upload_id"]
    fresh = (await start(client, admin, "stale", "new.bin"))["upload_id"]
    for upload_id in (stale, fresh):
        answer = await send_part(client, admin, "stale", upload_id, 1, b"data")
        assert answer.status_code == 200
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        await session.execute(
            update(StorageUpload)
            .where(StorageUpload.id == stale)
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
    # Expired is expired even before the sweep runs.
    problem(await client.get(f"{API}/buckets/stale/uploads/{stale}", headers=admin.headers), 404)

    report = await sweep_tenant(app.state.keel, admin.tenant_id)
    assert report.uploads_aborted == 1
    assert part_files(app, stale) == []
    assert len(part_files(app, fresh)) == 1
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        left = list(await session.scalars(select(StorageUpload.id)))
    assert left == [fresh]
    events = await audit_events(app, admin.tenant_id, action_prefix="storage.upload.abort")
    assert [(event.target_id, event.data["expired"]) for event in events] == [(stale, True)]


async def test_bad_part_numbers_unknown_uploads_and_permissions_are_4xx_problems(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "edges")
    upload_id = (await start(client, admin, "edges", "e.bin"))["upload_id"]
    for number in (0, 10_001):
        answer = await send_part(client, admin, "edges", upload_id, number, b"x")
        assert problem(answer, 400)["code"] == "part-number-out-of-range"
    problem(await send_part(client, admin, "edges", "no-such-upload", 1, b"x"), 404)
    problem(await send_part(client, admin, "nobucket", upload_id, 1, b"x"), 404)
    bad_key = await client.post(
        f"{API}/buckets/edges/uploads", json={"key": "a/../b"}, headers=admin.headers
    )
    problem(bad_key, 400)
    empty = await client.post(
        f"{API}/buckets/edges/uploads/{upload_id}/complete",
        json={"parts": []},
        headers=admin.headers,
    )
    assert empty.status_code in (400, 422)

    reader = await member(app, admin, "storage:objects:read")
    refused = await client.post(
        f"{API}/buckets/edges/uploads", json={"key": "r.bin"}, headers=reader
    )
    problem(refused, 403)
    # Another tenant, even with a bucket of the same name, does not see the upload.
    stranger = await make_tenant_admin(app)
    await make_bucket(client, stranger, "edges")
    seen = await client.get(f"{API}/buckets/edges/uploads/{upload_id}", headers=stranger.headers)
    problem(seen, 404)
    problem(await send_part(client, stranger, "edges", upload_id, 1, b"x"), 404)


async def test_starting_an_upload_again_with_its_idempotency_key_gives_the_same_upload(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await make_bucket(client, admin, "once")
    headers = {**admin.headers, "Idempotency-Key": "start-1"}
    answers = [
        await client.post(f"{API}/buckets/once/uploads", json={"key": "k.bin"}, headers=headers)
        for _ in range(2)
    ]
    assert [answer.status_code for answer in answers] == [201, 201]
    assert answers[0].json()["upload_id"] == answers[1].json()["upload_id"]
    other = await client.post(
        f"{API}/buckets/once/uploads", json={"key": "other.bin"}, headers=headers
    )
    problem(other, 422)


@pytest.mark.parametrize("storage_backend", ["s3"], indirect=True)
async def test_a_multipart_upload_assembles_on_s3_too(storage: StorageApi) -> None:
    await storage.bucket("big", scan=False)
    started = await storage.call("POST", "/buckets/big/uploads", json={"key": "s3/clip.bin"})
    assert started.status_code == 201, started.text
    upload_id = started.json()["upload_id"]
    parts = three_parts()
    answers = await asyncio.gather(
        *(
            storage.call(
                "PUT", f"/buckets/big/uploads/{upload_id}/parts/{number}", content=parts[number - 1]
            )
            for number in (2, 3, 1)
        )
    )
    etags = {answer.json()["number"]: answer.json()["etag"] for answer in answers}
    done = await storage.call(
        "POST",
        f"/buckets/big/uploads/{upload_id}/complete",
        json={"parts": [{"number": n, "etag": etags[n]} for n in (1, 2, 3)]},
    )
    assert done.status_code == 201, done.text
    whole = b"".join(parts)
    assert done.json()["etag"] == hashlib.sha256(whole).hexdigest()
    assert (await storage.get("big", "s3/clip.bin")).content == whole
    ranged = await storage.get("big", "s3/clip.bin", headers={"Range": "bytes=5242870-5242889"})
    assert ranged.content == whole[5_242_870:5_242_890]
    # The parts are gone from the store: only the object's blob is left.
    store = storage_runtime(storage.context).blobs
    assert await store.delete_prefix(f"uploads/{upload_id}") == 0
    assert len(await storage.blobs("big")) == 1


async def test_two_completions_at_once_store_one_version(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    """The invariant "one upload, at most one version": of two completions racing, one
    stores the object and the other is refused (409 while the first holds the upload, or
    404 once it is gone); the bucket counts one object."""
    await make_bucket(client, admin, "race")
    upload_id = (await start(client, admin, "race", "once.bin"))["upload_id"]
    parts = three_parts()
    etags = []
    for number, data in enumerate(parts, start=1):
        answer = await send_part(client, admin, "race", upload_id, number, data)
        assert answer.status_code == 200, answer.text
        etags.append((number, answer.json()["etag"]))

    answers = await asyncio.gather(
        complete(client, admin, "race", upload_id, etags),
        complete(client, admin, "race", upload_id, etags),
    )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses[0] == 201, [answer.text for answer in answers]
    assert statuses[1] in (404, 409), [answer.text for answer in answers]
    async with unit_of_work(app) as session:
        bind_tenant(session, admin.tenant_id)
        versions = (
            await session.scalars(select(StorageObject.id).where(StorageObject.key == "once.bin"))
        ).all()
    assert len(versions) == 1
    bucket = (await client.get(f"{API}/buckets/race", headers=admin.headers)).json()
    assert bucket["used_objects"] == 1


async def test_a_failed_completion_lets_the_upload_be_completed_again(
    client: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    """A completion the pipeline refuses (a type the bucket forbids) releases its hold."""
    await make_bucket(client, admin, "retry", allowed_types=["image/png"])
    upload_id = (await start(client, admin, "retry", "x.bin"))["upload_id"]
    answer = await send_part(client, admin, "retry", upload_id, 1, b"not a png")
    assert answer.status_code == 200, answer.text
    listed = [(1, answer.json()["etag"])]
    problem(await complete(client, admin, "retry", upload_id, listed), 415)
    # Not "being completed": the same refusal again, then an abort works.
    problem(await complete(client, admin, "retry", upload_id, listed), 415)
    aborted = await client.delete(f"{API}/buckets/retry/uploads/{upload_id}", headers=admin.headers)
    assert aborted.status_code in (200, 204), aborted.text
