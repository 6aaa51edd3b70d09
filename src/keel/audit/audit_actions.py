"""The audit actions of the audit service itself: exporting the log, retention erasing the
documents of expired events (the record ``keel audit verify`` checks each missing document
against), and a tenant's action registered by ``keel apply``."""

from __future__ import annotations

from keel.core.audit import ActionSpec, register_actions

EXPORT_ACTION = "audit.log.export"
ERASE_ACTION = "audit.retention.erase"
REGISTER_ACTION = "audit.action.register"

register_actions(
    ActionSpec(EXPORT_ACTION, "The audit log exported (JSON Lines or CSV).", "access"),
    ActionSpec(
        ERASE_ACTION,
        "Retention erased the documents of expired events (their leaves stay).",
        "security",
    ),
    ActionSpec(
        REGISTER_ACTION,
        "An action of the tenant's catalogue registered or changed.",
        "change",
    ),
)
