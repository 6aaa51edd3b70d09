"""The storage service's tables: buckets with their policy and usage, a row per object
version, the tenant's quota, and multipart uploads in progress.

An object version's bytes live in the blob store (``keel.storage.backends``) at its
``locator``; its row says whether anyone may read them (``state``). Usage counters move only
by conditional ``UPDATE``s (``used + n <= quota``), so concurrent uploads can never together
pass a quota, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from keel.core.db import Base, UTCDateTime, utcnow
from keel.core.ids import new_id
from keel.core.sealed import register_sealed_column
from keel.core.tenancy import TenantScoped


class ObjectState(StrEnum):
    """Where a version stands in the pipeline. Only ``clean`` is ever served."""

    #: Stored, waiting for (or in) its scan: nobody can read it yet.
    pending = "pending"
    clean = "clean"
    #: The scanner found a signature (``reason``): quarantined, never served.
    infected = "infected"
    #: Refused after storing (the scan failed for good): never served.
    rejected = "rejected"


class LockMode(StrEnum):
    #: Deletion and shortening need ``storage:objects:admin`` and an explicit bypass.
    governance = "governance"
    #: Nobody, admins included, can delete the version or shorten its retention.
    compliance = "compliance"


class StorageBucket(TenantScoped, Base):
    __tablename__ = "storage_buckets"
    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_storage_buckets_name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63))
    #: ``keel.storage.schemas.BucketPolicy`` as JSON.
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: Limits (``None``: none) and what counts against them: every stored version that is
    #: not yet deleted, quarantined ones included, until the blob is gone.
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quota_objects: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    used_objects: Mapped[int] = mapped_column(BigInteger, default=0)
    #: The bucket's ETag: one more per policy change (``If-Match``).
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StorageTenantQuota(Base):
    """A tenant's limits across its buckets, and its usage (a row once it stores anything)."""

    __tablename__ = "storage_tenant_quotas"

    tenant_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tenants.id", ondelete="RESTRICT"), primary_key=True
    )
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quota_objects: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    used_objects: Mapped[int] = mapped_column(BigInteger, default=0)


class StorageObject(TenantScoped, Base):
    """One version of an object: a key's newest ``clean`` version is what readers get."""

    __tablename__ = "storage_objects"
    __table_args__ = (
        Index("ix_storage_objects_key", "tenant_id", "bucket_id", "key", "created_at"),
        Index("ix_storage_objects_state", "state", "created_at"),
    )

    #: The version id (time-ordered).
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    bucket_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("storage_buckets.id", ondelete="RESTRICT")
    )
    key: Mapped[str] = mapped_column(String(1024))
    state: Mapped[str] = mapped_column(String(16), default=ObjectState.pending)
    #: Why a version is infected or rejected (the signature's name, "scan failed"): for the
    #: owner, never served.
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: A versioned bucket's delete: a marker version that hides the key (no bytes).
    is_delete_marker: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Plaintext bytes.
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Decided from the bytes' magic numbers; the client's header is only kept.
    content_type: Mapped[str] = mapped_column(String(255), default="application/octet-stream")
    declared_content_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: Hex SHA-256 of the plaintext (the ETag, quoted in headers).
    etag: Mapped[str] = mapped_column(String(64), default="")
    #: Where the blob store keeps the bytes (``<tenant>/<bucket>/<version id>``).
    locator: Mapped[str] = mapped_column(String(300), default="")
    encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The version's data key, sealed by the master key (associated data
    #: ``keel-storage:<version id>``); re-wrapped by a master key rotation.
    data_key_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    lock_mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    retain_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    #: ``<principal type>:<id>`` of the uploader.
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: When the scan passed (or the upload, for a bucket without scanning).
    clean_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


def object_associated_data(version_id: str) -> bytes:
    """What binds a version's sealed data key (and its ciphertext) to that version."""
    return f"keel-storage:{version_id}".encode()


register_sealed_column(StorageObject.data_key_sealed, lambda row: object_associated_data(row.id))


class StorageUpload(TenantScoped, Base):
    """A multipart upload in progress: parts arrive in any order, in parallel, and again
    (a part uploaded twice keeps the last); completion assembles them into a version."""

    __tablename__ = "storage_uploads"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    bucket_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("storage_buckets.id", ondelete="RESTRICT")
    )
    key: Mapped[str] = mapped_column(String(1024))
    declared_content_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: The parts are encrypted at rest too (in an encrypted bucket), each as its own stream
    #: under this key (associated data ``keel-storage-upload:<upload id>:<part number>``).
    data_key_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: An upload not completed by then is aborted and its parts deleted (lifecycle sweep).
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    #: Set while a completion assembles the parts: a second completion meanwhile is refused
    #: (two would store two versions). A completion that crashed stops holding it then.
    completing_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


def upload_associated_data(upload_id: str) -> bytes:
    return f"keel-storage-upload:{upload_id}".encode()


def part_associated_data(upload_id: str, number: int) -> bytes:
    return f"keel-storage-upload:{upload_id}:{number}".encode()


register_sealed_column(StorageUpload.data_key_sealed, lambda row: upload_associated_data(row.id))


class StorageUploadPart(Base):
    __tablename__ = "storage_upload_parts"
    __table_args__ = (PrimaryKeyConstraint("upload_id", "number", name="pk_storage_upload_parts"),)

    upload_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("storage_uploads.id", ondelete="CASCADE")
    )
    #: 1 to 10,000, as S3.
    number: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    #: Hex SHA-256 of the part's bytes.
    etag: Mapped[str] = mapped_column(String(64))
    locator: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
