"""The blob store contract (``keel.storage.backends``), held by both stores: the local disk
and S3 (moto's server over HTTP). Each test runs once per store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from keel.core.db import utcnow
from keel.storage.backends import (
    CHUNK_BYTES,
    PART_BYTES,
    BackendUnavailable,
    BlobNotFound,
    BlobStore,
    ListedBlob,
    LocalBlobStore,
    S3BlobStore,
)
from keel.storage.backends import local as local_backend
from keel.storage.backends import s3 as s3_backend
from tests.support.keel_process import free_port
from tests.support.s3 import S3TestServer, moto_server, moto_server_process

MiB = 1024 * 1024


@dataclass
class StoreUnderTest:
    """A store and a look behind it: what it holds, and what a failed write left over."""

    store: BlobStore
    local_root: Path | None = None
    s3: S3TestServer | None = None

    def stored(self) -> set[str]:
        """The locators of every blob stored."""
        if isinstance(self.store, LocalBlobStore):
            assert self.local_root is not None
            if not self.local_root.exists():
                return set()
            return {
                path.relative_to(self.local_root).as_posix()
                for path in self.local_root.rglob("*")
                if path.is_file() and not path.name.endswith(".tmp")
            }
        assert isinstance(self.store, S3BlobStore)
        assert self.s3 is not None
        listed = self.s3.client().list_objects_v2(Bucket=self.s3.bucket, Prefix=self.store.prefix)
        return {item["Key"].removeprefix(self.store.prefix) for item in listed.get("Contents", [])}

    def leftovers(self) -> list[str]:
        """What a write in progress or a failed one left: temporary files (local), incomplete
        multipart uploads (S3)."""
        if isinstance(self.store, LocalBlobStore):
            assert self.local_root is not None
            if not self.local_root.exists():
                return []
            return [str(path) for path in self.local_root.rglob("*.tmp")]
        assert isinstance(self.store, S3BlobStore)
        assert self.s3 is not None
        uploads = self.s3.client().list_multipart_uploads(
            Bucket=self.s3.bucket, Prefix=self.store.prefix
        )
        return [upload["Key"] for upload in uploads.get("Uploads", [])]


@pytest.fixture(params=["local", "s3"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreUnderTest]:
    if request.param == "local":
        root = tmp_path / "storage"
        subject = StoreUnderTest(LocalBlobStore(root), local_root=root)
    else:
        s3: S3TestServer = request.getfixturevalue("s3_server")
        subject = StoreUnderTest(s3.blob_store(prefix=f"tests/{uuid.uuid4().hex}"), s3=s3)
    yield subject
    await subject.store.aclose()


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def failing_after(data: bytes, size: int, error: Exception) -> AsyncIterator[bytes]:
    async for chunk in chunked(data, size):
        yield chunk
    raise error


async def read_chunks(
    store: BlobStore, locator: str, start: int = 0, end: int | None = None
) -> list[bytes]:
    return [chunk async for chunk in store.read(locator, start, end)]


async def read_all(store: BlobStore, locator: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join(await read_chunks(store, locator, start, end))


async def list_all(store: BlobStore, prefix: str) -> dict[str, ListedBlob]:
    async with contextlib.aclosing(store.list_blobs(prefix)) as listing:
        return {blob.locator: blob async for blob in listing}


# --------------------------------------------------------------------------------------
# Round trips and ranges


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [
        pytest.param(0, 1, id="empty"),
        pytest.param(1000, 7, id="small"),
        pytest.param(2 * CHUNK_BYTES + 123, 300_001, id="several-read-chunks"),
        pytest.param(2 * local_backend.WRITEBACK_BYTES + 12_345, 300_001, id="several-writebacks"),
        pytest.param(2 * PART_BYTES + 12_345, 300_001, id="multipart"),
        pytest.param(PART_BYTES + 1, PART_BYTES + 1, id="multipart-from-one-big-chunk"),
        pytest.param(2 * PART_BYTES, MiB, id="exact-parts"),
    ],
)
async def test_a_blob_reads_back_as_written(
    subject: StoreUnderTest, size: int, chunk_size: int
) -> None:
    data = os.urandom(size)
    store = subject.store

    written = await store.write("tenant/bucket/object", chunked(data, chunk_size))

    assert written == size
    assert await store.size("tenant/bucket/object") == size
    chunks = await read_chunks(store, "tenant/bucket/object")
    assert b"".join(chunks) == data
    assert all(0 < len(chunk) <= CHUNK_BYTES for chunk in chunks)
    assert subject.stored() == {"tenant/bucket/object"}
    assert subject.leftovers() == []


async def test_a_write_replaces_the_blob_at_its_locator(subject: StoreUnderTest) -> None:
    await subject.store.write("a/b", chunked(b"first version", 4))
    await subject.store.write("a/b", chunked(b"second", 4))

    assert await read_all(subject.store, "a/b") == b"second"
    assert await subject.store.size("a/b") == len(b"second")


BLOB = os.urandom(PART_BYTES + 2 * CHUNK_BYTES + 7)  # two parts on S3


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, 1),
        (0, CHUNK_BYTES),
        (CHUNK_BYTES - 1, CHUNK_BYTES + 1),
        (CHUNK_BYTES, 2 * CHUNK_BYTES),
        (PART_BYTES - 1, PART_BYTES + 1),
        (PART_BYTES - 3 * CHUNK_BYTES - 5, PART_BYTES + CHUNK_BYTES + 5),
        (PART_BYTES, None),
        (12_345, None),
        (len(BLOB) - 1, None),
        (len(BLOB) - 3, len(BLOB) + 100),
        (0, None),
        (77, 77),
    ],
)
async def test_a_range_reads_exactly_its_bytes(
    subject: StoreUnderTest, start: int, end: int | None
) -> None:
    await subject.store.write("ranged", chunked(BLOB, 3 * MiB + 1))

    chunks = await read_chunks(subject.store, "ranged", start, end)

    assert b"".join(chunks) == BLOB[start:end]
    assert all(0 < len(chunk) <= CHUNK_BYTES for chunk in chunks)


async def test_a_range_past_the_end_reads_nothing(subject: StoreUnderTest) -> None:
    await subject.store.write("short", chunked(b"0123456789", 10))
    await subject.store.write("empty", chunked(b"", 1))

    assert await read_all(subject.store, "short", 10) == b""
    assert await read_all(subject.store, "short", 15, 20) == b""
    assert await read_all(subject.store, "empty", 0, 10) == b""
    assert await read_all(subject.store, "empty") == b""


@pytest.mark.parametrize(("start", "end"), [(-1, None), (5, 4)])
async def test_a_bad_range_is_refused(subject: StoreUnderTest, start: int, end: int | None) -> None:
    await subject.store.write("blob", chunked(b"0123456789", 10))

    with pytest.raises(ValueError, match="range"):
        await read_all(subject.store, "blob", start, end)


# --------------------------------------------------------------------------------------
# Atomicity


class StreamBroke(Exception):
    pass


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(0, id="before-any-byte"),
        pytest.param(CHUNK_BYTES + 5, id="mid-way"),
        pytest.param(PART_BYTES + CHUNK_BYTES, id="after-a-part"),
    ],
)
async def test_a_stream_that_fails_leaves_nothing(subject: StoreUnderTest, sent: int) -> None:
    error = StreamBroke("the client went away")

    with pytest.raises(StreamBroke) as raised:
        await subject.store.write("t/b/o", failing_after(os.urandom(sent), 256 * 1024, error))

    assert raised.value is error
    assert await subject.store.size("t/b/o") is None
    with pytest.raises(BlobNotFound):
        await read_all(subject.store, "t/b/o")
    assert subject.stored() == set()
    assert subject.leftovers() == []


async def test_a_failed_overwrite_keeps_the_blob_that_was_there(subject: StoreUnderTest) -> None:
    await subject.store.write("t/b/o", chunked(b"the original", 5))

    with pytest.raises(StreamBroke):
        await subject.store.write(
            "t/b/o", failing_after(os.urandom(PART_BYTES + 1), MiB, StreamBroke())
        )

    assert await read_all(subject.store, "t/b/o") == b"the original"
    assert subject.leftovers() == []


@pytest.mark.parametrize(
    "sent", [pytest.param(1000, id="small"), pytest.param(PART_BYTES + 1, id="multipart")]
)
async def test_a_cancelled_write_leaves_nothing(subject: StoreUnderTest, sent: int) -> None:
    reached_the_wait = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        async for chunk in chunked(os.urandom(sent), MiB):
            yield chunk
        reached_the_wait.set()
        await asyncio.Event().wait()  # a client that stops sending
        yield b"never"

    write = asyncio.create_task(subject.store.write("t/b/o", stalling()))
    await asyncio.wait_for(reached_the_wait.wait(), timeout=30)
    if sent > PART_BYTES and subject.s3 is not None:
        assert len(subject.leftovers()) == 1  # the multipart upload is under way
    write.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(write, timeout=30)
    assert subject.stored() == set()
    assert subject.leftovers() == []


async def test_concurrent_writes_each_land_whole(subject: StoreUnderTest) -> None:
    blobs = {f"t/b/{number}": os.urandom(100_000 + number) for number in range(8)}

    written = await asyncio.gather(
        *(subject.store.write(locator, chunked(data, 4096)) for locator, data in blobs.items())
    )

    assert written == [len(data) for data in blobs.values()]
    for locator, data in blobs.items():
        assert await read_all(subject.store, locator) == data


# --------------------------------------------------------------------------------------
# Missing blobs and deletion


async def test_a_missing_blob_is_not_found(subject: StoreUnderTest) -> None:
    await subject.store.write("t/b/o", chunked(b"x", 1))

    for locator in ("t/b/other", "nothing/here", "t/b/o/under-a-blob", "t/b"):
        assert await subject.store.size(locator) is None
        with pytest.raises(BlobNotFound):
            await read_all(subject.store, locator)
        with pytest.raises(BlobNotFound):
            await read_all(subject.store, locator, 0, 0)


async def test_delete_is_idempotent(subject: StoreUnderTest) -> None:
    await subject.store.write("t/b/o", chunked(b"bytes", 2))
    await subject.store.write("t/b/kept", chunked(b"kept", 2))

    await subject.store.delete("t/b/o")
    await subject.store.delete("t/b/o")
    await subject.store.delete("never/written")

    assert await subject.store.size("t/b/o") is None
    assert subject.stored() == {"t/b/kept"}


async def test_delete_prefix_removes_exactly_the_blobs_under_it(subject: StoreUnderTest) -> None:
    for locator in ("up/1/a", "up/1/b", "up/1/deeper/c", "up/10/d", "up/1x", "other/e"):
        await subject.store.write(locator, chunked(locator.encode(), 3))

    assert await subject.store.delete_prefix("up/1") == 3
    assert await subject.store.delete_prefix("up/1/") == 0
    assert await subject.store.delete_prefix("never/written") == 0

    assert subject.stored() == {"up/10/d", "up/1x", "other/e"}
    assert await read_all(subject.store, "up/10/d") == b"up/10/d"


async def test_a_listing_finds_exactly_the_blobs_under_the_prefix(
    subject: StoreUnderTest,
) -> None:
    for locator in ("up/1/a", "up/1/b", "up/1/deeper/c", "up/10/d", "up/1x", "other/e"):
        await subject.store.write(locator, chunked(locator.encode(), 3))

    listed = await list_all(subject.store, "up/1")
    assert {locator: blob.size for locator, blob in listed.items()} == {
        "up/1/a": 6,
        "up/1/b": 6,
        "up/1/deeper/c": 13,
    }
    for blob in listed.values():
        assert abs(utcnow() - blob.modified_at) < timedelta(minutes=1)
    assert await list_all(subject.store, "up/1/") == listed
    assert await list_all(subject.store, "never/written") == {}
    with pytest.raises(ValueError, match="non-empty"):
        await list_all(subject.store, "")


async def test_a_listing_fetches_page_after_page(
    subject: StoreUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_backend, "LIST_PAGE", 2)
    monkeypatch.setattr(s3_backend, "LIST_PAGE", 2)
    written = {f"t/b/{n}" for n in range(7)}
    for locator in written:
        await subject.store.write(locator, chunked(b"x", 1))

    assert set(await list_all(subject.store, "t/b")) == written
    # A listing deleting what it found as it goes (as the orphan sweep does) still ends.
    async with contextlib.aclosing(subject.store.list_blobs("t")) as listing:
        async for blob in listing:
            await subject.store.delete(blob.locator)
    assert subject.stored() == set()


SAFE_ODD_LOCATORS = [
    "t/b/with space",
    "t/b/plus+and%25percent",
    "t/b/ünïcødé-名前",
    "t/b/.hidden",
    "t/b/...",
    "t/b/?query=1&x#fragment",
    "/".join(["x" * 200] * 5),  # long: 1,004 bytes
]


async def test_odd_but_safe_locators_round_trip(subject: StoreUnderTest) -> None:
    for locator in SAFE_ODD_LOCATORS:
        await subject.store.write(locator, chunked(locator.encode(), 100))

    for locator in SAFE_ODD_LOCATORS:
        assert await read_all(subject.store, locator) == locator.encode()
    assert subject.stored() == set(SAFE_ODD_LOCATORS)
    assert await subject.store.delete_prefix("t/b") == len(SAFE_ODD_LOCATORS) - 1
    assert subject.stored() == {SAFE_ODD_LOCATORS[-1]}


# --------------------------------------------------------------------------------------
# Unsafe locators

UNSAFE_LOCATORS = [
    "",
    "/etc/passwd",
    "../outside",
    "a/../../outside",
    "a/./b",
    ".",
    "a//b",
    "a/b/",
    "a\\..\\b",
    "nul\x00byte",
    "new\nline",
    "x" * 201,
    "/".join(["x" * 200] * 5) + "/xxxxxxxxxxxxxxxxxxxx",  # 1,025 bytes
]


@pytest.mark.parametrize("locator", UNSAFE_LOCATORS)
async def test_an_unsafe_locator_is_refused(subject: StoreUnderTest, locator: str) -> None:
    with pytest.raises(ValueError, match="locator"):
        await subject.store.write(locator, chunked(b"bytes", 5))
    with pytest.raises(ValueError, match="locator"):
        await read_all(subject.store, locator)
    with pytest.raises(ValueError, match="locator"):
        await subject.store.size(locator)
    with pytest.raises(ValueError, match="locator"):
        await subject.store.delete(locator)

    assert subject.stored() == set()
    assert subject.leftovers() == []


@pytest.mark.parametrize("prefix", ["", "/", "..", "../x", "a//b", "/abs"])
async def test_an_unsafe_prefix_is_refused(subject: StoreUnderTest, prefix: str) -> None:
    await subject.store.write("a/b", chunked(b"kept", 4))

    with pytest.raises(ValueError, match="locator"):
        await subject.store.delete_prefix(prefix)

    assert subject.stored() == {"a/b"}


# --------------------------------------------------------------------------------------
# A store that is down


async def every_call(store: BlobStore) -> list[tuple[str, Exception | None]]:
    """Each operation on ``store`` with the exception it raised (``None``: none)."""
    outcomes: list[tuple[str, Exception | None]] = []
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "write": lambda: store.write("t/b/o", chunked(b"bytes", 5)),
        "read": lambda: read_all(store, "t/b/o"),
        "read-range": lambda: read_all(store, "t/b/o", 1, 3),
        "size": lambda: store.size("t/b/o"),
        "delete": lambda: store.delete("t/b/o"),
        "delete_prefix": lambda: store.delete_prefix("t/b"),
        "list_blobs": lambda: list_all(store, "t/b"),
    }
    for name, call in calls.items():
        try:
            await asyncio.wait_for(call(), timeout=15)
        except Exception as error:
            outcomes.append((name, error))
        else:
            outcomes.append((name, None))
    return outcomes


async def test_an_s3_endpoint_nobody_listens_on_is_unavailable_quickly() -> None:
    # The default retries (3 attempts, backoff) are part of what must stay quick.
    store = S3BlobStore(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        bucket="keel",
        access_key_id="id",
        secret_access_key="secret-that-must-not-leak",
        connect_timeout=1.0,
    )
    started = time.monotonic()
    try:
        outcomes = await every_call(store)
    finally:
        await store.aclose()

    assert time.monotonic() - started < 17  # seven calls, each a second or so (one retry)
    for name, error in outcomes:
        assert isinstance(error, BackendUnavailable), (name, error)
        assert "secret-that-must-not-leak" not in str(error)


async def test_a_stopped_s3_server_is_unavailable() -> None:
    with moto_server() as s3:
        store = s3.blob_store(max_attempts=1, connect_timeout=1.0)
        await store.write("t/b/o", chunked(b"bytes", 5))
    try:
        outcomes = await every_call(store)
    finally:
        await store.aclose()

    for name, error in outcomes:
        assert isinstance(error, BackendUnavailable), (name, error)


async def test_an_s3_endpoint_that_never_answers_is_unavailable_after_the_read_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing, keeps the connection

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = S3BlobStore(
        endpoint_url=f"http://127.0.0.1:{port}",
        bucket="keel",
        access_key_id="id",
        secret_access_key="secret",
        read_timeout=0.5,
        max_attempts=1,
    )
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(store.size("t/b/o"), timeout=10)
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(store.write("t/b/o", chunked(b"bytes", 5)), timeout=10)
        assert time.monotonic() - started < 5
        assert accepted  # the connections were made: it is the answer that never came
    finally:
        await store.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


def test_the_local_store_asks_for_writeback_every_writeback_bytes(tmp_path: Path) -> None:
    """Linux: ``sync_file_range`` starts the disk on each WRITEBACK_BYTES as they are written
    (the fsync before the rename then waits for the tail only); the bytes are unchanged."""
    if local_backend._sync_file_range() is None:
        pytest.skip("sync_file_range(2) is Linux's")
    step = local_backend.WRITEBACK_BYTES // 3 + 1
    data = os.urandom(3 * step + local_backend.WRITEBACK_BYTES)
    requested_up_to = []
    with open(tmp_path / "blob", "wb") as file:
        written_back = 0
        for offset in range(0, len(data), step):
            written_back = local_backend._write(file, [data[offset : offset + step]], written_back)
            requested_up_to.append(written_back)
    # Nothing until WRITEBACK_BYTES were written, then the whole range written so far.
    assert requested_up_to[:2] == [0, 0]
    assert requested_up_to[2] == 3 * step
    assert requested_up_to[3] == 3 * step  # the next request waits for WRITEBACK_BYTES more
    assert requested_up_to[-1] == len(data)
    assert (tmp_path / "blob").read_bytes() == data


async def test_a_local_root_that_cannot_be_created_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    store = LocalBlobStore(tmp_path / "a-file" / "storage")

    with pytest.raises(BackendUnavailable):
        await store.write("t/b/o", chunked(b"bytes", 5))
    assert await store.size("t/b/o") is None
    with pytest.raises(BlobNotFound):
        await read_all(store, "t/b/o")


# --------------------------------------------------------------------------------------
# Memory


@pytest.mark.parametrize("kind", ["local", "s3"])
async def test_a_64_mib_write_holds_a_small_part_of_it_in_memory(kind: str, tmp_path: Path) -> None:
    total = 64 * MiB

    async def sixty_four_mib() -> AsyncIterator[bytes]:
        for number in range(total // MiB):
            yield bytes([number % 256]) * MiB  # a new object each time: a store keeping
            # references to the chunks it was given would hold them all

    with contextlib.ExitStack() as stack:
        if kind == "local":
            store: BlobStore = LocalBlobStore(tmp_path / "storage")
        else:
            # In a process of its own: moto keeps what it is sent in memory, and tracemalloc
            # counts every thread of this one.
            store = stack.enter_context(moto_server_process()).blob_store()
        try:
            await store.size("warm/up")  # the S3 client and its connection, before measuring
            tracemalloc.start()
            try:
                written = await store.write("big", sixty_four_mib())
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert written == total
            assert await store.size("big") == total
        finally:
            await store.aclose()

    # Local: the chunks gathered before each hop to the disk thread (1 MiB) and the next one
    # the stream makes (measured 3 MiB). S3: the part being sent and the one being filled
    # (8 MiB each; measured 19 MiB). Either would be 64 MiB if the store held the stream.
    assert peak < (8 * MiB if kind == "local" else 24 * MiB), peak
