"""``keel.storage`` against a real Keel over TCP, on SQLite and PostgreSQL: uploads in one
streamed ``PUT`` and in parallel parts (resumed after an interruption, aborted on a refusal),
downloads whole, ranged, to a path or a file, presigned URLs and POST forms used with plain
httpx, the scan's verdict awaited, Keel's refusals as typed errors, the ``on_clean`` hook run
by a ``keel_client.jobs`` worker, and a 64 MiB object at constant memory."""

from __future__ import annotations

import asyncio
import io
import os
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from keel_client import Keel, SyncKeel
from keel_client.jobs import Worker
from keel_client.storage import (
    BucketPolicy,
    CleanHook,
    CleanObject,
    ContentTypeRefused,
    ObjectNotFound,
    ObjectNotReady,
    ObjectQuarantined,
    ObjectTooLarge,
    RevisionMismatch,
    StorageClient,
    StorageError,
    SyncStorageClient,
    UploadInterrupted,
    clean_object,
)
from tests.client.notify.conftest import quick_retries
from tests.support.clamd import EICAR, EICAR_SIGNATURE
from tests.support.tenants import TenantAdmin

MIB = 1024 * 1024
PART = 5 * MIB  # the smallest part Keel takes
#: No scan, no encryption: what these tests look at is the transfer.
PLAIN = BucketPolicy(scan=False, encrypted=False)

Scan = Callable[[], Awaitable[int]]


class _Recording(httpx.AsyncBaseTransport):
    """Every request's method and path; ``fail`` decides which to break (connection lost)."""

    def __init__(self, fail: Callable[[httpx.Request], bool] = lambda request: False) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.fail = fail
        self.sent: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path))
        if self.fail(request):
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def parts(self) -> list[int]:
        return sorted(
            int(path.rsplit("/", 1)[1])
            for method, path in self.sent
            if method == "PUT" and "/parts/" in path
        )


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


async def test_a_small_object_goes_up_in_one_put_and_comes_back_whole_ranged_and_to_files(
    keel: Keel, tmp_path: Path
) -> None:
    assert isinstance(keel.storage, StorageClient)
    assert keel.storage.api is keel.api  # one pool for every sub-client
    assert keel.storage is keel.storage  # built once, on first use
    bucket = await keel.storage.create_bucket("docs", PLAIN)
    assert bucket.name == "docs"
    assert bucket.policy.scan is False

    data = b"%PDF-1.4\n" + os.urandom(300_000)
    info = await keel.storage.upload("docs", "reports/2026 q1.pdf", data,
                                     content_type="application/pdf")  # fmt: skip
    assert (info.key, info.state, info.size) == ("reports/2026 q1.pdf", "clean", len(data))
    assert info.content_type == "application/pdf"

    assert await keel.storage.download("docs", "reports/2026 q1.pdf") == data
    assert await keel.storage.download("docs", "reports/2026 q1.pdf", range=(10, 20)) == data[10:20]
    assert await keel.storage.download("docs", "reports/2026 q1.pdf", range=(-5, None)) == data[-5:]
    assert (
        await keel.storage.download("docs", "reports/2026 q1.pdf", range=(299_000, None))
        == (data[299_000:])
    )
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    target = downloads / "copy.pdf"
    assert await keel.storage.download("docs", "reports/2026 q1.pdf", target) == len(data)
    assert target.read_bytes() == data
    assert os.listdir(downloads) == ["copy.pdf"]  # no partial file left beside it
    buffer = io.BytesIO()
    await keel.storage.download("docs", "reports/2026 q1.pdf", buffer, version_id=info.version_id)
    assert buffer.getvalue() == data

    async with keel.storage.open("docs", "reports/2026 q1.pdf") as stream:
        assert stream.head.size == len(data)
        assert b"".join([chunk async for chunk in stream]) == data

    head = await keel.storage.head("docs", "reports/2026 q1.pdf")
    assert (head.size, head.etag, head.version_id) == (len(data), info.etag, info.version_id)

    source = tmp_path / "notes.txt"
    source.write_bytes(b"plain text notes\n")
    with source.open("rb") as file:
        second = await keel.storage.upload("docs", "notes.txt", file)
    assert second.content_type == "text/plain"
    pages = [page async for page in keel.storage.list("docs", limit=1)]
    assert [[item.key for item in page.objects] for page in pages] == [
        ["notes.txt"],
        ["reports/2026 q1.pdf"],
    ]
    await keel.storage.delete("docs", "notes.txt")
    with pytest.raises(ObjectNotFound):
        await keel.storage.download("docs", "notes.txt")


