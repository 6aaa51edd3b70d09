"""The audit actions of the secrets service. No event ever carries a secret's value."""

from __future__ import annotations

from keel.core.audit import ActionSpec, Sensitivity, register_actions

_ACCESS = "access"
_CHANGE = "change"

register_actions(
    ActionSpec("secrets.kv.read", "A secret (or its metadata) read, or the attempt.", _ACCESS),
    ActionSpec("secrets.kv.list", "Secret keys listed, or the attempt.", _ACCESS),
    ActionSpec("secrets.kv.write", "A secret version written or patched.", _CHANGE),
    ActionSpec(
        "secrets.kv.delete",
        "Secret versions deleted, undeleted or destroyed, or a secret removed.",
        _CHANGE,
    ),
    ActionSpec("secrets.metadata.write", "A secret's metadata changed.", _CHANGE),
    ActionSpec(
        "secrets.kv.rotate",
        "A secret rotated: a new version with one field renewed, or the failed attempt.",
        _CHANGE,
    ),
    ActionSpec("secrets.rotation.write", "A secret's rotation policy set or removed.", _CHANGE),
    ActionSpec("secrets.changes.watch", "The secrets change stream opened.", _ACCESS),
    ActionSpec("secrets.mount.write", "A secrets engine mounted or configured.", _CHANGE),
    ActionSpec(
        "secrets.master_key.rotate",
        "Sealed values re-wrapped under the current master key (counts per table, no key).",
        "security",
    ),
    ActionSpec(
        "secrets.database.read",
        "A database connection or role read or listed, or the attempt (never a password).",
        _ACCESS,
    ),
    ActionSpec(
        "secrets.db_connection.write",
        "A database connection configured or deleted (never its password).",
        "security",
        Sensitivity.INTERNAL,
    ),
    ActionSpec("secrets.db_role.write", "A dynamic credential role written or deleted.", _CHANGE),
    ActionSpec(
        "secrets.creds.issue",
        "Dynamic database credentials issued (user name and lease, never the password).",
        _ACCESS,
        Sensitivity.CONFIDENTIAL,
    ),
    ActionSpec("secrets.lease.read", "A lease looked up, or the attempt.", _ACCESS),
    ActionSpec("secrets.lease.renew", "A lease renewed, or the attempt.", _CHANGE),
    ActionSpec(
        "secrets.lease.revoke",
        "A lease revoked on request or by the expiry sweeper (or a failed sweep attempt).",
        _CHANGE,
    ),
    ActionSpec(
        "secrets.policy.write",
        "A secrets policy written or deleted.",
        "security",
        Sensitivity.INTERNAL,
    ),
)
