"""A flag's documents and the small rules they follow: key syntax, the definition, the
per-environment state and the segment as the shared model (:mod:`keel_client.flags`) reads
them, the merge patch, the audit diff, and validation by the SDK's own engine. Pure: no
session, no I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from keel.core.errors import ValidationFailed
from keel.flags.auth import DEFINITIONS
from keel.flags.models import Flag, FlagState, Segment
from keel_client import flags as engine

ENVIRONMENT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: The fields of a flag's definition a PATCH may change.
DEFINITION_FIELDS = ("description", "tags", "owner", "variations", "salt", "experiment")
#: The fields of a flag's state in an environment.
STATE_FIELDS = (
    "on",
    "off_variation",
    "prerequisites",
    "targets",
    "rules",
    "fallthrough",
    "schedule",
)
SEGMENT_FIELDS = ("description", "included", "excluded", "rules")
#: An audit diff keeps a value up to this many bytes of JSON (a huge target list is
#: summarised by its size).
MAX_AUDITED_VALUE_BYTES = 16 * 1024


def check_environment_key(key: str) -> str:
    if not ENVIRONMENT_PATTERN.fullmatch(key):
        raise ValidationFailed(
            "An environment key is 1-63 lowercase letters, digits, '_' and '-', "
            "starting with a letter or digit."
        )
    if key == DEFINITIONS:
        raise ValidationFailed(
            f"{DEFINITIONS!r} is reserved (the permission flags:{DEFINITIONS}:admin)."
        )
    return key


def check_key(kind: str, key: str) -> str:
    if not KEY_PATTERN.fullmatch(key):
        raise ValidationFailed(
            f"A {kind} key is 1-128 letters, digits, '_', '.' and '-', starting with a "
            "letter or digit."
        )
    return key


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = merge_patch(merged.get(name), value)
    return merged


def _audited(value: Any) -> Any:
    encoded = json.dumps(value, separators=(",", ":"), default=str)
    if len(encoded) <= MAX_AUDITED_VALUE_BYTES:
        return value
    return {"omitted": "too large for the audit event", "bytes": len(encoded)}


def field_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """``{field: {"before": ..., "after": ...}}`` of the fields whose value changed."""
    return {
        name: {"before": _audited(before.get(name)), "after": _audited(after.get(name))}
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }


def _problems(kind: str, problems: Sequence[Any], **extensions: Any) -> ValidationFailed:
    listed = [str(problem) for problem in problems]
    return ValidationFailed(
        f"The {kind} is not valid: {'; '.join(listed[:5])}", problems=listed, **extensions
    )


def default_variations(flag_type: str) -> list[dict[str, Any]]:
    if flag_type != "boolean":
        raise ValidationFailed(f"A {flag_type} flag needs its variations.")
    return [{"id": "on", "value": True}, {"id": "off", "value": False}]


def _variation_id(variation: Mapping[str, Any]) -> str | None:
    identifier = variation.get("id") if isinstance(variation, Mapping) else None
    return None if identifier is None else str(identifier)


def default_state(variations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A new flag's state in each environment: off, serving the last variation when off and
    the first when turned on (``off``/``on`` for a default boolean flag)."""
    # Not yet validated here: a variation without an id is the validator's to name, not a
    # KeyError's.
    first = _variation_id(variations[0]) if variations else None
    last = _variation_id(variations[-1]) if variations else None
    return {
        "on": False,
        "off_variation": last,
        "prerequisites": [],
        "targets": [],
        "rules": [],
        "fallthrough": {"variation": first} if first is not None else {},
        "schedule": [],
    }


def definition_document(flag: Flag) -> dict[str, Any]:
    return {
        "key": flag.key,
        "description": flag.description,
        "tags": list(flag.tags),
        "owner": flag.owner,
        "type": flag.type,
        "variations": list(flag.variations),
        "salt": flag.salt,
        "experiment": flag.experiment,
        "archived": flag.archived,
    }


def state_document(state: FlagState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in STATE_FIELDS}


def merged_flag(
    definition: Mapping[str, Any], version: int, state: Mapping[str, Any]
) -> dict[str, Any]:
    """The shared model's flag document: the definition merged with one environment's
    state. ``version`` is the definition's version plus the state's (both only grow)."""
    return {
        "key": definition["key"],
        "version": version,
        "type": definition["type"],
        "variations": definition["variations"],
        "salt": definition["salt"],
        "experiment": definition["experiment"],
        **{name: state[name] for name in STATE_FIELDS},
    }


def segment_document(segment: Segment) -> dict[str, Any]:
    return {
        "key": segment.key,
        "version": segment.version,
        "included": list(segment.included),
        "excluded": list(segment.excluded),
        "rules": list(segment.rules),
    }


def _clauses(rules: Iterable[Any]) -> Iterable[Mapping[str, Any]]:
    for rule in rules:
        if isinstance(rule, Mapping):
            for clause in rule.get("clauses") or ():
                if isinstance(clause, Mapping):
                    yield clause


def segment_references(rules: Iterable[Any]) -> set[str]:
    """The segment keys ``in_segment`` clauses of ``rules`` name."""
    found: set[str] = set()
    for clause in _clauses(rules):
        if clause.get("op") == "in_segment":
            found.update(str(value) for value in clause.get("values") or ())
    return found


def prerequisite_keys(state: Mapping[str, Any]) -> list[str]:
    return [
        str(entry.get("key"))
        for entry in state.get("prerequisites") or ()
        if isinstance(entry, Mapping)
    ]


def validate_flag_document(document: Mapping[str, Any], environment: str | None = None) -> None:
    """422 listing the engine's problems unless ``document`` (a merged flag) is valid."""
    problems = engine.validate_flag(dict(document))
    if problems:
        where = {"environment": environment} if environment else {}
        raise _problems("flag", problems, **where)


def validate_segment_document(document: Mapping[str, Any]) -> None:
    """422 listing the engine's problems unless ``document`` is a valid segment."""
    problems = engine.validate_segment(dict(document))
    if problems:
        raise _problems("segment", problems)