async def test_progress_counts_every_byte_sent_up_to_the_total(keel: Keel) -> None:
    await keel.storage.create_bucket("progress", PLAIN)
    data = os.urandom(3 * MIB + 17)
    seen: list[tuple[int, int | None]] = []
    await keel.storage.upload("progress", "blob", data, progress=lambda s, t: seen.append((s, t)))
    assert [sent for sent, _ in seen] == [MIB, 2 * MIB, 3 * MIB, 3 * MIB + 17]
    assert {total for _, total in seen} == {len(data)}


async def test_a_large_object_goes_up_in_parallel_parts_and_reads_back(
    keel_url: str, admin: TenantAdmin, tmp_path: Path
) -> None:
    recording = _Recording()
    async with Keel(keel_url, admin.api_key, retry=quick_retries(), transport=recording) as keel:
        await keel.storage.create_bucket("large", PLAIN)
        path = tmp_path / "large.bin"
        data = random_file(path, 2 * PART + 12_345)
        seen: list[int] = []
        info = await keel.storage.upload(
            "large", "large.bin", path, multipart_threshold=PART, part_size=PART,
            concurrency=3, progress=lambda sent, total: seen.append(sent),
        )  # fmt: skip
        assert (info.size, info.state) == (len(data), "clean")
        assert recording.parts() == [1, 2, 3]
        assert seen[-1] == len(data)
        assert max(seen) == len(data)
        assert await keel.storage.download("large", "large.bin") == data

        # A stream of unknown size goes in parts once more than a part's worth arrived...
        async def stream() -> AsyncIterator[bytes]:
            for offset in range(0, len(data), 700_000):
                yield data[offset : offset + 700_000]

        recording.sent.clear()
        await keel.storage.upload("large", "streamed.bin", stream(), part_size=PART)
        assert recording.parts() == [1, 2, 3]
        assert await keel.storage.download("large", "streamed.bin") == data

        # ...and in one PUT when it ends within the first part.
        async def short() -> AsyncIterator[bytes]:
            yield b"short"

        recording.sent.clear()
        await keel.storage.upload("large", "short.bin", short(), part_size=PART)
        assert recording.parts() == []
        assert ("PUT", "/storage/v1/buckets/large/objects/short.bin") in recording.sent


async def test_an_interrupted_multipart_upload_resumes_sending_only_the_missing_parts(
    keel_url: str, admin: TenantAdmin, tmp_path: Path
) -> None:
    path = tmp_path / "video.bin"
    data = random_file(path, 3 * PART + 999)
    broken = _Recording(fail=lambda request: request.url.path.endswith("/parts/3"))
    async with Keel(keel_url, admin.api_key, retry=quick_retries(), transport=broken) as keel:
        await keel.storage.create_bucket("videos", PLAIN)
        with pytest.raises(UploadInterrupted) as interrupted:
            await keel.storage.upload("videos", "talk.bin", path, multipart_threshold=PART,
                                      part_size=PART, concurrency=2)  # fmt: skip
    upload_id = interrupted.value.upload_id
    assert broken.parts().count(3) == 3  # the part was retried alone, then given up
    recording = _Recording()
    async with Keel(keel_url, admin.api_key, retry=quick_retries(), transport=recording) as keel:
        held = {part.number for part in (await keel.storage.get_upload("videos", upload_id)).parts}
        assert 3 not in held
        assert held  # what went through before the failure stayed
        info = await keel.storage.resume_upload("videos", upload_id, path)
        resent = recording.parts()
        # Only what was missing is sent, each once. A part of the first run whose body had
        # gone out when part 3 failed may land after `held` was read (the server finishes
        # what it received), so it may be missing from `held` and there at the resume.
        assert 3 in resent
        assert len(resent) == len(set(resent))
        assert set(resent) <= {1, 2, 3, 4} - held
        assert info.size == len(data)
        assert await keel.storage.download("videos", "talk.bin") == data
        with pytest.raises(ObjectNotFound):  # completed: the upload is gone
            await keel.storage.get_upload("videos", upload_id)


