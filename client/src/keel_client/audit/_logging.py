"""Forward chosen structlog events to the audit log: ``AuditForwarder``.

A structlog processor is a plain callable, so this module does not import structlog and
keel-client does not depend on it. Put the forwarder after ``merge_contextvars`` (so a
bound ``request_id`` is seen) and before the renderer::

    structlog.configure(processors=[
        structlog.contextvars.merge_contextvars,
        AuditForwarder(audit, {"user.login": "app.session.login"}),
        structlog.processors.JSONRenderer(),
    ])

    log.info("user.login", actor_id=user.id, actor_type="user", ip=request.client.host)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, MutableMapping
from typing import Any

from keel_client.audit._client import AuditRecorder
from keel_client.audit._events import EventActor, EventFields, EventTarget

__all__ = ["AuditForwarder", "event_fields"]

ActionChooser = Callable[[Mapping[str, Any]], str | None]
"""``choose(event_dict)``: the audit action to record the log event as, or ``None``."""

#: Keys structlog and the stdlib bridge add to every event: never audit data.
LOG_METADATA_KEYS = frozenset(
    {
        "event",
        "level",
        "log_level",
        "logger",
        "logger_name",
        "timestamp",
        "exc_info",
        "exception",
        "stack_info",
        "stack",
        "positional_args",
        "_record",
        "_from_structlog",
    }
)

#: Keys mapped to event fields rather than copied into ``data``.
#: (``actor_ip`` wins over ``ip``: later keys override earlier ones.)
ACTOR_KEYS = {
    "actor_type": "type",
    "actor_id": "id",
    "actor_display": "display",
    "ip": "ip",
    "actor_ip": "ip",
    "user_agent": "user_agent",
}
TARGET_KEYS = {"target_type": "type", "target_id": "id"}
FIELD_KEYS = ("outcome", "reason", "request_id", "trace_id", "sensitivity")
_MAPPED_KEYS = frozenset({"actor", "target", "audit_id", *ACTOR_KEYS, *TARGET_KEYS, *FIELD_KEYS})

#: Values under keys like these never leave the log for the tamper-evident, permanent audit
#: trail: they are dropped from ``data`` (name it in ``data_keys`` to keep one on purpose).
SECRET_KEY_PATTERN = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api_?key|authorization|cookie|credential|private",
    re.IGNORECASE,
)


class AuditForwarder:
    """A structlog processor that records chosen log events as audit events.

    ``actions`` maps log event names to audit actions (``{"user.login":
    "app.session.login"}``) or is a callable choosing the action from the event dict
    (``None``: not audited). The event dict passes on unchanged.

    Fields come from the event dict by name (see :func:`event_fields`):

    - ``actor`` (an ``EventActor``), or ``actor_type``, ``actor_id``, ``actor_display``,
      ``actor_ip`` (or ``ip``), ``user_agent``;
    - ``target`` (an ``EventTarget``), or ``target_type`` and ``target_id``;
    - ``outcome``, ``reason``, ``request_id``, ``trace_id``, ``sensitivity``; ``audit_id``
      becomes the event id;
    - ``data``: the keys in ``data_keys``, or by default every other key except log metadata
      and secret-looking names (password, token, api_key, ...).

    Example::

        forwarder = AuditForwarder(
            audit,
            lambda event: "app.session.login" if event["event"] == "user.login" else None,
            data_keys={"method"},
        )

    Errors of ``record()`` (``SpoolFullError``, a bad field) propagate to the log call: the
    application chose to audit these events, so a failure must not pass silently.
    """

    def __init__(
        self,
        client: AuditRecorder,
        actions: Mapping[str, str] | ActionChooser,
        *,
        data_keys: Collection[str] | None = None,
    ) -> None:
        self.client = client
        if isinstance(actions, Mapping):
            mapping = dict(actions)

            def choose(event_dict: Mapping[str, Any]) -> str | None:
                name = event_dict.get("event")
                return mapping.get(name) if isinstance(name, str) else None

            self._choose: ActionChooser = choose
        else:
            self._choose = actions
        self.data_keys = frozenset(data_keys) if data_keys is not None else None

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        action = self._choose(event_dict)
        if action is not None:
            self.client.record(action, **event_fields(event_dict, data_keys=self.data_keys))
        return event_dict


def event_fields(
    event_dict: Mapping[str, Any], *, data_keys: Collection[str] | None = None
) -> EventFields:
    """The audit event fields a log event dict carries (see :class:`AuditForwarder`)."""
    fields: EventFields = {}
    actor = event_dict.get("actor")
    if isinstance(actor, EventActor):
        fields["actor"] = actor
    else:
        parts = _strings(event_dict, ACTOR_KEYS)
        if parts:
            fields["actor"] = EventActor(
                type=parts.get("type"),
                id=parts.get("id"),
                display=parts.get("display"),
                ip=parts.get("ip"),
                user_agent=parts.get("user_agent"),
            )
    target = event_dict.get("target")
    if isinstance(target, EventTarget):
        fields["target"] = target
    else:
        parts = _strings(event_dict, TARGET_KEYS)
        if "type" in parts:
            fields["target"] = EventTarget(type=parts["type"], id=parts.get("id"))
    if (audit_id := event_dict.get("audit_id")) is not None:
        fields["id"] = str(audit_id)
    if (outcome := event_dict.get("outcome")) is not None:
        fields["outcome"] = str(outcome)
    if (reason := event_dict.get("reason")) is not None:
        fields["reason"] = str(reason)
    if (request_id := event_dict.get("request_id")) is not None:
        fields["request_id"] = str(request_id)
    if (trace_id := event_dict.get("trace_id")) is not None:
        fields["trace_id"] = str(trace_id)
    if (sensitivity := event_dict.get("sensitivity")) is not None:
        fields["sensitivity"] = str(sensitivity)
    if data_keys is not None:
        data = {key: _jsonable(event_dict[key]) for key in data_keys if key in event_dict}
    else:
        data = {
            key: _jsonable(value)
            for key, value in event_dict.items()
            if key not in LOG_METADATA_KEYS
            and key not in _MAPPED_KEYS
            and not SECRET_KEY_PATTERN.search(key)
        }
    if data:
        fields["data"] = data
    return fields


def _strings(event_dict: Mapping[str, Any], keys: Mapping[str, str]) -> dict[str, str]:
    return {
        field: str(event_dict[key])
        for key, field in keys.items()
        if event_dict.get(key) is not None
    }


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: containers walked, anything else by its ``str``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    return str(value)
