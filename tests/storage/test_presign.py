"""Signed URLs and presigned POST forms, on SQLite and PostgreSQL: a presigned PUT then GET
round trip with plain httpx and no credential (Range, ETag, attachment name); an expired, a
tampered, a malformed and a wrong-method token are 403 problems refused before any SQL runs;
the URL's content type and size limit hold; presigned POST forms from a browser-like
multipart body succeed, and a too-large file, a wrong type, a key outside the prefix and an
expired policy are refused with nothing stored."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, select

from keel.core.tenancy import bind_tenant
from keel.storage.models import StorageObject
from keel.storage.service.runtime import storage_runtime
from keel.storage.signing import PostPolicy, UrlClaims, sign_post_policy, sign_url_token
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.tenants import TenantAdmin, member

API = "/storage/v1"
DATA = b"\x00\x01keel-presign\x00" + os.urandom(100_000)


def problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    return body


@pytest.fixture
async def anonymous(app: FastAPI) -> Any:
    """A plain httpx client with no credential at all."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as http:
        yield http


async def make_bucket(
    client: httpx.AsyncClient, admin: TenantAdmin, name: str, **policy: Any
) -> None:
    answer = await client.put(
        f"{API}/buckets/{name}", json={"scan": False, **policy}, headers=admin.headers
    )
    assert answer.status_code == 201, answer.text


async def presign(
    client: httpx.AsyncClient, headers: dict[str, str], bucket: str, **body: Any
) -> httpx.Response:
    return await client.post(f"{API}/buckets/{bucket}/presign", json=body, headers=headers)


async def versions(app: FastAPI, tenant_id: str) -> list[StorageObject]:
    async with unit_of_work(app) as session:
        bind_tenant(session, tenant_id)
        return list(await session.scalars(select(StorageObject)))


def tenant_blobs(app: FastAPI, tenant_id: str) -> list[Path]:
    settings = app.state.keel.settings
    root: Path = settings.storage.local_root(settings.data_dir) / tenant_id
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


@contextmanager
def statements(app: FastAPI) -> Iterator[list[str]]:
    """Every SQL statement the app's engine runs inside the block."""
    seen: list[str] = []
    engine = app.state.keel.database.engine.sync_engine

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_a_presigned_put_then_get_round_trip_with_no_credential(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "shared")
    put = await presign(client, admin.headers, "shared", method="PUT", key="docs/a.bin")
    assert put.status_code == 200, put.text
    signed = put.json()
    assert signed["method"] == "PUT"
    assert signed["url"].startswith("http://keel.test/storage/v1/signed/")
    uploaded = await anonymous.put(signed["url"], content=DATA)
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["etag"] == hashlib.sha256(DATA).hexdigest()
    assert uploaded.json()["size"] == len(DATA)

    get = await presign(
        client, admin.headers, "shared", method="GET", key="docs/a.bin", filename="report.bin"
    )
    assert get.status_code == 200, get.text
    url = get.json()["url"]
    whole = await anonymous.get(url)
    assert whole.status_code == 200, whole.text
    assert whole.content == DATA
    assert whole.headers["content-disposition"].startswith('attachment; filename="report.bin"')
    etag = whole.headers["etag"]
    assert etag == f'"{hashlib.sha256(DATA).hexdigest()}"'
    ranged = await anonymous.get(url, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206
    assert ranged.content == DATA[10:20]
    assert ranged.headers["content-range"] == f"bytes 10-19/{len(DATA)}"
    assert (await anonymous.get(url, headers={"If-None-Match": etag})).status_code == 304
    head = await anonymous.head(url)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(DATA))

    # The trail names the signed URL as the actor and keeps no token.
    downloads = await audit_events(app, admin.tenant_id, action_prefix="storage.object.download")
    assert len(downloads) == 2
    assert {event.actor_type for event in downloads} == {"signed_url"}
    presigned = await audit_events(app, admin.tenant_id, action_prefix="storage.url.presign")
    assert [event.data["method"] for event in presigned] == ["GET", "PUT"]
    token = url.rsplit("/", 1)[-1]
    assert all(token not in str(event.data) for event in presigned)


