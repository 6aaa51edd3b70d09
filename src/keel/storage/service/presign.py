"""Presigning: signed URLs (one GET or PUT of one object) and presigned POST forms (a
browser's upload under a policy), both pointing at Keel and verified without a database hit
(``keel.storage.signing``).

The limits are the service's: a URL or form lives at most ``KEEL_STORAGE__MAX_PRESIGN_SECONDS``
and, for a private bucket, at most :data:`PRIVATE_MAX_SECONDS` (7 days, as S3's SigV4) even
when the platform allows longer; a public bucket's downloads may live the platform's longest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from keel.core.errors import ValidationFailed
from keel.settings import Settings
from keel.storage.schemas import BucketPolicy
from keel.storage.signing import PostPolicy, UrlClaims, sign_post_policy, sign_url_token

#: The longest a private bucket's signed URL or form lives, whatever the platform allows.
PRIVATE_MAX_SECONDS = 7 * 86_400
#: Where the storage service is mounted, and its credential-less routes under it.
SIGNED_PATH = "/storage/v1/signed/"
FORMS_PATH = "/storage/v1/forms/"


@dataclass(frozen=True)
class PresignedUrl:
    url: str
    method: Literal["GET", "PUT"]
    expires_at: datetime


@dataclass(frozen=True)
class PresignedPost:
    url: str
    fields: dict[str, str]
    expires_at: datetime


def longest_presign_seconds(settings: Settings, policy: BucketPolicy) -> int:
    """How long a URL or form of a bucket of ``policy`` may live."""
    longest = settings.storage.max_presign_seconds
    if policy.visibility == "private":
        longest = min(longest, PRIVATE_MAX_SECONDS)
    return longest


def _expiry(settings: Settings, policy: BucketPolicy, expires_in: int, now: float) -> int:
    longest = longest_presign_seconds(settings, policy)
    if not 1 <= expires_in <= longest:
        raise ValidationFailed(
            f"expires_in is 1 to {longest} seconds for this bucket.", field="expires_in"
        )
    return int(now) + expires_in


def public_base_url(settings: Settings, request_base_url: str) -> str:
    """The URL clients reach Keel at: ``KEEL_PUBLIC_URL``, else the request's own base."""
    return (settings.public_url or request_base_url).rstrip("/")


def presign_url(
    settings: Settings,
    signing_key: bytes,
    *,
    tenant_id: str,
    bucket: str,
    policy: BucketPolicy,
    method: Literal["GET", "PUT"],
    key: str,
    expires_in: int,
    base_url: str,
    now: float,
    version_id: str | None = None,
    content_type: str | None = None,
    max_bytes: int | None = None,
    filename: str | None = None,
) -> PresignedUrl:
    """A signed URL for one ``method`` on ``key`` (checked by the caller) of ``bucket``.

    GET may name a version and an attachment ``filename``; PUT may fix the content type the
    upload declares and must match, and a size limit below the bucket's.
    """
    if method == "GET" and (content_type is not None or max_bytes is not None):
        raise ValidationFailed("content_type and max_bytes are for uploads (PUT).")
    if method == "PUT" and (version_id is not None or filename is not None):
        raise ValidationFailed("version_id and filename are for downloads (GET).")
    claims = UrlClaims(
        tenant_id=tenant_id,
        bucket=bucket,
        key=key,
        method=method,
        expires_at=_expiry(settings, policy, expires_in, now),
        version_id=version_id,
        content_type=content_type,
        max_bytes=max_bytes,
        disposition=filename,
    )
    try:
        token = sign_url_token(signing_key, claims)
    except ValueError as error:
        raise ValidationFailed(f"The URL cannot be signed: {error}.") from None
    return PresignedUrl(
        url=f"{public_base_url(settings, base_url)}{SIGNED_PATH}{token}",
        method=method,
        expires_at=datetime.fromtimestamp(claims.expires_at, UTC),
    )


def presign_post(
    settings: Settings,
    signing_key: bytes,
    *,
    tenant_id: str,
    bucket: str,
    policy: BucketPolicy,
    key: str | None,
    key_prefix: str,
    content_types: tuple[str, ...],
    min_bytes: int,
    max_bytes: int,
    expires_in: int,
    base_url: str,
    now: float,
) -> PresignedPost:
    """A POST form's URL and its signed fields: the browser adds ``key`` (given here when
    one exact key is allowed; ``${filename}`` may stand for the file's name), optionally
    ``Content-Type``, and the ``file`` part last."""
    if key is not None and not key.startswith(key_prefix):
        raise ValidationFailed("key must start with key_prefix.", field="key")
    expires_at = _expiry(settings, policy, expires_in, now)
    post_policy = PostPolicy(
        tenant_id=tenant_id,
        bucket=bucket,
        key_prefix=key_prefix,
        key=key,
        content_types=content_types,
        min_bytes=min_bytes,
        max_bytes=max_bytes,
        expires_at=expires_at,
    )
    try:
        signed = sign_post_policy(signing_key, post_policy)
    except ValueError as error:
        raise ValidationFailed(f"The form cannot be signed: {error}.") from None
    fields = {"key": key if key is not None else f"{key_prefix}${{filename}}", **signed}
    return PresignedPost(
        url=f"{public_base_url(settings, base_url)}{FORMS_PATH}{tenant_id}/{bucket}",
        fields=fields,
        expires_at=datetime.fromtimestamp(expires_at, UTC),
    )
