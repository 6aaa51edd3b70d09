"""The storage service's wire models: bucket policies, object info, uploads, presigning."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keel.core.context import PLATFORM_QUEUE_PREFIX

BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
#: Largest key, in bytes of UTF-8 (as S3).
MAX_KEY_BYTES = 1024
#: The largest size or count a policy or quota may name: JSON's safe integers (2**53 - 1, the
#: audit log's canonical JSON holds no larger), about 9 PB.
MAX_AMOUNT = 2**53 - 1
MEDIA_PATTERN = re.compile(
    r"^(\*|[a-z0-9][a-z0-9!#$&^_.+-]{0,126})/(\*|[a-z0-9][a-z0-9!#$&^_.+-]{0,126})$"
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LockRule(Strict):
    """Object lock: every new version is retained ``days`` days in ``mode``."""

    mode: Literal["governance", "compliance"]
    days: int = Field(ge=1, le=36_500)


class RetentionRule(Strict):
    """No version may be deleted before ``min_days``; versions older than ``max_days`` are
    deleted by the lifecycle sweep (unless locked or on legal hold)."""

    min_days: int = Field(default=0, ge=0, le=36_500)
    max_days: int | None = Field(default=None, ge=1, le=36_500)

    @model_validator(mode="after")
    def _ordered(self) -> RetentionRule:
        if self.max_days is not None and self.max_days < self.min_days:
            raise ValueError("max_days must not be below min_days")
        return self


class CleanHook(Strict):
    """A job enqueued on the jobs service for every version that becomes clean: the fleet's
    worker processes uploads (``keel_client.storage``'s hook)."""

    queue: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    task: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")

    @field_validator("queue")
    @classmethod
    def _fleet_queue(cls, value: str) -> str:
        if value.startswith(PLATFORM_QUEUE_PREFIX):
            raise ValueError(f"queues named {PLATFORM_QUEUE_PREFIX}* are Keel's own")
        return value


class BucketPolicy(Strict):
    #: Media types (``image/*``, ``application/pdf``, ``*/*``) decided from the bytes.
    allowed_types: list[str] = Field(default_factory=lambda: ["*/*"], min_length=1, max_length=64)
    #: ``None``: the platform's ``KEEL_STORAGE__MAX_OBJECT_BYTES``.
    max_object_bytes: int | None = Field(default=None, ge=1, le=MAX_AMOUNT)
    #: Every version is scanned by clamd before anyone can read it.
    scan: bool = True
    #: Versions are encrypted at rest with a data key of their own.
    encrypted: bool = True
    versioning: bool = False
    lock: LockRule | None = None
    retention: RetentionRule = Field(default_factory=RetentionRule)
    #: ``public``: presigned GETs may live up to the platform's longest, and downloads carry
    #: ``Cache-Control: public``; never anonymous listing or unsigned reads.
    visibility: Literal["private", "public"] = "private"
    on_clean: CleanHook | None = None
    #: Versioned buckets: older versions beyond this many are pruned by the lifecycle sweep.
    noncurrent_versions_keep: int | None = Field(default=None, ge=0, le=10_000)
    quota_bytes: int | None = Field(default=None, ge=0, le=MAX_AMOUNT)
    quota_objects: int | None = Field(default=None, ge=0, le=MAX_AMOUNT)

    @field_validator("allowed_types")
    @classmethod
    def _media_patterns(cls, value: list[str]) -> list[str]:
        patterns = []
        for item in value:
            pattern = item.strip().lower()
            if not MEDIA_PATTERN.match(pattern) or (pattern.startswith("*/") and pattern != "*/*"):
                raise ValueError(f"{item!r} is not a media type or pattern (image/*, */*)")
            patterns.append(pattern)
        return list(dict.fromkeys(patterns))


class BucketOut(BaseModel):
    name: str
    policy: BucketPolicy
    used_bytes: int
    used_objects: int
    revision: int
    created_at: datetime
    updated_at: datetime


class ObjectInfo(BaseModel):
    bucket: str
    key: str
    version_id: str
    state: Literal["pending", "clean", "infected", "rejected"]
    #: Why a version is infected or rejected.
    reason: str | None = None
    is_delete_marker: bool = False
    size: int
    content_type: str
    declared_content_type: str | None = None
    etag: str
    encrypted: bool
    lock_mode: Literal["governance", "compliance"] | None = None
    retain_until: datetime | None = None
    legal_hold: bool = False
    created_at: datetime
    clean_at: datetime | None = None


class BucketList(BaseModel):
    buckets: list[BucketOut]


class Usage(BaseModel):
    """Limits (``None``: none) and what counts against them."""

    quota_bytes: int | None = None
    quota_objects: int | None = None
    used_bytes: int
    used_objects: int


class BucketUsage(Usage):
    name: str


class TenantUsage(BaseModel):
    """``GET /usage``: the tenant's totals and limits, and each bucket's."""

    tenant: Usage
    buckets: list[BucketUsage]


class TenantQuotaIn(Strict):
    """``PUT /quota``: the tenant's limits across its buckets (``null``: none). A limit below
    current usage is allowed: new uploads are refused until enough is deleted."""

    quota_bytes: int | None = Field(default=None, ge=0, le=MAX_AMOUNT)
    quota_objects: int | None = Field(default=None, ge=0, le=MAX_AMOUNT)


# -- multipart uploads -------------------------------------------------------------------------


class UploadCreate(Strict):
    key: str = Field(min_length=1, max_length=4 * MAX_KEY_BYTES)
    #: Kept as the declared type; the type stored is decided from the assembled bytes.
    content_type: str | None = Field(default=None, max_length=255)


class UploadOut(BaseModel):
    upload_id: str
    bucket: str
    key: str
    created_at: datetime
    #: Not completed by then, the upload is aborted and its parts deleted.
    expires_at: datetime


class PartOut(BaseModel):
    number: int
    #: Hex SHA-256 of the part's bytes: list it at completion.
    etag: str
    size: int
    created_at: datetime


class UploadParts(UploadOut):
    #: The parts stored so far, by number (a resuming client sends the others).
    parts: list[PartOut]


class CompletedPartIn(Strict):
    number: int = Field(ge=1, le=10_000)
    etag: str = Field(min_length=1, max_length=80)


class UploadComplete(Strict):
    #: Strictly ascending numbers, each with the ETag its upload answered.
    parts: list[CompletedPartIn] = Field(min_length=1, max_length=10_000)


# -- presigning --------------------------------------------------------------------------------


class PresignCreate(Strict):
    method: Literal["GET", "PUT"]
    key: str = Field(min_length=1, max_length=4 * MAX_KEY_BYTES)
    #: Seconds the URL lives: up to ``KEEL_STORAGE__MAX_PRESIGN_SECONDS`` (7 days at most
    #: for a private bucket).
    expires_in: int = Field(default=3600, ge=1, le=10 * 365 * 86_400)
    #: GET: one version rather than the newest clean one.
    version_id: str | None = Field(default=None, min_length=1, max_length=36)
    #: GET: served as an attachment with this file name.
    filename: str | None = Field(default=None, min_length=1, max_length=255)
    #: PUT: the type the upload must declare, and the bytes must be.
    content_type: str | None = Field(default=None, max_length=255)
    #: PUT: the largest upload (below the bucket's own limit).
    max_bytes: int | None = Field(default=None, ge=0, le=MAX_AMOUNT)

    @field_validator("content_type")
    @classmethod
    def _media_type(cls, value: str | None) -> str | None:
        if value is None:
            return None
        media_type = value.strip().lower()
        if not MEDIA_PATTERN.match(media_type) or "*" in media_type:
            raise ValueError(f"{value!r} is not a media type (text/plain)")
        return media_type


class PresignOut(BaseModel):
    #: Absolute; the token in it is the credential (no Authorization header).
    url: str
    method: Literal["GET", "PUT"]
    expires_at: datetime


class PresignPostCreate(Strict):
    #: One exact key (it may hold ``${filename}``), or any key starting with ``key_prefix``.
    key: str | None = Field(default=None, min_length=1, max_length=4 * MAX_KEY_BYTES)
    key_prefix: str = Field(default="", max_length=4 * MAX_KEY_BYTES)
    #: Media types or patterns (``image/*``) the form's file must declare and be.
    content_types: list[str] = Field(default_factory=lambda: ["*/*"], min_length=1, max_length=16)
    min_bytes: int = Field(default=0, ge=0, le=MAX_AMOUNT)
    max_bytes: int = Field(ge=1, le=MAX_AMOUNT)
    expires_in: int = Field(default=3600, ge=1, le=10 * 365 * 86_400)

    @field_validator("content_types")
    @classmethod
    def _media_patterns(cls, value: list[str]) -> list[str]:
        patterns = []
        for item in value:
            pattern = item.strip().lower()
            if not MEDIA_PATTERN.match(pattern) or (pattern.startswith("*/") and pattern != "*/*"):
                raise ValueError(f"{item!r} is not a media type or pattern (image/*, */*)")
            patterns.append(pattern)
        return list(dict.fromkeys(patterns))

    @model_validator(mode="after")
    def _sizes(self) -> PresignPostCreate:
        if self.min_bytes > self.max_bytes:
            raise ValueError("min_bytes must not be above max_bytes")
        return self


class PresignPostOut(BaseModel):
    #: POST the form here (multipart/form-data): these fields, then ``file`` last.
    url: str
    fields: dict[str, str]
    expires_at: datetime


# -- objects -----------------------------------------------------------------------------------


class ObjectList(BaseModel):
    """``GET /buckets/{bucket}/objects``: the newest version of each key (not a delete
    marker), in key order, with its state."""

    objects: list[ObjectInfo]
    #: Pass as ``cursor`` for the next page; ``None`` on the last one.
    next_cursor: str | None = None


class ObjectDetails(ObjectInfo):
    """``GET /buckets/{bucket}/info/{key}``: the key's newest version, and with
    ``?versions=true`` every version, newest first, with its state and reason."""

    versions: list[ObjectInfo] | None = None


class RetentionIn(Strict):
    """``PUT /buckets/{bucket}/retention/{key}``: lock a version until ``retain_until``.
    Compliance: only a later date, by anyone; governance: a shorter one needs
    ``storage:objects:admin`` and ``X-Keel-Bypass-Governance: true``."""

    mode: Literal["governance", "compliance"]
    retain_until: datetime
    #: Default: the key's newest version.
    version_id: str | None = Field(default=None, min_length=1, max_length=36)

    @field_validator("retain_until")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("retain_until needs a time zone (e.g. 2030-01-01T00:00:00Z)")
        return value


class LegalHoldIn(Strict):
    """``PUT /buckets/{bucket}/legal-hold/{key}``: a version under a legal hold cannot be
    deleted by anyone until the hold is lifted (``storage:objects:admin``)."""

    on: bool
    #: Default: the key's newest version.
    version_id: str | None = Field(default=None, min_length=1, max_length=36)
