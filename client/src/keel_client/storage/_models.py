"""What the storage endpoints answer and what a caller builds: buckets and their policy,
object info and versions, multipart uploads, presigned URLs and forms, and the ``on_clean``
hook's job arguments (:class:`CleanObject`).

Answers ignore fields they do not know (a newer Keel may add some); what a caller builds
(:class:`BucketPolicy`) refuses unknown fields, so a typo is an error here, not a silently
ignored setting.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Bucket",
    "BucketPolicy",
    "CleanHook",
    "CleanObject",
    "LockRule",
    "ObjectHead",
    "ObjectInfo",
    "ObjectPage",
    "ObjectState",
    "PresignedPost",
    "PresignedURL",
    "RetentionRule",
    "Upload",
    "UploadPart",
]

#: A version's place in the pipeline: ``pending`` (not yet scanned: nobody reads it),
#: ``clean`` (readable), ``infected`` or ``rejected`` (quarantined, never served; ``reason``
#: says why).
ObjectState = Literal["pending", "clean", "infected", "rejected"]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Built(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LockRule(_Built):
    """Object lock: every new version is retained ``days`` days in ``mode`` (a compliance
    lock cannot be shortened or bypassed, even by an administrator)."""

    mode: Literal["governance", "compliance"]
    days: int = Field(ge=1)


class RetentionRule(_Built):
    """No version is deleted before ``min_days``; versions older than ``max_days`` are
    deleted by Keel's lifecycle sweep (unless locked or on legal hold)."""

    min_days: int = Field(default=0, ge=0)
    max_days: int | None = Field(default=None, ge=1)


class CleanHook(_Built):
    """The job Keel enqueues on the jobs service for every version that becomes clean:
    task ``task`` on queue ``queue``, its arguments a :class:`CleanObject`."""

    queue: str
    task: str


class BucketPolicy(_Built):
    """A bucket's rules; every field has Keel's default.

    Example::

        policy = BucketPolicy(
            allowed_types=["image/*", "application/pdf"],   # decided from the bytes
            max_object_bytes=50 * 1024 * 1024,
            on_clean=CleanHook(queue="uploads", task="uploads.process"),
        )
        await keel.storage.create_bucket("invoices", policy)
    """

    allowed_types: list[str] = Field(default_factory=lambda: ["*/*"])
    max_object_bytes: int | None = None
    scan: bool = True
    encrypted: bool = True
    versioning: bool = False
    lock: LockRule | None = None
    retention: RetentionRule = Field(default_factory=RetentionRule)
    visibility: Literal["private", "public"] = "private"
    on_clean: CleanHook | None = None
    noncurrent_versions_keep: int | None = None
    quota_bytes: int | None = None
    quota_objects: int | None = None


class Bucket(_Answer):
    """A bucket as Keel keeps it; ``revision`` is what ``update_bucket(if_match=...)`` takes."""

    name: str
    policy: BucketPolicy
    used_bytes: int = 0
    used_objects: int = 0
    revision: int
    created_at: datetime
    updated_at: datetime


class ObjectInfo(_Answer):
    """One version of an object: its state in the pipeline and what Keel knows of it.

    ``etag`` is the hex SHA-256 of the bytes; ``content_type`` the type Keel decided from
    them (``declared_content_type``: what the uploader said). ``versions`` is filled by
    ``info(..., versions=True)``: every version of the key, newest first."""

    bucket: str
    key: str
    version_id: str
    state: ObjectState
    reason: str | None = None
    is_delete_marker: bool = False
    size: int
    content_type: str
    declared_content_type: str | None = None
    etag: str
    encrypted: bool = False
    lock_mode: Literal["governance", "compliance"] | None = None
    retain_until: datetime | None = None
    legal_hold: bool = False
    created_at: datetime
    clean_at: datetime | None = None
    versions: list[ObjectInfo] | None = None

    @property
    def is_clean(self) -> bool:
        return self.state == "clean"

    @property
    def is_quarantined(self) -> bool:
        return self.state in ("infected", "rejected")


class ObjectHead(_Answer):
    """What a ``HEAD`` of an object tells: the readable version's size, ETag and type."""

    size: int
    etag: str
    content_type: str
    version_id: str | None = None
    last_modified: str | None = None


class ObjectPage(_Answer):
    """One page of a listing: the newest version of each key (not delete markers)."""

    objects: list[ObjectInfo]
    next_cursor: str | None = None


class UploadPart(_Answer):
    """A part Keel holds of a multipart upload: its number, size and SHA-256 (hex)."""

    number: int
    size: int
    etag: str


class Upload(_Answer):
    """A multipart upload: what ``resume_upload`` reads to send only the missing parts."""

    upload_id: str
    key: str
    expires_at: datetime | None = None
    parts: list[UploadPart] = Field(default_factory=list)


class PresignedURL(_Answer):
    """A URL that needs no credential until ``expires_at``: ``GET`` reads the object,
    ``PUT`` uploads its body (with the ``Content-Type`` and size it was signed for)."""

    url: str
    method: Literal["GET", "PUT"]
    expires_at: datetime


class PresignedPost(_Answer):
    """A browser form's target: ``POST`` multipart/form-data to ``url`` with ``fields``
    first, then the ``key`` (unless signed for one) and the ``file`` part last."""

    url: str
    fields: dict[str, str]
    expires_at: datetime | None = None


class CleanObject(_Answer):
    """The arguments of the job Keel enqueues when a version becomes clean (a bucket's
    ``on_clean`` hook): which version, its size, type and SHA-256.

    Example (a worker of ``keel_client.jobs``)::

        @worker.task("uploads.process")
        @clean_object
        async def process(obj: CleanObject) -> dict[str, int]:
            data = await keel.storage.download(obj.bucket, obj.key, version_id=obj.version_id)
            return {"bytes": len(data)}
    """

    bucket: str
    key: str
    version_id: str
    size: int
    content_type: str
    etag: str

    @classmethod
    def of(cls, args: Any) -> CleanObject:
        """The object of a job's arguments: a mapping, or a list holding one."""
        if isinstance(args, list | tuple) and len(args) == 1:
            args = args[0]
        return cls.model_validate(args)