async def test_a_multipart_upload_keel_refuses_is_aborted(
    keel_url: str, admin: TenantAdmin
) -> None:
    recording = _Recording()
    async with Keel(keel_url, admin.api_key, retry=quick_retries(), transport=recording) as keel:
        await keel.storage.create_bucket(
            "capped", BucketPolicy(scan=False, encrypted=False, max_object_bytes=PART + 1)
        )
        with pytest.raises(ObjectTooLarge):
            await keel.storage.upload("capped", "big.bin", os.urandom(2 * PART + 1),
                                      multipart_threshold=PART, part_size=PART)  # fmt: skip
        [upload_id] = {
            path.split("/uploads/")[1].split("/")[0]
            for _, path in recording.sent
            if "/parts/" in path
        }
        assert ("DELETE", f"/storage/v1/buckets/capped/uploads/{upload_id}") in recording.sent
        with pytest.raises(ObjectNotFound):
            await keel.storage.get_upload("capped", upload_id)


async def test_presigned_urls_work_with_plain_httpx_and_no_credential(keel: Keel) -> None:
    await keel.storage.create_bucket("shared", PLAIN)
    put = await keel.storage.presign_upload("shared", "in/avatar.png", expires_in=300,
                                            max_bytes=1000)  # fmt: skip
    assert put.method == "PUT"
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    async with httpx.AsyncClient(timeout=10) as plain:
        answer = await plain.put(put.url, content=png)
        assert answer.status_code == 201, answer.text
        too_big = await plain.put(put.url, content=png + b"\x00" * 1000)
        assert too_big.status_code == 413
        get = await keel.storage.presign_download("shared", "in/avatar.png", expires_in=60,
                                                  filename="me.png")  # fmt: skip
        answer = await plain.get(get.url)
        assert answer.status_code == 200
        assert answer.content == png
        assert "me.png" in answer.headers["content-disposition"]
        tampered = await plain.get(get.url[:-3] + ("AAA" if not get.url.endswith("AAA") else "BBB"))
        assert tampered.status_code == 403


async def test_a_presigned_post_takes_a_browser_form_within_its_conditions(keel: Keel) -> None:
    await keel.storage.create_bucket("forms", PLAIN)
    form = await keel.storage.presign_post(
        "forms", key_prefix="uploads/", content_types=["text/*"], max_bytes=100, expires_in=300
    )
    async with httpx.AsyncClient(timeout=10) as browser:
        fields = {**form.fields, "key": "uploads/hello.txt"}
        answer = await browser.post(
            form.url, data=fields, files={"file": ("hello.txt", b"hello", "text/plain")}
        )
        assert answer.status_code in (200, 201, 204), answer.text
        too_large = await browser.post(
            form.url,
            data={**form.fields, "key": "uploads/big.txt"},
            files={"file": ("big.txt", b"x" * 101, "text/plain")},
        )
        assert 400 <= too_large.status_code < 500
    assert await keel.storage.download("forms", "uploads/hello.txt") == b"hello"
    with pytest.raises(ObjectNotFound):
        await keel.storage.info("forms", "uploads/big.txt")


async def test_wait_until_clean_answers_at_once_where_nothing_is_scanned(keel: Keel) -> None:
    await keel.storage.create_bucket("unscanned", PLAIN)
    info = await keel.storage.upload("unscanned", "a.txt", b"hello")
    clean = await keel.storage.wait_until_clean("unscanned", "a.txt",
                                                version_id=info.version_id, timeout=5)  # fmt: skip
    assert clean.state == "clean"
    assert clean.version_id == info.version_id


