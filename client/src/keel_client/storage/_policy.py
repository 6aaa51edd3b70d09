"""The storage SDK's pure decisions: paths, ranges, multipart plans, polling, failures."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from keel_client.http import ClientError, KeelHTTPError
from keel_client.storage._models import BucketPolicy

__all__ = [
    "API",
    "MIN_PART_BYTES",
    "check_transfer",
    "is_fatal",
    "key_path",
    "poll_delays",
    "range_header",
    "seconds",
    "segment",
    "uses_multipart",
]

API = "/storage/v1"

#: The smallest part Keel takes, but for the last one (S3's rule).
MIN_PART_BYTES = 5 * 1024 * 1024
#: The most parts one upload may have.
MAX_PARTS = 10_000


def segment(value: str) -> str:
    """``value`` as one path segment (a bucket's name)."""
    if not value:
        raise ValueError("a bucket's name is not empty")
    return quote(value, safe="")


def key_path(key: str) -> str:
    """An object key as path segments, each percent-encoded, ``.`` and ``..`` included:
    a URL library would otherwise resolve them away, and Keel must see (and refuse) them."""
    segments = []
    for part in key.split("/"):
        if part in (".", ".."):
            segments.append(part.replace(".", "%2E"))
        else:
            segments.append(quote(part, safe=""))
    return "/".join(segments)


def range_header(byte_range: tuple[int, int | None] | None) -> str | None:
    """``(start, end)`` — bytes ``[start, end)``, ``end`` ``None`` for the rest, a negative
    ``start`` for the last ``-start`` bytes — as a ``Range`` header."""
    if byte_range is None:
        return None
    start, end = byte_range
    if start < 0:
        if end is not None:
            raise ValueError("a suffix range (negative start) has no end")
        return f"bytes={start}"
    if end is None:
        return f"bytes={start}-"
    if end <= start:
        raise ValueError("a range's end is after its start: (start, end) is [start, end)")
    return f"bytes={start}-{end - 1}"


def uses_multipart(size: int | None, *, threshold: int, part_size: int) -> bool | None:
    """Whether an upload of ``size`` bytes goes in parts; ``None`` when the size is unknown
    (decided once the first part's worth has been read)."""
    if size is None:
        return None
    return size > threshold and size > part_size


def check_transfer(*, part_size: int, concurrency: int, size: int | None) -> None:
    """Refuse settings Keel would refuse later, after bytes were sent."""
    if part_size < MIN_PART_BYTES:
        raise ValueError(f"part_size is at least {MIN_PART_BYTES} bytes (5 MiB)")
    if concurrency < 1:
        raise ValueError("concurrency is at least 1")
    if size is not None and -(-size // part_size) > MAX_PARTS:
        raise ValueError(f"{size} bytes in {part_size}-byte parts is over {MAX_PARTS} parts")


def seconds(expires_in: float | timedelta) -> int:
    """An expiry as whole seconds (at least 1)."""
    value = expires_in.total_seconds() if isinstance(expires_in, timedelta) else expires_in
    if value < 1:
        raise ValueError("expires_in is at least one second")
    return int(value)


def poll_delays(*, first: float = 0.1, factor: float = 1.6, cap: float = 2.0) -> Iterator[float]:
    """The waits between polls of an object's state: 0.1 s, growing to ``cap``."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * factor)


def is_fatal(error: BaseException) -> bool:
    """Whether a failed multipart upload is aborted (Keel refused it: a 4xx other than a
    rate limit or a timeout) or kept for ``resume_upload`` (anything that may pass)."""
    if isinstance(error, ClientError):
        return error.status not in (408, 429)
    return not isinstance(error, KeelHTTPError)


def policy_json(policy: BucketPolicy | Mapping[str, Any] | None) -> dict[str, Any]:
    """A bucket policy as the JSON body Keel takes (Keel's defaults for ``None``)."""
    if policy is None:
        policy = BucketPolicy()
    elif not isinstance(policy, BucketPolicy):
        policy = BucketPolicy.model_validate(dict(policy))
    return policy.model_dump(mode="json")
