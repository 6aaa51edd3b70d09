"""The audit actions of the storage service: every upload, download, delete, policy change and
scan verdict — bucket, key, version, sizes and types; never the bytes, signed URLs or keys."""

from __future__ import annotations

from keel.core.audit import ActionSpec, register_actions

_CHANGE = "change"
_ACCESS = "access"

register_actions(
    ActionSpec("storage.bucket.create", "A bucket created with its policy.", _CHANGE),
    ActionSpec("storage.bucket.update", "A bucket's policy changed.", _CHANGE),
    ActionSpec("storage.bucket.delete", "An empty bucket deleted.", _CHANGE),
    ActionSpec("storage.quota.set", "The tenant's storage quota set.", _CHANGE),
    ActionSpec("storage.object.upload", "A version stored, before its scan.", _CHANGE),
    ActionSpec("storage.object.reject", "An upload refused (type, size, quota).", _CHANGE),
    ActionSpec("storage.object.scan", "A version's scan verdict (clean or infected).", _CHANGE),
    ActionSpec("storage.object.download", "A version's bytes read.", _ACCESS),
    ActionSpec("storage.object.delete", "A version deleted, or a delete marker added.", _CHANGE),
    ActionSpec("storage.object.retention", "A version's lock or retention changed.", _CHANGE),
    ActionSpec("storage.object.legal_hold", "A version's legal hold set or lifted.", _CHANGE),
    ActionSpec("storage.object.expire", "A version deleted by the lifecycle sweep.", _CHANGE),
    ActionSpec(
        "storage.blob.orphan_delete",
        "A blob no version or part names deleted by the lifecycle sweep.",
        _CHANGE,
    ),
    ActionSpec("storage.upload.start", "A multipart upload started.", _CHANGE),
    ActionSpec("storage.upload.abort", "A multipart upload aborted or expired.", _CHANGE),
    ActionSpec("storage.url.presign", "A signed URL or POST form issued (not the URL).", _CHANGE),
)
