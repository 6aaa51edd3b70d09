"""``StorageClient``: Keel's storage endpoints (``/storage/v1``) — buckets, streamed uploads
(one ``PUT``, or a multipart upload with parts in parallel, resumable), streamed downloads,
presigned URLs and POST forms, object info, and waiting for a version to be scanned.

Every byte goes through Keel (it sizes, types, scans and encrypts it); nothing here reads a
whole file or answer into memory but ``download()`` without a destination, which returns the
bytes. Calls go through the shared resilient client: an upload's or a part's ``PUT`` and a
download are retried like any idempotent call (connection errors, 502-504) when their body
can be read again; a 4xx is a typed :class:`~keel_client.storage.StorageError`.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Unpack, overload

import anyio
import httpx

from keel_client._service import ServiceClient
from keel_client.http import ClientError, KeelHTTPError, RequestOptions
from keel_client.storage._exceptions import (
    ObjectNotFound,
    ObjectNotReady,
    ObjectQuarantined,
    UploadInterrupted,
    storage_error,
)
from keel_client.storage._models import (
    Bucket,
    BucketPolicy,
    ObjectHead,
    ObjectInfo,
    ObjectPage,
    PresignedPost,
    PresignedURL,
    Upload,
    UploadPart,
)
from keel_client.storage._policy import (
    API,
    check_transfer,
    is_fatal,
    key_path,
    policy_json,
    poll_delays,
    range_header,
    seconds,
    segment,
    uses_multipart,
)
from keel_client.storage._sources import Part, Source, UploadSource, source_of
from keel_client.storage._streams import (
    HeldSource,
    ObjectStream,
    Progress,
    Sent,
    as_storage_errors,
    chain_parts,
    check_digest,
    etag_of,
    first_error,
    head_of,
    write_body,
)
from keel_client.storage._transfer import stream_call

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PART_SIZE",
    "MULTIPART_THRESHOLD",
    "StorageClient",
]

MIB = 1024 * 1024
#: Objects larger than this go up in parts.
MULTIPART_THRESHOLD = 64 * MIB
DEFAULT_PART_SIZE = 8 * MIB
#: Parts in flight at once.
DEFAULT_CONCURRENCY = 4

#: Where ``download`` writes: a path, or a binary file open for writing.
Destination = str | os.PathLike[str] | IO[bytes]


class StorageClient(ServiceClient):
    """Keel's storage from a service: buckets, uploads, downloads, presigned URLs.

    Example::

        async with Keel.from_env() as keel:
            await keel.storage.create_bucket("invoices", BucketPolicy(
                allowed_types=["application/pdf"], max_object_bytes=20 * 1024 * 1024))
            info = await keel.storage.upload("invoices", "2026/42.pdf", "/tmp/42.pdf")
            info = await keel.storage.wait_until_clean("invoices", info.key,
                                                       version_id=info.version_id)
            data = await keel.storage.download("invoices", "2026/42.pdf")
            link = await keel.storage.presign_download("invoices", "2026/42.pdf",
                                                       expires_in=300, filename="invoice.pdf")

    Alone: ``StorageClient("https://keel.internal", auth=api_key)`` or
    ``StorageClient.from_env()``, with a pool of its own; or ``api=`` a shared
    ``BaseAPIClient`` (what ``Keel`` does: ``keel.storage``). Per-call ``RequestOptions``
    (``timeout``, ``deadline``, ``max_retries``...) apply to each request of a call; a
    transfer has no overall deadline unless given one.
    """

    # -- buckets -------------------------------------------------------------------------------

    async def create_bucket(
        self,
        name: str,
        policy: BucketPolicy | Mapping[str, Any] | None = None,
        **options: Unpack[RequestOptions],
    ) -> Bucket:
        """Create bucket ``name`` (3-63 of ``a-z 0-9 . -``) with ``policy`` (Keel's defaults
        when ``None``: any type, scanned, encrypted, private). Needs
        ``storage:buckets:write``. The same policy again is a no-op (a retried create);
        another policy on an existing bucket is a :class:`StorageConflict` (``update_bucket``
        replaces a policy)."""
        with as_storage_errors(name):
            return await self.api.put(
                f"{API}/buckets/{segment(name)}",
                json=policy_json(policy),
                response_model=Bucket,
                **options,
            )

    async def get_bucket(self, name: str, **options: Unpack[RequestOptions]) -> Bucket:
        """Bucket ``name``: its policy, usage and ``revision``."""
        with as_storage_errors(name):
            return await self.api.get(
                f"{API}/buckets/{segment(name)}", response_model=Bucket, **options
            )

    async def update_bucket(
        self,
        name: str,
        policy: BucketPolicy | Mapping[str, Any],
        *,
        if_match: int | str,
        **options: Unpack[RequestOptions],
    ) -> Bucket:
        """Replace bucket ``name``'s policy, if its revision is still ``if_match`` (the
        ``revision`` of the :class:`Bucket` read; a :class:`RevisionMismatch` otherwise).
        Keel refuses to remove a lock, shorten a compliance lock or turn versioning off
        under a lock."""
        revision = str(if_match).strip('"')
        with as_storage_errors(name):
            return await self.api.put(
                f"{API}/buckets/{segment(name)}",
                json=policy_json(policy),
                headers={"If-Match": f'"{revision}"'},
                response_model=Bucket,
                **options,
            )

    async def list_buckets(self, **options: Unpack[RequestOptions]) -> builtins.list[Bucket]:
        """The tenant's buckets."""
        with as_storage_errors(None):
            response = await self.api.get(f"{API}/buckets", **options)
        answer = response.json()
        items = answer["buckets"] if isinstance(answer, dict) else answer
        return [Bucket.model_validate(item) for item in items]

    async def delete_bucket(self, name: str, **options: Unpack[RequestOptions]) -> None:
        """Delete bucket ``name``, which must hold no object (``storage:buckets:admin``)."""
        with as_storage_errors(name):
            await self.api.delete(f"{API}/buckets/{segment(name)}", **options)

    # -- uploads -------------------------------------------------------------------------------

    async def upload(
        self,
        bucket: str,
        key: str,
        source: UploadSource,
        *,
        content_type: str | None = None,
        progress: Progress | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        **options: Unpack[RequestOptions],
    ) -> ObjectInfo:
        """Upload ``source`` (bytes, a path, a binary file, or an async iterable of bytes)
        as ``key`` in ``bucket``, streamed in chunks of at most 1 MiB.

        Up to ``multipart_threshold`` bytes: one ``PUT``. Larger: a multipart upload,
        ``part_size`` bytes a part (at least 5 MiB), ``concurrency`` parts in parallel, each
        retried alone; on a failure that may pass it raises :class:`UploadInterrupted`
        (``resume_upload`` sends what is missing), on a refusal it aborts the upload. A
        source of unknown size goes in parts once more than a part's worth has arrived.
        ``content_type`` is what the uploader declares: Keel decides the type from the
        bytes. The answer is the new version (``pending`` until scanned, or ``clean``)."""
        data = source_of(source)
        check_transfer(part_size=part_size, concurrency=concurrency, size=data.size)
        options.setdefault("deadline", None)
        multipart = uses_multipart(data.size, threshold=multipart_threshold, part_size=part_size)
        if multipart is False:
            return await self._put(bucket, key, data, content_type, progress, options)
        parts = data.parts(part_size)
        if multipart is None:
            first = await anext(parts)
            second = await anext(parts, None)
            if second is None:
                return await self._put_part_alone(bucket, key, first, content_type, progress,
                                                  options)  # fmt: skip
            parts = chain_parts(first, second, parts)
        upload = await self.create_upload(bucket, key, content_type=content_type, **options)
        return await self._send_parts(
            bucket, upload, parts, {}, Sent(progress, data.size), concurrency, options
        )

    async def resume_upload(
        self,
        bucket: str,
        upload_id: str,
        source: UploadSource,
        *,
        progress: Progress | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        **options: Unpack[RequestOptions],
    ) -> ObjectInfo:
        """Finish multipart upload ``upload_id`` (of :class:`UploadInterrupted`) from the
        same ``source``: the parts Keel holds whose size and SHA-256 match are kept, the
        others sent. The part size is the one the upload was started with (read from its
        parts when there are two or more)."""
        upload = await self.get_upload(bucket, upload_id, **options)
        existing = {part.number: part for part in upload.parts}
        if len(existing) > 1 or (existing and 1 not in existing):
            part_size = max(part.size for part in existing.values())
        data = source_of(source)
        check_transfer(part_size=part_size, concurrency=concurrency, size=data.size)
        options.setdefault("deadline", None)
        return await self._send_parts(
            bucket, upload, data.parts(part_size), existing, Sent(progress, data.size),
            concurrency, options,
        )  # fmt: skip

    async def create_upload(
        self,
        bucket: str,
        key: str,
        *,
        content_type: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> Upload:
        """Start a multipart upload of ``key`` (``upload`` does it for you)."""
        body: dict[str, Any] = {"key": key}
        if content_type is not None:
            body["content_type"] = content_type
        call: RequestOptions = {"idempotent": True, **options}
        with as_storage_errors(bucket, key):
            return await self.api.post(
                f"{API}/buckets/{segment(bucket)}/uploads",
                json=body,
                response_model=Upload,
                **call,
            )

    async def get_upload(
        self, bucket: str, upload_id: str, **options: Unpack[RequestOptions]
    ) -> Upload:
        """Multipart upload ``upload_id`` with the parts Keel holds."""
        with as_storage_errors(bucket):
            return await self.api.get(
                f"{API}/buckets/{segment(bucket)}/uploads/{segment(upload_id)}",
                response_model=Upload,
                **options,
            )

    async def abort_upload(
        self, bucket: str, upload_id: str, **options: Unpack[RequestOptions]
    ) -> None:
        """Abort multipart upload ``upload_id``: Keel drops its parts."""
        with as_storage_errors(bucket):
            await self.api.delete(
                f"{API}/buckets/{segment(bucket)}/uploads/{segment(upload_id)}", **options
            )

    async def _put(
        self,
        bucket: str,
        key: str,
        data: Source,
        content_type: str | None,
        progress: Progress | None,
        options: RequestOptions,
    ) -> ObjectInfo:
        sent = Sent(progress, data.size)
        headers = {} if data.size is None else {"Content-Length": str(data.size)}
        if content_type is not None:
            headers["Content-Type"] = content_type
        with as_storage_errors(bucket, key):
            response = await stream_call(
                self.api,
                "PUT",
                f"{API}/buckets/{segment(bucket)}/objects/{key_path(key)}",
                body=sent.counted(1, data.body),
                can_retry=data.can_reopen,
                headers=headers,
                **options,
            )
            try:
                await response.aread()
            finally:
                await response.aclose()
        return ObjectInfo.model_validate_json(response.content)

    async def _put_part_alone(
        self,
        bucket: str,
        key: str,
        part: Part,
        content_type: str | None,
        progress: Progress | None,
        options: RequestOptions,
    ) -> ObjectInfo:
        """A stream that ended within its first part: held already, sent in one ``PUT``."""
        held = HeldSource(part)
        return await self._put(bucket, key, held, content_type, progress, options)

    async def _send_parts(
        self,
        bucket: str,
        upload: Upload,
        parts: AsyncIterator[Part],
        existing: dict[int, UploadPart],
        sent: Sent,
        concurrency: int,
        options: RequestOptions,
    ) -> ObjectInfo:
        etags: dict[int, str] = {}
        base = f"{API}/buckets/{segment(bucket)}/uploads/{segment(upload.upload_id)}"

        async def send_part(part: Part) -> None:
            have = existing.get(part.number)
            is_there = have is not None and have.size == part.size
            if is_there and have is not None and await part.sha256() == etag_of(have.etag):
                etags[part.number] = have.etag
                sent.done(part.number, part.size)
                return
            response = await stream_call(
                self.api,
                "PUT",
                f"{base}/parts/{part.number}",
                body=sent.counted(part.number, part.body),
                headers={"Content-Length": str(part.size)},
                **options,
            )
            try:
                await response.aread()
            finally:
                await response.aclose()
            etags[part.number] = UploadPart.model_validate_json(response.content).etag

        async def worker(receive: anyio.abc.ObjectReceiveStream[Part]) -> None:
            async with receive:
                async for part in receive:
                    await send_part(part)

        try:
            try:
                send, receive = anyio.create_memory_object_stream[Part](0)
                async with anyio.create_task_group() as group:
                    async with receive:
                        for _ in range(concurrency):
                            group.start_soon(worker, receive.clone())
                    async with send:
                        async for part in parts:
                            await send.send(part)
            except BaseExceptionGroup as group_error:
                raise first_error(group_error) from None
            body = {
                "parts": [{"number": number, "etag": etags[number]} for number in sorted(etags)]
            }
            call: RequestOptions = {"idempotent": True, **options}
            call["deadline"] = options.get("deadline") or 300.0
            return await self.api.post(
                f"{base}/complete", json=body, response_model=ObjectInfo, **call
            )
        except Exception as error:
            if is_fatal(error):
                with contextlib.suppress(KeelHTTPError):
                    await self.api.delete(base, max_retries=1, deadline=10.0)
                if isinstance(error, ClientError):
                    raise storage_error(error, bucket=bucket, key=upload.key) from error
                raise
            raise UploadInterrupted(
                f"{bucket}/{upload.key}: the multipart upload {upload.upload_id} stopped: "
                f"{error}; resume_upload sends the rest",
                upload_id=upload.upload_id,
                bucket=bucket,
                key=upload.key,
                request_id=getattr(error, "request_id", None),
            ) from error

    # -- downloads -----------------------------------------------------------------------------

    async def _open(
        self,
        bucket: str,
        key: str,
        *,
        version_id: str | None,
        range: tuple[int, int | None] | None,
        options: RequestOptions,
    ) -> httpx.Response:
        params = {} if version_id is None else {"version_id": version_id}
        header = range_header(range)
        headers = {} if header is None else {"Range": header}
        call: RequestOptions = {"deadline": None, **options}
        with as_storage_errors(bucket, key):
            return await stream_call(
                self.api,
                "GET",
                f"{API}/buckets/{segment(bucket)}/objects/{key_path(key)}",
                params=params,
                headers=headers,
                **call,
            )

    def open(
        self,
        bucket: str,
        key: str,
        *,
        version_id: str | None = None,
        range: tuple[int, int | None] | None = None,
        **options: Unpack[RequestOptions],
    ) -> ObjectStream:
        """The object's bytes as an async iterator of chunks (see :class:`ObjectStream`)."""

        def opener() -> Awaitable[httpx.Response]:
            return self._open(bucket, key, version_id=version_id, range=range, options=options)

        return ObjectStream(opener, bucket, key)

    @overload
    async def download(
        self,
        bucket: str,
        key: str,
        destination: None = None,
        *,
        version_id: str | None = None,
        range: tuple[int, int | None] | None = None,
        **options: Unpack[RequestOptions],
    ) -> bytes: ...

    @overload
    async def download(
        self,
        bucket: str,
        key: str,
        destination: Destination,
        *,
        version_id: str | None = None,
        range: tuple[int, int | None] | None = None,
        **options: Unpack[RequestOptions],
    ) -> int: ...

    async def download(
        self,
        bucket: str,
        key: str,
        destination: Destination | None = None,
        *,
        version_id: str | None = None,
        range: tuple[int, int | None] | None = None,
        **options: Unpack[RequestOptions],
    ) -> bytes | int:
        """The newest clean version of ``key`` (or ``version_id``), or bytes
        ``[start, end)`` of it (``range=(start, end)``; ``(start, None)`` to the end;
        ``(-n, None)`` the last ``n``).

        Without ``destination``, the bytes; with a path, the file is written (whole, or not
        at all: a temporary file beside it is renamed) and the byte count returned; with a
        binary file, written into it. A whole object's bytes are checked against its
        SHA-256 ETag. A ``pending`` version is :class:`ObjectNotReady`, an infected or
        rejected one :class:`ObjectQuarantined`."""
        response = await self._open(
            bucket, key, version_id=version_id, range=range, options=options
        )
        try:
            expected = None if range is not None else etag_of(response.headers.get("etag", ""))
            digest = hashlib.sha256() if expected else None
            if destination is None:
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if digest is not None:
                        digest.update(chunk)
                check_digest(digest, expected, bucket, key)
                return bytes(data)
            if isinstance(destination, str | os.PathLike):
                return await self._to_path(response, Path(destination), digest, expected,
                                            bucket, key)  # fmt: skip
            written = await write_body(response, destination.write, digest)
            check_digest(digest, expected, bucket, key)
            return written
        finally:
            await response.aclose()

    @staticmethod
    async def _to_path(
        response: httpx.Response,
        path: Path,
        digest: Any,
        expected: str | None,
        bucket: str,
        key: str,
    ) -> int:
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            file = await anyio.to_thread.run_sync(lambda: partial.open("wb"))
            try:
                written = await write_body(response, file.write, digest)
            finally:
                await anyio.to_thread.run_sync(file.close)
            check_digest(digest, expected, bucket, key)
            await anyio.to_thread.run_sync(os.replace, partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        return written

    async def head(
        self,
        bucket: str,
        key: str,
        *,
        version_id: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> ObjectHead:
        """What a download would get (size, ETag, type), without the bytes."""
        params = {} if version_id is None else {"version_id": version_id}
        with as_storage_errors(bucket, key):
            response = await self.api.request(
                "HEAD",
                f"{API}/buckets/{segment(bucket)}/objects/{key_path(key)}",
                params=params,
                **options,
            )
        return head_of(response)

    # -- objects -------------------------------------------------------------------------------

    async def info(
        self,
        bucket: str,
        key: str,
        *,
        versions: bool = False,
        **options: Unpack[RequestOptions],
    ) -> ObjectInfo:
        """The newest version of ``key`` whatever its state (``reason`` says why one is
        infected or rejected); ``versions=True`` lists every version too."""
        params = {"versions": "true"} if versions else {}
        with as_storage_errors(bucket, key):
            return await self.api.get(
                f"{API}/buckets/{segment(bucket)}/info/{key_path(key)}",
                params=params,
                response_model=ObjectInfo,
                **options,
            )

    async def delete(
        self,
        bucket: str,
        key: str,
        *,
        version_id: str | None = None,
        bypass_governance: bool = False,
        **options: Unpack[RequestOptions],
    ) -> None:
        """Delete ``key`` (a versioned bucket keeps a delete marker) or one version of it.
        A compliance lock or a legal hold refuses; a governance lock yields to
        ``bypass_governance`` with ``storage:objects:admin``."""
        params = {} if version_id is None else {"version_id": version_id}
        headers = {"X-Keel-Bypass-Governance": "true"} if bypass_governance else {}
        with as_storage_errors(bucket, key):
            await self.api.delete(
                f"{API}/buckets/{segment(bucket)}/objects/{key_path(key)}",
                params=params,
                headers=headers,
                **options,
            )

    async def wait_until_clean(
        self,
        bucket: str,
        key: str,
        *,
        version_id: str | None = None,
        timeout: float = 60.0,
    ) -> ObjectInfo:
        """Poll the version (``version_id``, or the newest) until it is ``clean``, waiting
        0.1 s and up to 2 s between polls. Infected or rejected: :class:`ObjectQuarantined`
        with the ``reason``; still pending after ``timeout`` seconds: :class:`ObjectNotReady`.
        Each poll is an ``info`` call with the client's defaults."""
        give_up_at = time.monotonic() + timeout
        for delay in poll_delays():
            info = await self._version(bucket, key, version_id)
            if info.state == "clean":
                return info
            if info.is_quarantined:
                raise ObjectQuarantined(
                    f"{bucket}/{key}: version {info.version_id} is {info.state}: {info.reason}",
                    state=info.state,
                    reason=info.reason,
                    bucket=bucket,
                    key=key,
                )
            left = give_up_at - time.monotonic()
            if left <= 0:
                raise ObjectNotReady(
                    f"{bucket}/{key}: version {info.version_id} still {info.state} after "
                    f"{timeout} s",
                    bucket=bucket,
                    key=key,
                )
            await anyio.sleep(min(delay, left))
        raise AssertionError("poll_delays never ends")  # pragma: no cover

    async def _version(self, bucket: str, key: str, version_id: str | None) -> ObjectInfo:
        if version_id is None:
            return await self.info(bucket, key)
        info = await self.info(bucket, key, versions=True)
        for version in [info, *(info.versions or [])]:
            if version.version_id == version_id:
                return version
        raise ObjectNotFound(f"{bucket}/{key}: no version {version_id}", bucket=bucket,
                             key=key, status=404)  # fmt: skip

    # -- presigning ----------------------------------------------------------------------------

    async def presign_upload(
        self,
        bucket: str,
        key: str,
        *,
        expires_in: float | timedelta,
        content_type: str | None = None,
        max_bytes: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> PresignedURL:
        """A URL that takes one ``PUT`` of the object's body without a credential until it
        expires (at most ``max_bytes``, with ``content_type`` when given): for a browser or
        another service. The bytes pass the bucket's pipeline like any upload."""
        body: dict[str, Any] = {"method": "PUT", "key": key, "expires_in": seconds(expires_in)}
        if content_type is not None:
            body["content_type"] = content_type
        if max_bytes is not None:
            body["max_bytes"] = max_bytes
        return await self._presign(bucket, key, body, options)

    async def presign_download(
        self,
        bucket: str,
        key: str,
        *,
        expires_in: float | timedelta,
        filename: str | None = None,
        version_id: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> PresignedURL:
        """A URL that reads the object (``GET``, ``HEAD``, ``Range``) without a credential
        until it expires; ``filename``: downloaded as an attachment of that name."""
        body: dict[str, Any] = {"method": "GET", "key": key, "expires_in": seconds(expires_in)}
        if filename is not None:
            body["filename"] = filename
        if version_id is not None:
            body["version_id"] = version_id
        return await self._presign(bucket, key, body, options)

    async def _presign(
        self, bucket: str, key: str, body: dict[str, Any], options: RequestOptions
    ) -> PresignedURL:
        call: RequestOptions = {"idempotent": True, **options}
        with as_storage_errors(bucket, key):
            return await self.api.post(
                f"{API}/buckets/{segment(bucket)}/presign",
                json=body,
                response_model=PresignedURL,
                **call,
            )

    async def presign_post(
        self,
        bucket: str,
        *,
        key: str | None = None,
        key_prefix: str | None = None,
        content_types: Sequence[str] = ("*/*",),
        max_bytes: int,
        min_bytes: int = 0,
        expires_in: float | timedelta,
        **options: Unpack[RequestOptions],
    ) -> PresignedPost:
        """A browser form's target and hidden fields: a ``POST`` of multipart/form-data to
        ``url`` with ``fields``, a ``key`` field (under ``key_prefix``, unless signed for one
        ``key``) and the ``file`` part last; Keel refuses a file outside ``min_bytes``..
        ``max_bytes`` or of another type than ``content_types``."""
        if (key is None) == (key_prefix is None):
            raise ValueError("give key (one object) or key_prefix (any key under it)")
        if isinstance(content_types, str):
            raise TypeError("content_types is a sequence of media types, not one string")
        body: dict[str, Any] = {
            "content_types": list(content_types),
            "min_bytes": min_bytes,
            "max_bytes": max_bytes,
            "expires_in": seconds(expires_in),
        }
        if key is not None:
            body["key"] = key
        else:
            body["key_prefix"] = key_prefix
        call: RequestOptions = {"idempotent": True, **options}
        with as_storage_errors(bucket, key):
            return await self.api.post(
                f"{API}/buckets/{segment(bucket)}/presign-post",
                json=body,
                response_model=PresignedPost,
                **call,
            )

    # -- listing (last: ``list`` names a method below this point) -------------------------------

    async def list_page(
        self,
        bucket: str,
        *,
        prefix: str = "",
        cursor: str | None = None,
        limit: int = 100,
        **options: Unpack[RequestOptions],
    ) -> ObjectPage:
        """One page of ``bucket``'s objects under ``prefix`` (``cursor``: the previous
        page's ``next_cursor``)."""
        params: dict[str, str | int] = {"limit": limit}
        if prefix:
            params["prefix"] = prefix
        if cursor is not None:
            params["cursor"] = cursor
        with as_storage_errors(bucket):
            return await self.api.get(
                f"{API}/buckets/{segment(bucket)}/objects",
                params=params,
                response_model=ObjectPage,
                **options,
            )

    async def list(
        self,
        bucket: str,
        *,
        prefix: str = "",
        limit: int = 100,
        **options: Unpack[RequestOptions],
    ) -> AsyncIterator[ObjectPage]:
        """Every page of ``bucket``'s objects under ``prefix``, ``limit`` a page::

        async for page in keel.storage.list("invoices", prefix="2026/"):
            for obj in page.objects:
                print(obj.key, obj.size, obj.state)
        """
        cursor: str | None = None
        while True:
            page = await self.list_page(bucket, prefix=prefix, cursor=cursor, limit=limit,
                                        **options)  # fmt: skip
            yield page
            if not page.next_cursor:
                return
            cursor = page.next_cursor
