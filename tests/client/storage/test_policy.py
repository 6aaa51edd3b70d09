"""The storage SDK's pure pieces: key paths, ranges, part plans, polling, the error for each
refusal, the job arguments of the clean hook, and the public names."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import httpx
import pytest

import keel_client.storage
from keel_client.http import ClientError, TransportError
from keel_client.http._exceptions import error_for_response
from keel_client.storage import (
    CleanObject,
    ContentTypeRefused,
    InvalidStorageRequest,
    ObjectNotFound,
    ObjectNotReady,
    ObjectQuarantined,
    ObjectTooLarge,
    QuotaExceeded,
    RevisionMismatch,
    StorageClient,
    StorageConflict,
    StoragePermissionDenied,
    SyncStorageClient,
    clean_object,
)
from keel_client.storage._exceptions import storage_error
from keel_client.storage._policy import (
    check_transfer,
    is_fatal,
    key_path,
    poll_delays,
    range_header,
    uses_multipart,
)

MIB = 1024 * 1024


def test_a_key_keeps_its_slashes_and_dot_segments_reach_keel_encoded() -> None:
    assert key_path("reports/2026 q1.pdf") == "reports/2026%20q1.pdf"
    assert key_path("a/../b") == "a/%2E%2E/b"
    assert key_path("./x") == "%2E/x"
    assert key_path("a?b#c") == "a%3Fb%23c"
    assert httpx.URL(f"http://k/objects/{key_path('a/../b')}").path == "/objects/a/../b"


def test_a_range_is_start_inclusive_end_exclusive() -> None:
    assert range_header(None) is None
    assert range_header((0, 10)) == "bytes=0-9"
    assert range_header((5, None)) == "bytes=5-"
    assert range_header((-100, None)) == "bytes=-100"
    with pytest.raises(ValueError, match="end"):
        range_header((10, 10))
    with pytest.raises(ValueError, match="suffix"):
        range_header((-5, 3))


def test_multipart_above_the_threshold_unknown_sizes_decided_later() -> None:
    assert uses_multipart(64 * MIB, threshold=64 * MIB, part_size=8 * MIB) is False
    assert uses_multipart(64 * MIB + 1, threshold=64 * MIB, part_size=8 * MIB) is True
    assert uses_multipart(6 * MIB, threshold=1, part_size=8 * MIB) is False  # one part anyway
    assert uses_multipart(None, threshold=64 * MIB, part_size=8 * MIB) is None


def test_transfer_settings_keel_would_refuse_are_refused_before_sending() -> None:
    check_transfer(part_size=5 * MIB, concurrency=1, size=None)
    with pytest.raises(ValueError, match="5 MiB"):
        check_transfer(part_size=MIB, concurrency=4, size=None)
    with pytest.raises(ValueError, match="concurrency"):
        check_transfer(part_size=8 * MIB, concurrency=0, size=None)
    with pytest.raises(ValueError, match="10000 parts"):
        check_transfer(part_size=5 * MIB, concurrency=4, size=10_001 * 5 * MIB)


def test_polls_start_quick_and_back_off_to_two_seconds() -> None:
    delays = list(itertools.islice(poll_delays(), 12))
    assert delays[0] == 0.1
    assert delays == sorted(delays)
    assert delays[-1] == 2.0


def _refusal(status: int, *, problem: dict[str, Any] | None = None, **headers: str) -> ClientError:
    request = httpx.Request("GET", "http://keel.test/storage/v1/buckets/b/objects/k")
    if problem is None:
        response = httpx.Response(status, headers=headers, request=request)
    else:
        body = {"type": "about:blank", "status": status, **problem}
        response = httpx.Response(
            status, json=body, request=request,
            headers={"content-type": "application/problem+json", **headers},
        )  # fmt: skip
    error = error_for_response(response, request_id="r1", url="/storage/v1/buckets/b/objects/k")
    assert isinstance(error, ClientError)
    return error


@pytest.mark.parametrize(
    ("status", "problem", "expected"),
    [
        (404, None, ObjectNotFound),
        (403, {"type": "urn:keel:problem:forbidden"}, StoragePermissionDenied),
        (
            403,
            {"type": "urn:keel:problem:forbidden", "code": "object-quarantined"},
            ObjectQuarantined,
        ),
        (409, {"type": "urn:keel:problem:conflict", "code": "object-not-ready"}, ObjectNotReady),
        (409, {"type": "urn:keel:problem:storage-quota-exceeded"}, QuotaExceeded),
        (409, {"type": "urn:keel:problem:conflict"}, StorageConflict),
        (412, {"type": "urn:keel:problem:precondition-failed"}, RevisionMismatch),
        (413, {"type": "urn:keel:problem:payload-too-large"}, ObjectTooLarge),
        (415, {"type": "urn:keel:problem:unsupported-media-type"}, ContentTypeRefused),
        (400, {"type": "urn:keel:problem:malformed-body"}, InvalidStorageRequest),
        (422, {"type": "urn:keel:problem:validation"}, InvalidStorageRequest),
    ],
)
def test_each_refusal_is_its_typed_error(
    status: int, problem: dict[str, Any] | None, expected: type[Exception]
) -> None:
    error = storage_error(_refusal(status, problem=problem), bucket="b", key="k")
    assert type(error) is expected
    assert (error.bucket, error.key, error.status, error.request_id) == ("b", "k", status, "r1")


def test_not_ready_carries_keels_retry_after() -> None:
    refusal = _refusal(409, problem={"code": "object-not-ready"}, **{"retry-after": "2"})
    error = storage_error(refusal, bucket="b", key="k")
    assert isinstance(error, ObjectNotReady)
    assert error.retry_after == 2.0


def test_a_multipart_upload_is_aborted_on_a_refusal_and_kept_on_what_may_pass() -> None:
    assert is_fatal(_refusal(413))
    assert is_fatal(OSError("the file went away"))
    assert not is_fatal(_refusal(429))
    assert not is_fatal(TransportError("connection refused"))


async def test_clean_object_gives_the_task_one_typed_object_of_the_jobs_arguments() -> None:
    args = {"bucket": "b", "key": "k", "version_id": "v", "size": 3,
            "content_type": "text/plain", "etag": "e" * 64}  # fmt: skip
    seen: list[CleanObject] = []

    @clean_object
    async def process(obj: CleanObject) -> int:
        seen.append(obj)
        return obj.size

    assert process.__name__ == "process"  # a worker registers it under its own name
    assert inspect.iscoroutinefunction(process)
    assert await process(**args) == 3  # a job's object arguments arrive as keywords
    assert await process(args) == 3  # or a list holding the object
    assert seen[0] == seen[1] == CleanObject(**args)
    with pytest.raises(TypeError, match="async"):
        clean_object(lambda obj: None)  # type: ignore[arg-type, return-value]


EXPECTED = {
    "DEFAULT_CONCURRENCY", "DEFAULT_PART_SIZE", "MULTIPART_THRESHOLD", "Bucket", "BucketPolicy",
    "CleanHook", "CleanObject", "ContentTypeRefused", "InvalidStorageRequest", "LockRule",
    "ObjectHead", "ObjectInfo", "ObjectNotFound", "ObjectNotReady", "ObjectPage",
    "ObjectQuarantined", "ObjectState", "ObjectStream", "ObjectTooLarge", "PresignedPost",
    "PresignedURL", "Progress", "QuotaExceeded", "RetentionRule", "RevisionMismatch",
    "StorageClient", "StorageConflict", "StorageError", "StoragePermissionDenied",
    "SyncStorageClient", "Upload", "UploadInterrupted", "UploadPart", "UploadSource",
    "clean_object",
}  # fmt: skip


def test_the_public_names_are_the_curated_list() -> None:
    assert set(keel_client.storage.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(keel_client.storage, name) is not None


def test_the_blocking_face_has_every_call_of_the_async_client() -> None:
    calls = {
        name
        for name, member in vars(StorageClient).items()
        if (inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member))
        and not name.startswith("_")
        and name != "aclose"
    }
    assert calls <= set(vars(SyncStorageClient))
    assert {"upload", "download", "list", "wait_until_clean"} <= calls


def test_a_client_needs_a_url_or_a_shared_pool() -> None:
    with pytest.raises(ValueError, match="base_url"):
        StorageClient()