async def test_a_scanned_upload_is_not_ready_until_its_scan_then_clean(
    keel: Keel, scan: Scan
) -> None:
    await keel.storage.create_bucket("scanned", BucketPolicy(encrypted=False))
    info = await keel.storage.upload("scanned", "a.txt", b"harmless text")
    assert info.state == "pending"
    with pytest.raises(ObjectNotReady) as not_ready:
        await keel.storage.download("scanned", "a.txt")
    assert not_ready.value.retry_after is not None
    with pytest.raises(ObjectNotReady):
        await keel.storage.wait_until_clean("scanned", "a.txt", timeout=0.3)
    waiting = asyncio.ensure_future(
        keel.storage.wait_until_clean("scanned", "a.txt", version_id=info.version_id, timeout=20)
    )
    await asyncio.sleep(0.2)
    assert await scan() >= 1
    clean = await asyncio.wait_for(waiting, 25)
    assert clean.state == "clean"
    assert await keel.storage.download("scanned", "a.txt") == b"harmless text"


async def test_keels_refusals_are_typed_errors(keel: Keel, scan: Scan) -> None:
    await keel.storage.create_bucket(
        "strict", BucketPolicy(allowed_types=["application/pdf"], max_object_bytes=1000)
    )
    with pytest.raises(ObjectNotFound) as missing:
        await keel.storage.download("strict", "nothing.pdf")
    assert (missing.value.bucket, missing.value.key, missing.value.status) == (
        "strict", "nothing.pdf", 404,
    )  # fmt: skip
    with pytest.raises(ObjectNotFound):
        await keel.storage.get_bucket("no-such-bucket")
    with pytest.raises(ContentTypeRefused):  # a PNG named .pdf, declared a PDF
        await keel.storage.upload("strict", "fake.pdf", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
                                  content_type="application/pdf")  # fmt: skip
    with pytest.raises(ObjectTooLarge):
        await keel.storage.upload("strict", "big.pdf", b"%PDF-1.4\n" + b"0" * 2000)

    await keel.storage.create_bucket("inbox", BucketPolicy(encrypted=False))
    infected = await keel.storage.upload("inbox", "eicar.txt", EICAR)
    await scan()
    with pytest.raises(ObjectQuarantined) as quarantined:
        await keel.storage.wait_until_clean("inbox", "eicar.txt",
                                            version_id=infected.version_id, timeout=10)  # fmt: skip
    assert quarantined.value.state == "infected"
    assert quarantined.value.reason is not None
    assert EICAR_SIGNATURE in quarantined.value.reason
    with pytest.raises(ObjectQuarantined) as refused:
        await keel.storage.download("inbox", "eicar.txt")
    assert refused.value.status == 403

    bucket = await keel.storage.get_bucket("inbox")
    changed = await keel.storage.update_bucket(
        "inbox", BucketPolicy(encrypted=False, max_object_bytes=5000), if_match=bucket.revision
    )
    assert changed.revision != bucket.revision
    with pytest.raises(RevisionMismatch):
        await keel.storage.update_bucket("inbox", PLAIN, if_match=bucket.revision)


async def test_the_clean_hook_hands_a_worker_the_clean_object(keel: Keel) -> None:
    hook = CleanHook(queue="uploads", task="uploads.process")
    await keel.storage.create_bucket("incoming", BucketPolicy(scan=False, on_clean=hook))
    info = await keel.storage.upload("incoming", "in/report.txt", b"one,two\n1,2\n")
    worker = Worker(keel, queues=["uploads"], concurrency=1, poll_wait=1)
    processed: list[CleanObject] = []

    @worker.task("uploads.process")
    @clean_object
    async def process(obj: CleanObject) -> dict[str, int]:
        data = await keel.storage.download(obj.bucket, obj.key, version_id=obj.version_id)
        processed.append(obj)
        worker.stop()
        return {"records_processed": data.count(b"\n") - 1}

    await asyncio.wait_for(worker.run(install_signal_handlers=False), 20)
    [obj] = processed
    assert (obj.bucket, obj.key, obj.version_id) == ("incoming", "in/report.txt", info.version_id)
    assert (obj.size, obj.etag) == (info.size, info.etag)
    jobs = await keel.jobs.list_jobs("uploads")
    assert [job.result for job in jobs.jobs] == [{"records_processed": 1}]