async def test_a_bad_token_is_refused_before_any_sql_runs(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "guarded")
    key = storage_runtime(app.state.keel).signing_key
    base = "http://keel.test/storage/v1/signed/"
    expired = sign_url_token(
        key, UrlClaims(admin.tenant_id, "guarded", "a.bin", "GET", int(time.time()) - 1)
    )
    future = int(time.time()) + 600
    get_token = sign_url_token(key, UrlClaims(admin.tenant_id, "guarded", "a.bin", "GET", future))
    put_token = sign_url_token(key, UrlClaims(admin.tenant_id, "guarded", "a.bin", "PUT", future))
    flipped = get_token[:20] + ("A" if get_token[20] != "A" else "B") + get_token[21:]

    with statements(app) as seen:
        cases = [
            (await anonymous.get(base + expired), "expired"),
            (await anonymous.get(base + flipped), "tampered"),
            (await anonymous.get(base + "not-a-token"), "malformed"),
            (await anonymous.get(base + put_token), "method"),
            (await anonymous.head(base + put_token), None),
            (await anonymous.put(base + get_token, content=b"x"), "method"),
            (await anonymous.put(base + expired, content=b"x"), "expired"),
        ]
    for answer, reason in cases:
        assert answer.status_code == 403, answer.text
        if reason is not None:
            assert answer.json()["reason"] == reason
    assert seen == []
    # The listener does see the queries of a valid token (no object here: 404).
    with statements(app) as seen:
        problem(await anonymous.get(base + get_token), 404)
    assert seen
    assert await versions(app, admin.tenant_id) == []


async def test_a_signed_put_holds_its_content_type_and_size_limit(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "limited")
    typed = await presign(
        client,
        admin.headers,
        "limited",
        method="PUT",
        key="t.txt",
        content_type="text/plain",
        max_bytes=100,
    )
    url = typed.json()["url"]
    wrong = await anonymous.put(url, content=b"hello", headers={"Content-Type": "image/png"})
    assert problem(wrong, 403)["reason"] == "content-type"
    large = await anonymous.put(url, content=b"a" * 101, headers={"Content-Type": "text/plain"})
    problem(large, 413)

    async def chunks() -> Any:  # no Content-Length: refused as the bytes pass the limit
        for _ in range(3):
            yield b"b" * 50

    streamed = await anonymous.put(url, content=chunks(), headers={"Content-Type": "text/plain"})
    problem(streamed, 413)
    assert await versions(app, admin.tenant_id) == []
    assert tenant_blobs(app, admin.tenant_id) == []
    fine = await anonymous.put(url, content=b"hello", headers={"Content-Type": "text/plain"})
    assert fine.status_code == 201, fine.text
    assert fine.json()["content_type"] == "text/plain"


async def test_presigning_is_bounded_and_needs_the_method_s_permission(
    client: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "private")
    await make_bucket(client, admin, "open", visibility="public")
    week = 7 * 86_400
    problem(
        await presign(client, admin.headers, "private", method="GET", key="k", expires_in=week + 1),
        422,
    )
    ok = await presign(client, admin.headers, "open", method="GET", key="k", expires_in=week)
    assert ok.status_code == 200, ok.text
    problem(
        await presign(client, admin.headers, "open", method="GET", key="k", expires_in=week + 1),
        422,
    )
    problem(
        await presign(client, admin.headers, "open", method="GET", key="k", content_type="a/b"),
        422,
    )
    problem(await presign(client, admin.headers, "open", method="GET", key="../k"), 400)
    problem(await presign(client, admin.headers, "nobucket", method="GET", key="k"), 404)

    reader = await member(app, admin, "storage:objects:read")
    assert (await presign(client, reader, "open", method="GET", key="k")).status_code == 200
    problem(await presign(client, reader, "open", method="PUT", key="k"), 403)
    post = await client.post(
        f"{API}/buckets/open/presign-post",
        json={"key_prefix": "u/", "max_bytes": 10},
        headers=reader,
    )
    problem(post, 403)


