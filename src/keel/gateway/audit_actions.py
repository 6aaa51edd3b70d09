"""The audit actions of the gateway service. Events carry a revision's number, its counts of
routes and pools and its comment, never the document: a header transform may hold a credential."""

from __future__ import annotations

from keel.core.audit import ActionSpec, register_actions

_CHANGE = "change"

register_actions(
    ActionSpec(
        "gateway.policy.update",
        "The edge policy changed: a new revision (whole document, or one route or pool).",
        _CHANGE,
    ),
    ActionSpec("gateway.policy.rollback", "The edge policy rolled back: a new revision.", _CHANGE),
    ActionSpec("gateway.policy.watch", "The edge policy's change stream opened.", "access"),
)