class _FlipsOneByte(httpx.AsyncBaseTransport):
    """The network between the SDK and Keel altering one byte of every object download's
    body (after the headers, ETag included, went through untouched)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "GET" or "/objects/" not in request.url.path:
            return response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Flipped(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Flipped(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        flipped = False
        async for chunk in self.inner:
            if not flipped and chunk:
                chunk, flipped = bytes([chunk[0] ^ 1]) + chunk[1:], True
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_download_of_several_mib_arrives_whole_and_altered_bytes_are_refused(
    keel: Keel, keel_url: str, admin: TenantAdmin, tmp_path: Path
) -> None:
    await keel.storage.create_bucket("batches", PLAIN)
    data = os.urandom(3 * MIB + 4321)  # more than one of the writer's 1 MiB batches
    await keel.storage.upload("batches", "big.bin", data)
    target = tmp_path / "whole.bin"
    assert await keel.storage.download("batches", "big.bin", target) == len(data)
    assert target.read_bytes() == data
    buffer = io.BytesIO()
    assert await keel.storage.download("batches", "big.bin", buffer) == len(data)
    assert buffer.getvalue() == data

    altered = tmp_path / "altered"
    altered.mkdir()
    async with Keel(keel_url, admin.api_key, retry=quick_retries(),
                    transport=_FlipsOneByte()) as tampered:  # fmt: skip
        with pytest.raises(StorageError, match="do not match the object's SHA-256"):
            await tampered.storage.download("batches", "big.bin", altered / "big.bin")
        assert os.listdir(altered) == []  # neither the file nor its partial
        with pytest.raises(StorageError, match="do not match"):
            await tampered.storage.download("batches", "big.bin", io.BytesIO())
        with pytest.raises(StorageError, match="do not match"):
            await tampered.storage.download("batches", "big.bin")


async def test_the_blocking_face_uploads_and_downloads(
    keel_url: str, admin: TenantAdmin, tmp_path: Path
) -> None:
    source = tmp_path / "in.bin"
    data = random_file(source, 2 * MIB + 5)

    def round_trip() -> bytes:
        with SyncKeel(keel_url, admin.api_key) as keel:
            assert isinstance(keel.storage, SyncStorageClient)
            keel.storage.create_bucket("sync", PLAIN)
            keel.storage.upload("sync", "in.bin", source)
            keel.storage.download("sync", "in.bin", tmp_path / "out.bin")
            assert [page.objects[0].key for page in keel.storage.list("sync")] == ["in.bin"]
            return (tmp_path / "out.bin").read_bytes()

    # The served Keel runs on this loop: the blocking face runs on a thread meanwhile.
    assert await asyncio.to_thread(round_trip) == data


async def test_a_64_mib_object_goes_up_and_down_at_constant_memory(
    keel: Keel, tmp_path: Path
) -> None:
    await keel.storage.create_bucket("memory", PLAIN)
    source = tmp_path / "big.bin"
    with source.open("wb") as file:
        for _ in range(64):
            file.write(os.urandom(MIB))
    tracemalloc.start()
    try:
        info = await keel.storage.upload("memory", "big.bin", source,
                                         multipart_threshold=128 * MIB)  # fmt: skip
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await keel.storage.download("memory", "big.bin", tmp_path / "back.bin")
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.size == 64 * MIB
    # The client and the server (in this process) together hold a few chunks, not the file.
    assert upload_peak < 16 * MIB, upload_peak
    assert download_peak < 16 * MIB, download_peak
    assert (tmp_path / "back.bin").stat().st_size == 64 * MIB
