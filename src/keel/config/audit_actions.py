"""The audit actions of the config service. Events name keys, never their values."""

from __future__ import annotations

from keel.core.audit import ActionSpec, register_actions

_CHANGE = "change"

register_actions(
    ActionSpec("config.app.create", "A config application created.", _CHANGE),
    ActionSpec("config.app.update", "A config application's JSON Schema or text changed.", _CHANGE),
    ActionSpec("config.env.create", "An environment of a config application created.", _CHANGE),
    ActionSpec("config.env.write", "A change set written: a new revision (key names).", _CHANGE),
    ActionSpec("config.env.rollback", "An environment rolled back: a new revision.", _CHANGE),
    ActionSpec(
        "config.env.promote", "Values promoted from another environment: a new revision.", _CHANGE
    ),
    ActionSpec("config.changes.watch", "An environment's change stream opened.", "access"),
)
