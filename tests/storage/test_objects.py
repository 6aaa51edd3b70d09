"""Objects over the API, on SQLite and PostgreSQL (and on moto's S3 where the store matters):
the issue's "Done when" for uploads and downloads — quarantine, types by magic bytes, quotas
under concurrency, object locks, Range reads of encrypted objects, bad keys, size limits and
a client that goes away — and the download's headers, deletes, listing and info."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from keel.core.db import utcnow
from keel.storage.encryption import SEGMENT_BYTES
from keel.storage.models import StorageObject
from keel.storage.router.objects import RangeNotSatisfiable, content_disposition, parse_range
from keel.storage.service.objects import retention_refusal
from tests.storage.conftest import OBJECTS_API, StorageApi
from tests.support.audit import audit_events
from tests.support.clamd import EICAR, EICAR_SIGNATURE
from tests.support.tenants import member

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(64)
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"
BOTH_STORES = pytest.mark.parametrize("storage_backend", ["local", "s3"], indirect=True)


def problem(answer: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    if code is not None:
        assert body.get("code") == code, body
    return body


async def stored_clean(storage: StorageApi, bucket: str, key: str, data: bytes) -> str:
    """Upload ``data`` and run its scan; the version id of the clean version."""
    put = await storage.put(bucket, key, data)
    assert put.status_code == 201, put.text
    await storage.scan()
    info = await storage.call("GET", f"/buckets/{bucket}/info/{quote(key)}")
    assert info.json()["state"] == "clean", info.text
    version_id: str = put.json()["version_id"]
    return version_id


# --- quarantine -----------------------------------------------------------------------------


@BOTH_STORES
async def test_an_eicar_upload_ends_infected_and_nobody_can_download_it(
    storage: StorageApi,
) -> None:
    await storage.bucket("inbox")
    put = await storage.put("inbox", "report.txt", EICAR)
    assert put.status_code == 201, put.text
    version_id = put.json()["version_id"]
    assert put.json()["state"] == "pending"
    assert await storage.scan() >= 1

    info = await storage.call("GET", "/buckets/inbox/info/report.txt")
    assert info.json()["state"] == "infected"
    assert info.json()["reason"] == EICAR_SIGNATURE  # the owner is told why
    # The admin holds every storage permission: still nobody reads it, by key or version.
    for params in ({}, {"version_id": version_id}):
        for method in ("GET", "HEAD"):
            answer = await storage.call(method, "/buckets/inbox/objects/report.txt", params=params)
            assert answer.status_code == 403
            assert EICAR not in answer.content
            if method == "GET":
                body = problem(answer, 403, "object-quarantined")
                assert EICAR_SIGNATURE not in body["detail"]
    listed = await storage.call("GET", "/buckets/inbox/objects")
    assert [item["state"] for item in listed.json()["objects"]] == ["infected"]
    verdicts = await audit_events(
        storage.app, storage.admin.tenant_id, action_prefix="storage.object.scan"
    )
    assert [event.data["verdict"] for event in verdicts] == ["infected"]
    downloads = await audit_events(
        storage.app, storage.admin.tenant_id, action_prefix="storage.object.download"
    )
    assert downloads == []


async def test_a_version_being_scanned_is_not_ready_and_a_newer_one_does_not_hide_the_clean_one(
    storage: StorageApi,
) -> None:
    await storage.bucket("docs")
    first = await storage.put("docs", "k", b"first version")
    assert (await storage.get("docs", "k")).status_code == 409
    answer = await storage.get("docs", "k")
    problem(answer, 409, "object-not-ready")
    assert int(answer.headers["retry-after"]) > 0
    await storage.scan()
    second = await storage.put("docs", "k", b"second version")
    got = await storage.get("docs", "k")
    assert got.content == b"first version"  # the newest CLEAN one
    by_id = await storage.get("docs", "k", params={"version_id": second.json()["version_id"]})
    problem(by_id, 409, "object-not-ready")
    await storage.scan()
    assert (await storage.get("docs", "k")).content == b"second version"
    # Non-versioned: the older version went once the newer one was clean.
    rows = await storage.versions("docs")
    assert [row.id for row in rows] == [second.json()["version_id"]]
    assert first.json()["version_id"] not in str(await storage.blobs("docs"))
    assert await storage.usage("docs") == (len(b"second version"), 1)


# --- types ----------------------------------------------------------------------------------


@BOTH_STORES
async def test_a_png_named_pdf_into_a_pdf_only_bucket_is_refused_and_leaves_nothing(
    storage: StorageApi,
) -> None:
    await storage.bucket("invoices", allowed_types=["application/pdf"])
    refused = await storage.put(
        "invoices", "invoice.pdf", PNG, headers={"Content-Type": "application/pdf"}
    )
    body = problem(refused, 415, "type-not-allowed")
    assert body["content_type"] == "image/png"
    assert await storage.versions("invoices") == []
    assert await storage.blobs("invoices") == []
    assert await storage.usage("invoices") == (0, 0)
    rejects = await audit_events(
        storage.app, storage.admin.tenant_id, action_prefix="storage.object.reject"
    )
    assert [event.data["refusal"] for event in rejects] == ["type"]

    accepted = await storage.put("invoices", "real.pdf", PDF)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["content_type"] == "application/pdf"


# --- quotas ---------------------------------------------------------------------------------


@BOTH_STORES
async def test_twenty_concurrent_uploads_against_a_quota_of_ten_objects_leave_exactly_ten(
    storage: StorageApi,
) -> None:
    await storage.bucket("limited", quota_objects=10, scan=False)
    answers = await asyncio.gather(
        *(storage.put("limited", f"file-{number}", os.urandom(100)) for number in range(20))
    )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] * 10 + [409] * 10, [answer.text for answer in answers]
    assert await storage.usage("limited") == (1000, 10)
    assert len(await storage.versions("limited")) == 10
    assert len(await storage.blobs("limited")) == 10
    listed = await storage.call("GET", "/buckets/limited/objects")
    assert len(listed.json()["objects"]) == 10


# --- object lock ----------------------------------------------------------------------------


@BOTH_STORES
async def test_a_compliance_locked_object_cannot_be_deleted_or_overwritten_by_an_admin(
    storage: StorageApi,
) -> None:
    await storage.bucket("vault", lock={"mode": "compliance", "days": 1}, scan=False)
    put = await storage.put("vault", "contract.txt", b"signed terms")
    assert put.status_code == 201
    assert put.json()["lock_mode"] == "compliance"
    bypass = {"X-Keel-Bypass-Governance": "true"}

    deleted = await storage.call("DELETE", "/buckets/vault/objects/contract.txt", headers=bypass)
    problem(deleted, 409, "object-locked")
    overwrite = await storage.put("vault", "contract.txt", b"other terms", headers=bypass)
    problem(overwrite, 409, "object-locked")
    shorten = await storage.call(
        "PUT",
        "/buckets/vault/retention/contract.txt",
        json={"mode": "compliance", "retain_until": (utcnow() + timedelta(hours=1)).isoformat()},
        headers=bypass,
    )
    problem(shorten, 409, "object-locked")
    weaken = await storage.call(
        "PUT",
        "/buckets/vault/retention/contract.txt",
        json={"mode": "governance", "retain_until": (utcnow() + timedelta(days=9)).isoformat()},
        headers=bypass,
    )
    problem(weaken, 409, "object-locked")
    extend = await storage.call(
        "PUT",
        "/buckets/vault/retention/contract.txt",
        json={"mode": "compliance", "retain_until": (utcnow() + timedelta(days=9)).isoformat()},
    )
    assert extend.status_code == 200, extend.text

    assert (await storage.get("vault", "contract.txt")).content == b"signed terms"
    assert len(await storage.versions("vault")) == 1
    assert await storage.usage("vault") == (len(b"signed terms"), 1)


@BOTH_STORES
async def test_in_a_versioned_bucket_the_compliance_locked_version_stays_intact_and_readable(
    storage: StorageApi,
) -> None:
    await storage.bucket(
        "ledger", versioning=True, lock={"mode": "compliance", "days": 1}, scan=False
    )
    first = await storage.put("ledger", "book", b"v1")
    version_id = first.json()["version_id"]
    second = await storage.put("ledger", "book", b"v2")  # a new version, not an overwrite
    assert second.status_code == 201
    assert (await storage.get("ledger", "book")).content == b"v2"

    bypass = {"X-Keel-Bypass-Governance": "true"}
    gone = await storage.call(
        "DELETE", "/buckets/ledger/objects/book", params={"version_id": version_id}, headers=bypass
    )
    problem(gone, 409, "object-locked")
    marker = await storage.call("DELETE", "/buckets/ledger/objects/book")
    assert marker.status_code == 204
    assert "x-keel-delete-marker" in marker.headers
    problem(await storage.get("ledger", "book"), 404)
    old = await storage.get("ledger", "book", params={"version_id": version_id})
    assert old.status_code == 200
    assert old.content == b"v1"
    info = await storage.call("GET", "/buckets/ledger/info/book", params={"versions": "true"})
    assert [item["is_delete_marker"] for item in info.json()["versions"]] == [True, False, False]
    listed = await storage.call("GET", "/buckets/ledger/objects")
    assert listed.json()["objects"] == []  # hidden by the marker


async def test_a_governance_lock_yields_only_to_an_objects_admin_with_the_bypass_header(
    storage: StorageApi,
) -> None:
    await storage.bucket("gov", lock={"mode": "governance", "days": 1}, scan=False)
    await storage.put("gov", "k", b"data")
    writer = await member(storage.app, storage.admin, "storage:objects:write")
    bypass = {"X-Keel-Bypass-Governance": "true"}
    as_writer = await storage.client.delete(
        f"{OBJECTS_API}/buckets/gov/objects/k", headers={**writer, **bypass}
    )
    problem(as_writer, 409, "object-locked")
    problem(await storage.call("DELETE", "/buckets/gov/objects/k"), 409, "object-locked")
    assert (
        await storage.call("DELETE", "/buckets/gov/objects/k", headers=bypass)
    ).status_code == 204
    assert await storage.versions("gov") == []
    assert await storage.blobs("gov") == []
    assert await storage.usage("gov") == (0, 0)


async def test_a_legal_hold_keeps_a_version_until_it_is_lifted(storage: StorageApi) -> None:
    await storage.bucket("case", scan=False)
    await storage.put("case", "evidence", b"bytes")
    writer = await member(storage.app, storage.admin, "storage:objects:write")
    refused = await storage.client.put(
        f"{OBJECTS_API}/buckets/case/legal-hold/evidence", json={"on": True}, headers=writer
    )
    problem(refused, 403)
    held = await storage.call("PUT", "/buckets/case/legal-hold/evidence", json={"on": True})
    assert held.json()["legal_hold"] is True
    bypass = {"X-Keel-Bypass-Governance": "true"}
    problem(await storage.call("DELETE", "/buckets/case/objects/evidence", headers=bypass), 409)
    problem(await storage.put("case", "evidence", b"new"), 409, "object-locked")
    await storage.call("PUT", "/buckets/case/legal-hold/evidence", json={"on": False})
    assert (await storage.call("DELETE", "/buckets/case/objects/evidence")).status_code == 204
    problem(await storage.get("case", "evidence"), 404)


def test_retention_rules() -> None:
    now = utcnow()
    later, much_later, sooner = (now + timedelta(days=days) for days in (5, 9, 1))
    compliance = StorageObject(lock_mode="compliance", retain_until=later)
    governance = StorageObject(lock_mode="governance", retain_until=later)
    unlocked = StorageObject(lock_mode=None, retain_until=None)
    for bypass in (False, True):
        assert retention_refusal(compliance, "compliance", sooner, now, bypass_governance=bypass)
        assert retention_refusal(
            compliance, "governance", much_later, now, bypass_governance=bypass
        )
        assert (
            retention_refusal(compliance, "compliance", much_later, now, bypass_governance=bypass)
            is None
        )
    assert retention_refusal(governance, "governance", sooner, now, bypass_governance=False)
    assert retention_refusal(governance, "governance", sooner, now, bypass_governance=True) is None
    assert (
        retention_refusal(governance, "compliance", much_later, now, bypass_governance=False)
        is None
    )
    assert retention_refusal(unlocked, "compliance", sooner, now, bypass_governance=False) is None
    assert retention_refusal(
        unlocked, "compliance", now - timedelta(seconds=1), now, bypass_governance=True
    )


# --- Range reads ----------------------------------------------------------------------------


@BOTH_STORES
async def test_range_reads_of_an_encrypted_object_return_the_right_bytes(
    storage: StorageApi,
) -> None:
    await storage.bucket("media", scan=False)  # encrypted by default
    data = os.urandom(2 * 1024 * 1024 + 12345)
    size = len(data)
    put = await storage.put("media", "video.bin", data)
    assert put.json()["encrypted"] is True
    stored = await storage.blobs("media")
    assert len(stored) == 1
    whole = await storage.get("media", "video.bin")
    assert whole.status_code == 200
    assert whole.content == data
    assert whole.headers["accept-ranges"] == "bytes"

    mib = 1024 * 1024
    spans = {
        "bytes=0-0": (0, 1),
        "bytes=0-99": (0, 100),
        # Across the first ciphertext segment's plaintext end (it also holds the header).
        f"bytes={SEGMENT_BYTES - 100}-{SEGMENT_BYTES + 100}": (
            SEGMENT_BYTES - 100,
            SEGMENT_BYTES + 101,
        ),
        # Across the 1 MiB boundary, and across the second segment boundary.
        f"bytes={mib - 10}-{mib + 10}": (mib - 10, mib + 11),
        f"bytes={2 * SEGMENT_BYTES - 50}-{2 * SEGMENT_BYTES + 50}": (
            2 * SEGMENT_BYTES - 50,
            2 * SEGMENT_BYTES + 51,
        ),
        f"bytes={mib}-": (mib, size),
        "bytes=-1": (size - 1, size),
        "bytes=-500": (size - 500, size),
        f"bytes=-{size + 10}": (0, size),
        f"bytes={size - 1}-{size - 1}": (size - 1, size),
        f"bytes={size - 5}-{size + 1000}": (size - 5, size),
    }
    for header, (start, end) in spans.items():
        answer = await storage.get("media", "video.bin", headers={"Range": header})
        assert answer.status_code == 206, (header, answer.text)
        assert answer.content == data[start:end], header
        assert answer.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
        assert answer.headers["content-length"] == str(end - start)
    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 10}", "bytes=-0"):
        answer = await storage.get("media", "video.bin", headers={"Range": header})
        assert answer.status_code == 416, header
        assert answer.headers["content-range"] == f"bytes */{size}"
    several = await storage.get("media", "video.bin", headers={"Range": "bytes=0-1,5-6"})
    assert several.status_code == 200  # several spans: the whole object
    assert several.content == data


def test_range_header_rules() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=0-1,3-4", 10) is None
    assert parse_range("bytes=5-3", 10) is None
    assert parse_range("bytes=x-3", 10) is None
    assert parse_range("bytes=-", 10) is None
    assert parse_range("bytes=2-", 10) == (2, 10)
    assert parse_range("bytes=2-4", 10) == (2, 5)
    assert parse_range("bytes=-3", 10) == (7, 10)
    assert parse_range("bytes=-30", 10) == (0, 10)
    assert parse_range("bytes=9-100", 10) == (9, 10)
    for header, size in (("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-1", 0)):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)


# --- download headers -------------------------------------------------------------------------


async def test_download_headers_caching_and_audit(storage: StorageApi) -> None:
    await storage.bucket("site", scan=False, encrypted=False)
    html = b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"
    put = await storage.put("site", "pages/index.html", html, headers={"Content-Type": "image/png"})
    assert put.json()["content_type"] == "text/html"  # the bytes decide, not the header
    assert put.json()["declared_content_type"] == "image/png"
    got = await storage.get("site", "pages/index.html")
    assert got.headers["content-type"].startswith("text/html")
    assert got.headers["x-content-type-options"] == "nosniff"
    # Active content is always an attachment.
    assert got.headers["content-disposition"].startswith("attachment;")
    assert "filename*=UTF-8''index.html" in got.headers["content-disposition"]
    assert got.headers["cache-control"] == "private, max-age=0"
    etag = got.headers["etag"]
    assert etag == f'"{hashlib.sha256(html).hexdigest()}"'

    await storage.put("site", "a.pdf", PDF)
    plain = await storage.get("site", "a.pdf")
    assert "content-disposition" not in plain.headers
    named = await storage.get("site", "a.pdf", params={"download": "Rechnung März.pdf"})
    assert named.headers["content-disposition"] == (
        "attachment; filename=\"Rechnung M_rz.pdf\"; filename*=UTF-8''Rechnung%20M%C3%A4rz.pdf"
    )

    not_modified = await storage.get("site", "pages/index.html", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    head = await storage.call("HEAD", "/buckets/site/objects/pages/index.html")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(html))
    assert head.content == b""
    downloads = await audit_events(
        storage.app, storage.admin.tenant_id, action_prefix="storage.object.download"
    )
    # Three GETs with bytes; neither the 304 nor the HEAD.
    assert len(downloads) == 3


def test_content_disposition_never_lets_a_filename_break_the_header() -> None:
    header = content_disposition('a"b\\c;d\r\n.txt')
    assert "\r" not in header
    assert "\n" not in header
    assert header.startswith('attachment; filename="a_b_c_d__.txt"; ')


async def test_if_none_match_star_refuses_an_upload_over_an_existing_key(
    storage: StorageApi,
) -> None:
    await storage.bucket("once", scan=False)
    star = {"If-None-Match": "*"}
    assert (await storage.put("once", "k", b"1", headers=star)).status_code == 201
    problem(await storage.put("once", "k", b"2", headers=star), 412)
    problem(await storage.put("once", "k", b"2", headers={"If-None-Match": '"abc"'}), 400)
    assert (await storage.get("once", "k")).content == b"1"
    assert await storage.usage("once") == (1, 1)


# --- bad input ------------------------------------------------------------------------------


async def test_bad_keys_are_refused_with_400(storage: StorageApi) -> None:
    await storage.bucket("keys", scan=False)
    bad = [
        "a/%2E%2E/b",
        "%2E%2E",
        "a/%00b",
        "a%01",
        "x" * 1025,
        "%C3%A9" * 513,
        "/lead",
        "%2E/a",
        "a/%2E",
    ]
    for key in bad:
        path = f"{OBJECTS_API}/buckets/keys/objects/{key}"
        for method in ("PUT", "GET", "DELETE"):
            answer = await storage.client.request(
                method, path, content=b"data" if method == "PUT" else None, headers=storage.headers
            )
            problem(answer, 400)
    info = await storage.client.get(
        f"{OBJECTS_API}/buckets/keys/info/a%00", headers=storage.headers
    )
    problem(info, 400)
    assert await storage.versions("keys") == []
    # The longest key and odd but valid ones are fine.
    for key in ("é" * 512, "a/..b/c", "with space/and+plus", "a//b"):
        answer = await storage.put("keys", key, b"ok")
        assert answer.status_code == 201, (key, answer.text)
        assert answer.json()["key"] == key
        assert (await storage.get("keys", key)).content == b"ok"


@BOTH_STORES
async def test_a_body_over_the_bucket_limit_is_413_and_nothing_is_stored(
    storage: StorageApi,
) -> None:
    await storage.bucket("small", max_object_bytes=50_000)
    exact = await storage.put("small", "exact", os.urandom(50_000))
    assert exact.status_code == 201

    async def body() -> Any:  # streamed: no Content-Length to refuse it early
        for _ in range(10):
            yield os.urandom(16_384)

    answer = await storage.client.put(
        f"{OBJECTS_API}/buckets/small/objects/big", content=body(), headers=storage.headers
    )
    problem(answer, 413, "object-too-large")
    answer = await storage.put("small", "big", os.urandom(50_001))
    problem(answer, 413)
    rows = await storage.versions("small")
    assert [row.key for row in rows] == ["exact"]
    assert len(await storage.blobs("small")) == 1
    assert await storage.usage("small") == (50_000, 1)


@BOTH_STORES
async def test_a_client_that_disconnects_mid_upload_leaves_nothing(storage: StorageApi) -> None:
    await storage.bucket("flaky")
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": os.urandom(65_536), "more_body": True} for _ in range(4)
    ]
    messages.append({"type": "http.disconnect"})

    async def receive() -> dict[str, Any]:
        if len(messages) > 1:
            return messages.pop(0)
        return messages[0]

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"keel.test"), (b"content-length", b"10000000")]
    headers += [(name.lower().encode(), value.encode()) for name, value in storage.headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": f"{OBJECTS_API}/buckets/flaky/objects/partial.bin",
        "raw_path": f"{OBJECTS_API}/buckets/flaky/objects/partial.bin".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("keel.test", 80),
    }
    await asyncio.wait_for(storage.app(scope, receive, send), timeout=30)
    statuses = [message["status"] for message in sent if message["type"] == "http.response.start"]
    assert statuses
    assert statuses[0] == 400
    assert await storage.versions("flaky") == []
    assert await storage.blobs("flaky") == []
    assert await storage.usage("flaky") == (0, 0)


# --- permissions, listing, info -----------------------------------------------------------


async def test_readers_read_and_only_writers_write(storage: StorageApi) -> None:
    await storage.bucket("shared", scan=False)
    await storage.put("shared", "k", b"data")
    reader = await member(storage.app, storage.admin, "storage:objects:read")
    url = f"{OBJECTS_API}/buckets/shared/objects/k"
    assert (await storage.client.get(url, headers=reader)).content == b"data"
    problem(await storage.client.put(url, content=b"x", headers=reader), 403)
    problem(await storage.client.delete(url, headers=reader), 403)
    problem(await storage.client.get(url), 401)
    other = await storage.call("GET", "/buckets/nope/objects/k")
    problem(other, 404)


async def test_listing_pages_through_the_newest_version_of_each_key(storage: StorageApi) -> None:
    await storage.bucket("many", scan=False, versioning=True)
    keys = [f"dir/{number:02d}" for number in range(7)] + ["other/x", "dir_/y", "dir%/z"]
    for key in keys:
        await storage.put("many", key, key.encode())
    await storage.put("many", "dir/03", b"newer")
    await storage.call("DELETE", "/buckets/many/objects/dir/05")

    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"prefix": "dir/", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await storage.call("GET", "/buckets/many/objects", params=params)
        assert page.status_code == 200, page.text
        seen += page.json()["objects"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert [item["key"] for item in seen] == [
        "dir/00",
        "dir/01",
        "dir/02",
        "dir/03",
        "dir/04",
        "dir/06",
    ]
    assert next(item for item in seen if item["key"] == "dir/03")["size"] == len(b"newer")
    problem(await storage.call("GET", "/buckets/many/objects", params={"cursor": "!!"}), 400)
    percent = await storage.call("GET", "/buckets/many/objects", params={"prefix": "dir%"})
    assert [item["key"] for item in percent.json()["objects"]] == ["dir%/z"]

    info = await storage.call("GET", "/buckets/many/info/dir/03", params={"versions": "true"})
    assert [item["size"] for item in info.json()["versions"]] == [len(b"newer"), len(b"dir/03")]
    problem(await storage.call("GET", "/buckets/many/info/dir/05"), 404)
    problem(await storage.call("GET", "/buckets/many/info/missing"), 404)
