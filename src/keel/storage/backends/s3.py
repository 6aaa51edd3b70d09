"""The S3 blob store: blobs as objects under an optional prefix in one bucket of any
S3-compatible store, through ``aiobotocore`` (botocore's request signing, retries and error
model on aiohttp; the choice and why in ``docs/architecture.md``).

A write shorter than :data:`PART_BYTES` is one ``PutObject``; a longer one is a multipart
upload of :data:`PART_BYTES` parts (the last one shorter), completed only once the stream
has ended, and aborted when the stream fails, the store fails or the task is cancelled. The
write holds at most two parts (one being sent, the next being filled) and the chunk being
added, whatever the blob's size. An abort that cannot reach the store leaves an incomplete
upload behind: give the bucket a lifecycle rule that aborts incomplete multipart uploads
after a day (``AbortIncompleteMultipartUpload``) as the backstop.

Addressing is path-style by default (``http://host/bucket/key``), which moto and most
S3-compatible stores need; AWS takes either. Checksums are sent and checked only where the
API requires them (``when_required``): the newer default (a CRC32 on every request) is
refused by several S3-compatible stores, and reads are checked by the service's own SHA-256
(or, encrypted, by the AEAD's tags).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Coroutine, Iterator
from typing import Any, Literal

import aiohttp
import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from keel.core.logging import get_logger
from keel.storage.backends.base import (
    CHUNK_BYTES,
    LIST_PAGE,
    BackendUnavailable,
    BlobNotFound,
    ListedBlob,
    check_range,
    locator_segments,
    prefix_segments,
)

log = get_logger(__name__)

#: The size of a multipart upload's parts (S3: at least 5 MiB but for the last, at most
#: 10,000 parts: a blob of up to 78 GiB).
PART_BYTES = 8 * 1024 * 1024
MAX_PARTS = 10_000

#: The error codes S3 answers for a missing object (``HeadObject`` has no body: its code is
#: the status).
_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404"})

#: Clean-up tasks (aborting an upload) that outlive a cancelled write: held here so they are
#: not collected before they finish.
_background: set[asyncio.Task[None]] = set()


class S3BlobStore:
    """Blobs as objects in one S3 bucket::

        store = S3BlobStore(
            endpoint_url="http://127.0.0.1:9000", bucket="keel", prefix="blobs",
            access_key_id="...", secret_access_key=SecretStr("..."),
        )
        await store.write("t1/b1/o1", chunks)  # the object "blobs/t1/b1/o1"
        await store.aclose()

    Without ``access_key_id`` the credentials come from botocore's usual chain (the
    environment, a profile, an instance or task role). One client, created on first use,
    serves every call until :meth:`aclose`. ``max_attempts`` counts the first try (botocore's
    "standard" retries: connection errors, throttling and 5xx answers, after a random pause
    of up to a second): two, so that a store that is down fails a call within about
    ``2 * connect_timeout + 1`` seconds and the API answers 503 instead of hanging.
    """

    name = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        prefix: str = "",
        access_key_id: str | None = None,
        secret_access_key: SecretStr | str | None = None,
        addressing_style: Literal["path", "virtual"] = "path",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 2,
        max_pool_connections: int = 32,
    ) -> None:
        if not bucket:
            raise ValueError("the S3 store needs a bucket")
        prefix = prefix.strip("/")
        if prefix:
            locator_segments(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self._endpoint_url = endpoint_url
        self._region = region
        self._access_key_id = access_key_id
        self._secret_access_key = (
            secret_access_key.get_secret_value()
            if isinstance(secret_access_key, SecretStr)
            else secret_access_key
        )
        self._config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            max_pool_connections=max_pool_connections,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._exit_stack = contextlib.AsyncExitStack()

    def key(self, locator: str) -> str:
        """The object key of the blob at ``locator`` (:class:`ValueError` if unsafe)."""
        locator_segments(locator)
        return self.prefix + locator

    async def write(self, locator: str, chunks: AsyncIterable[bytes]) -> int:
        key = self.key(locator)
        client = await self._connect()
        # The part being filled is the request body itself: aiohttp streams a BytesIO it
        # can take the buffer of without a copy, in pieces as the socket drains (bytes
        # would be copied whole into the transport's buffer: +8 MiB a part, measured).
        part = io.BytesIO()
        parts: list[dict[str, Any]] = []
        # One part is sent while the next one fills: the incoming stream never waits for
        # the store unless the store is the slower of the two (memory: two parts).
        sending: asyncio.Task[dict[str, Any]] | None = None
        upload_id: str | None = None
        written = 0
        committing = False
        try:
            async for chunk in chunks:
                written += len(chunk)
                view = memoryview(chunk)
                while len(view) >= (room := PART_BYTES - part.tell()):
                    part.write(view[:room])
                    view = view[room:]
                    if upload_id is None:
                        with _translate("create multipart upload"):
                            created = await client.create_multipart_upload(
                                Bucket=self.bucket, Key=key
                            )
                        upload_id = created["UploadId"]
                    if sending is not None:
                        parts.append(await sending)
                    sending = asyncio.create_task(
                        self._upload_part(client, key, upload_id, len(parts) + 1, part)
                    )
                    part = io.BytesIO()
                part.write(view)
            if sending is not None:
                parts.append(await sending)
                sending = None
            if upload_id is None:
                committing = True
                part.seek(0)
                with _translate("put"):
                    await client.put_object(Bucket=self.bucket, Key=key, Body=part)
            else:
                if part.tell():
                    parts.append(
                        await self._upload_part(client, key, upload_id, len(parts) + 1, part)
                    )
                committing = True
                with _translate("complete multipart upload"):
                    await client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    )
        except BaseException as error:
            if sending is not None:
                sending.cancel()
                with contextlib.suppress(BaseException):
                    await sending
            # Only when the store's answer to the final request is unknown (a cancellation,
            # a read timeout, a lost connection) may the object exist: remove it, since the
            # caller is told the write failed. A refusal the store answered, or a connection
            # that never opened, created nothing.
            outcome_unknown = committing and not isinstance(
                error.__cause__, (ClientError, botocore.exceptions.ConnectionError)
            )
            await _run_to_the_end(self._clean_up(client, key, upload_id, outcome_unknown))
            raise
        return written

    async def _upload_part(
        self, client: Any, key: str, upload_id: str, number: int, body: io.BytesIO
    ) -> dict[str, Any]:
        if number > MAX_PARTS:
            raise ValueError(f"a blob on S3 is at most {MAX_PARTS} parts of {PART_BYTES} bytes")
        body.seek(0)
        with _translate("upload part"):
            uploaded = await client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
        return {"PartNumber": number, "ETag": uploaded["ETag"]}

    async def _clean_up(
        self, client: Any, key: str, upload_id: str | None, delete_object: bool
    ) -> None:
        try:
            if upload_id is not None:
                try:
                    await client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
                except ClientError:
                    if not delete_object:
                        raise
                    # NoSuchUpload: the completion went through before the failure.
            if delete_object:
                await client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError, aiohttp.ClientError, OSError) as error:
            # The bucket's lifecycle rule for incomplete uploads is the backstop (see the
            # module's docstring): the write fails either way.
            log.warning(
                "storage.s3.clean_up_failed",
                key=key,
                upload_id=upload_id,
                error=type(error).__name__,
            )

    async def read(
        self, locator: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        check_range(start, end)
        key = self.key(locator)
        client = await self._connect()
        if end == start:
            # An empty range cannot be asked for: only whether the blob exists.
            if await self.size(locator) is None:
                raise BlobNotFound(locator)
            return
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            with _translate("read"):
                response = await client.get_object(**request)
        except BackendUnavailable as error:
            code = _error_code(error.__cause__)
            if code in _NOT_FOUND:
                raise BlobNotFound(locator) from None
            if code == "InvalidRange":  # the range starts at or past the blob's end
                return
            raise
        body = response["Body"]
        try:
            with _translate("read"):
                while chunk := await body.read(CHUNK_BYTES):
                    yield chunk
        finally:
            body.close()

    async def size(self, locator: str) -> int | None:
        key = self.key(locator)
        client = await self._connect()
        try:
            with _translate("head"):
                response = await client.head_object(Bucket=self.bucket, Key=key)
        except BackendUnavailable as error:
            if _error_code(error.__cause__) in _NOT_FOUND:
                return None
            raise
        return int(response["ContentLength"])

    async def delete(self, locator: str) -> None:
        key = self.key(locator)
        client = await self._connect()
        with _translate("delete"):
            await client.delete_object(Bucket=self.bucket, Key=key)

    async def delete_prefix(self, prefix: str) -> int:
        key_prefix = self.prefix + "/".join(prefix_segments(prefix)) + "/"
        client = await self._connect()
        removed = 0
        with _translate("delete"):
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=key_prefix):
                objects = [{"Key": item["Key"]} for item in page.get("Contents", ())]
                if not objects:
                    continue
                answer = await client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
                if errors := answer.get("Errors"):
                    raise BackendUnavailable(
                        f"s3: delete failed for {len(errors)} blobs: {errors[0].get('Code')}"
                    )
                removed += len(objects)
        return removed

    async def list_blobs(self, prefix: str) -> AsyncGenerator[ListedBlob, None]:
        key_prefix = self.prefix + "/".join(prefix_segments(prefix)) + "/"
        client = await self._connect()
        paginator = client.get_paginator("list_objects_v2")
        # One page is fetched when the one before has been consumed (aiobotocore's page
        # iterator is an async generator).
        pages = aiter(
            paginator.paginate(
                Bucket=self.bucket, Prefix=key_prefix, PaginationConfig={"PageSize": LIST_PAGE}
            )
        )
        try:
            while True:
                with _translate("list"):
                    page = await anext(pages, None)
                if page is None:
                    return
                for item in page.get("Contents", ()):
                    yield ListedBlob(
                        locator=item["Key"].removeprefix(self.prefix),
                        size=int(item["Size"]),
                        modified_at=item["LastModified"],
                    )
        finally:
            await pages.aclose()

    async def aclose(self) -> None:
        async with self._client_lock:
            self._client = None
            await self._exit_stack.aclose()

    async def _connect(self) -> Any:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    with _translate("connect"):
                        context = get_session().create_client(
                            "s3",
                            region_name=self._region,
                            endpoint_url=self._endpoint_url,
                            aws_access_key_id=self._access_key_id,
                            aws_secret_access_key=self._secret_access_key,
                            config=self._config,
                        )
                        client = await self._exit_stack.enter_async_context(context)
                    client.meta.events.register("before-call.s3", _without_expect_continue)
                    self._client = client
        return self._client


@contextlib.contextmanager
def _translate(action: str) -> Iterator[None]:
    """The store's failures as :class:`BackendUnavailable` (the cause kept, for the error
    code): an answer refusing the request, a connection refused or lost, a timeout, missing
    credentials. The message names the error, never a credential."""
    try:
        yield
    except ClientError as error:
        code = _error_code(error) or "error"
        raise BackendUnavailable(f"s3: {action} failed: {code}") from error
    except (BotoCoreError, aiohttp.ClientError, OSError) as error:  # OSError: TimeoutError too
        raise BackendUnavailable(f"s3: {action} failed: {type(error).__name__}") from error


def _without_expect_continue(params: dict[str, Any], **_: Any) -> None:
    """Drop the ``Expect: 100-continue`` botocore puts on every upload: aiohttp waits for
    the ``100 Continue`` with no timeout at all, so a store that accepts the connection and
    never answers would hang the write for ever (the read timeout covers the rest)."""
    params.get("headers", {}).pop("Expect", None)


def _error_code(error: BaseException | None) -> str:
    if not isinstance(error, ClientError):
        return ""
    return str(error.response.get("Error", {}).get("Code", ""))


async def _run_to_the_end(clean_up: Coroutine[Any, Any, None]) -> None:
    """Await ``clean_up`` shielded from a cancellation: when the waiting task is cancelled
    (again) the clean-up still finishes in the background."""
    task = asyncio.ensure_future(clean_up)
    _background.add(task)
    task.add_done_callback(_background.discard)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)