async def test_a_pending_version_is_not_served_through_a_signed_url(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, admin: TenantAdmin
) -> None:
    await make_bucket(client, admin, "scanned", scan=True)  # no clamd here: stays pending
    put = await presign(client, admin.headers, "scanned", method="PUT", key="p.bin")
    assert (await anonymous.put(put.json()["url"], content=DATA)).status_code == 201
    get = await presign(client, admin.headers, "scanned", method="GET", key="p.bin")
    answer = await anonymous.get(get.json()["url"])
    assert problem(answer, 409)["code"] == "object-not-ready"


# -- presigned POST forms ----------------------------------------------------------------------


async def presign_post(
    client: httpx.AsyncClient, admin: TenantAdmin, bucket: str, **body: Any
) -> dict[str, Any]:
    answer = await client.post(
        f"{API}/buckets/{bucket}/presign-post", json=body, headers=admin.headers
    )
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


async def post_form(
    anonymous: httpx.AsyncClient,
    url: str,
    fields: dict[str, str],
    data: bytes,
    *,
    filename: str = "photo.bin",
    file_type: str = "application/octet-stream",
) -> httpx.Response:
    # As a browser sends it: the text fields first, the file part last.
    return await anonymous.post(url, data=fields, files={"file": (filename, data, file_type)})


async def test_a_browser_form_uploads_within_its_policy(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "inbox")
    form = await presign_post(
        client,
        admin,
        "inbox",
        key_prefix="uploads/",
        content_types=["application/octet-stream", "text/*"],
        max_bytes=200_000,
    )
    assert form["url"] == f"http://keel.test/storage/v1/forms/{admin.tenant_id}/inbox"
    assert form["fields"]["key"] == "uploads/${filename}"
    answer = await post_form(anonymous, form["url"], form["fields"], DATA, filename="a.bin")
    assert answer.status_code == 201, answer.text
    assert answer.json()["key"] == "uploads/a.bin"
    assert answer.json()["etag"] == hashlib.sha256(DATA).hexdigest()
    stored = await versions(app, admin.tenant_id)
    assert [(version.key, version.size) for version in stored] == [("uploads/a.bin", len(DATA))]


async def test_a_form_breaking_its_policy_is_refused_and_stores_nothing(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, admin: TenantAdmin, app: FastAPI
) -> None:
    await make_bucket(client, admin, "strict")
    form = await presign_post(
        client,
        admin,
        "strict",
        key_prefix="u/",
        content_types=["application/octet-stream"],
        min_bytes=10,
        max_bytes=50_000,
    )
    url, fields = form["url"], form["fields"]

    too_large = await post_form(anonymous, url, fields, DATA)
    problem(too_large, 413)
    too_small = await post_form(anonymous, url, fields, b"\x00" * 5)
    problem(too_small, 400)
    wrong_type = await post_form(anonymous, url, fields, b"\x00" * 20, file_type="image/png")
    assert problem(wrong_type, 403)["condition"] == "content-type"
    outside = await post_form(anonymous, url, {**fields, "key": "elsewhere/x"}, b"\x00" * 20)
    assert problem(outside, 403)["condition"] == "key"
    other_bucket = await post_form(
        anonymous, url.replace("/strict", "/inbox"), fields, b"\x00" * 20
    )
    problem(other_bucket, 403)
    tampered = {**fields, "signature": fields["signature"][:-1] + "0"}
    if tampered == fields:
        tampered["signature"] = fields["signature"][:-1] + "1"
    assert problem(await post_form(anonymous, url, tampered, b"\x00" * 20), 403)["reason"] in (
        "tampered",
        "malformed",
    )

    key = storage_runtime(app.state.keel).signing_key
    expired_fields = sign_post_policy(
        key,
        PostPolicy(
            tenant_id=admin.tenant_id,
            bucket="strict",
            key_prefix="u/",
            key=None,
            content_types=("application/octet-stream",),
            min_bytes=0,
            max_bytes=50_000,
            expires_at=int(time.time()) - 1,
        ),
    )
    expired = await post_form(anonymous, url, {"key": "u/x", **expired_fields}, b"\x00" * 20)
    assert problem(expired, 403)["reason"] == "expired"

    assert await versions(app, admin.tenant_id) == []
    assert tenant_blobs(app, admin.tenant_id) == []
    fine = await post_form(anonymous, url, fields, b"\x00" * 20)
    assert fine.status_code == 201, fine.text
