"""The audit actions of the flags service. Changes carry a diff of the fields they changed
(``{"field": {"before": ..., "after": ...}}``); experiment events are not audited one by one."""

from __future__ import annotations

from keel.core.audit import ActionSpec, register_actions

_CHANGE = "change"

register_actions(
    ActionSpec("flags.env.create", "A flags environment created.", _CHANGE),
    ActionSpec("flags.env.update", "A flags environment's description changed.", _CHANGE),
    ActionSpec("flags.env.delete", "A flags environment deleted with its states.", _CHANGE),
    ActionSpec(
        "flags.flag.create", "A flag defined (its state created in every environment).", _CHANGE
    ),
    ActionSpec("flags.flag.update", "A flag's definition changed (diff of the fields).", _CHANGE),
    ActionSpec("flags.flag.archive", "A flag archived: in no snapshot any more.", _CHANGE),
    ActionSpec("flags.flag.restore", "An archived flag restored.", _CHANGE),
    ActionSpec("flags.state.update", "A flag's state in an environment changed (diff).", _CHANGE),
    ActionSpec("flags.state.toggle", "A flag turned on or off in an environment.", _CHANGE),
    ActionSpec("flags.segment.create", "A segment created in an environment.", _CHANGE),
    ActionSpec("flags.segment.update", "A segment changed (diff).", _CHANGE),
    ActionSpec("flags.segment.delete", "A segment deleted.", _CHANGE),
    ActionSpec("flags.changes.watch", "An environment's flag change stream opened.", "access"),
)
