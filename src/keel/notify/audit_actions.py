"""The audit actions of the notification service. Sends, preference changes, unsubscribes and
every configuration change are recorded — names, ids and categories, never message bodies,
template data or addresses beyond what identifies the change."""

from __future__ import annotations

from keel.core.audit import ActionSpec, register_actions

_CHANGE = "change"

register_actions(
    ActionSpec("notify.message.send", "A message accepted for sending (no content).", _CHANGE),
    ActionSpec("notify.batch.send", "A batch of messages accepted (count).", _CHANGE),
    ActionSpec("notify.template.publish", "A template version published.", _CHANGE),
    ActionSpec("notify.template.rollback", "A template's published version moved back.", _CHANGE),
    ActionSpec("notify.experiment.put", "A template's A/B test set to a flag.", _CHANGE),
    ActionSpec("notify.experiment.delete", "A template's A/B test stopped.", _CHANGE),
    ActionSpec("notify.recipient.identify", "A recipient's profile created or changed.", _CHANGE),
    ActionSpec("notify.recipient.erase", "A recipient's data erased.", _CHANGE),
    ActionSpec("notify.preferences.set", "A recipient's preferences changed.", _CHANGE),
    ActionSpec("notify.topic.subscribe", "Recipients subscribed to a topic.", _CHANGE),
    ActionSpec("notify.topic.unsubscribe", "A recipient left a topic.", _CHANGE),
    ActionSpec(
        "notify.email.unsubscribe", "A one-click unsubscribe from an email (RFC 8058).", _CHANGE
    ),
    ActionSpec("notify.suppression.add", "An address put on the suppression list.", _CHANGE),
    ActionSpec("notify.suppression.remove", "An address taken off the suppression list.", _CHANGE),
    ActionSpec("notify.provider.put", "A provider created or changed.", _CHANGE),
    ActionSpec("notify.provider.delete", "A provider deleted.", _CHANGE),
    ActionSpec("notify.sender.put", "An email sender created or changed.", _CHANGE),
    ActionSpec("notify.category.put", "A category created or changed.", _CHANGE),
)
