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
    ActionSpec("secrets.mount.write", "A secrets engine mounted or configured.", _CHANGE),
    ActionSpec(
        "secrets.policy.write",
        "A secrets policy written or deleted.",
        "security",
        Sensitivity.internal,
    ),
)
