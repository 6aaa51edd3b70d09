"""Pure rules of the config service: names, keys, sizes, JSON Schema, secret references, diffs.

Nothing here touches the database; the service calls these and the tests call them directly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keel.core.errors import BadRequest, PayloadTooLarge, ValidationFailed
from keel.secrets.service import check_mount_path, check_secret_path

#: An application or environment name: it appears in URLs, permissions and subjects.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
#: A key: letters, digits, ``_``, ``.`` and ``-``; it appears in URLs.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAX_KEY_LENGTH = 128
#: The compact JSON of one environment's values, at most.
MAX_SNAPSHOT_BYTES = 1024 * 1024
#: A JSON Schema, at most.
MAX_SCHEMA_BYTES = 256 * 1024
MAX_MESSAGE_LENGTH = 2000
#: Schema errors listed in one refusal, at most.
MAX_REPORTED_ERRORS = 50

#: The markers of a secret reference (names, not secrets).
SECRET_KEY = "$secret"  # noqa: S105
SECRET_MOUNT_KEY = "$mount"  # noqa: S105
DEFAULT_SECRET_MOUNT = "secret"  # noqa: S105


def check_name(kind: str, name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValidationFailed(
            f"An {kind} name is 1-63 lowercase letters, digits, '_' and '-', "
            "starting with a letter or digit."
        )
    return name


def check_key(key: str) -> str:
    if len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed(f"A key is at most {MAX_KEY_LENGTH} characters.")
    if not KEY_PATTERN.fullmatch(key):
        raise ValidationFailed(
            "A key is letters, digits, '_', '.' and '-', starting with a letter, digit or '_'."
        )
    return key


def check_message(message: str) -> str:
    if len(message) > MAX_MESSAGE_LENGTH:
        raise ValidationFailed(f"A message is at most {MAX_MESSAGE_LENGTH} characters.")
    return message


def encoded_size(values: Mapping[str, Any]) -> int:
    return len(json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode())


def check_snapshot_size(values: Mapping[str, Any]) -> None:
    if encoded_size(values) > MAX_SNAPSHOT_BYTES:
        raise PayloadTooLarge(
            f"An environment's values are at most {MAX_SNAPSHOT_BYTES} bytes of JSON."
        )


# -- JSON Schema ----------------------------------------------------------------------------


def check_json_schema(schema: Any) -> dict[str, Any]:
    """``schema`` when it is a valid JSON Schema (Draft 2020-12 unless its ``$schema`` names
    another draft); 422 naming the failing part of the schema otherwise."""
    if not isinstance(schema, dict):
        raise ValidationFailed("A JSON Schema for config values is a JSON object.")
    if len(json.dumps(schema).encode()) > MAX_SCHEMA_BYTES:
        raise PayloadTooLarge(f"A JSON Schema is at most {MAX_SCHEMA_BYTES} bytes.")
    from jsonschema import Draft202012Validator, SchemaError, validators  # see schema_violations

    cls = validators.validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as error:
        raise ValidationFailed(
            "The JSON Schema is not valid.",
            errors=[
                {
                    "path": _json_pointer(error.path),
                    "rule": str(error.validator),
                    "message": error.message,
                }
            ],
        ) from None
    return schema


@dataclass(frozen=True)
class SchemaViolation:
    """One reason a snapshot fails its schema: where, which rule, why (never the value)."""

    path: str
    rule: str
    message: str
    schema_path: str

    def as_dict(self) -> dict[str, str]:
        return {
            "path": self.path,
            "rule": self.rule,
            "message": self.message,
            "schema_path": self.schema_path,
        }


def schema_violations(
    schema: Mapping[str, Any], values: Mapping[str, Any]
) -> list[SchemaViolation]:
    """How ``values`` fail ``schema``, in path order; empty when they satisfy it.

    A secret reference stands for a value only its readers see, so the rules it would have
    to meet are not checked against the reference object itself.
    """
    # Imported here, not at start: 9 MB a process whose applications have no schema.
    from jsonschema import Draft202012Validator, FormatChecker, validators

    cls = validators.validator_for(schema, default=Draft202012Validator)
    validator = cls(schema, format_checker=FormatChecker())
    violations = []
    for error in validator.iter_errors(dict(values)):
        if _inside_secret_reference(values, list(error.absolute_path)):
            continue
        violations.append(
            SchemaViolation(
                path=error.json_path,
                rule=str(error.validator),
                message=_describe(error),
                schema_path=_json_pointer(error.absolute_schema_path),
            )
        )
    violations.sort(key=lambda violation: (violation.path, violation.rule))
    return violations


def check_against_schema(schema: Mapping[str, Any] | None, values: Mapping[str, Any]) -> None:
    """422 listing each failing path and rule when ``values`` fail ``schema``."""
    if schema is None:
        return
    violations = schema_violations(schema, values)
    if violations:
        raise ValidationFailed(
            "The values do not satisfy the application's JSON Schema.",
            errors=[violation.as_dict() for violation in violations[:MAX_REPORTED_ERRORS]],
        )


def _describe(error: Any) -> str:
    """The error's rule in words, without the offending value (it may be sensitive)."""
    if error.validator in ("required", "dependentRequired", "additionalProperties"):
        return str(error.message)  # names keys only
    constraint = json.dumps(error.validator_value, separators=(",", ":"), default=str)
    if len(constraint) > 200:
        constraint = constraint[:197] + "..."
    return f"fails {error.validator} {constraint}"


def _json_pointer(parts: Sequence[Any]) -> str:
    return "/" + "/".join(str(part).replace("~", "~0").replace("/", "~1") for part in parts)


def _inside_secret_reference(values: Any, path: Sequence[Any]) -> bool:
    node = values
    for part in [None, *path]:
        if part is not None:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return False
        if is_secret_reference(node):
            return True
    return False


# -- secret references ----------------------------------------------------------------------


@dataclass(frozen=True)
class SecretReference:
    """``{"$secret": "apps/billing/db#password"}``, optionally ``"$mount": "secret"``."""

    mount: str
    path: str
    field: str

    @property
    def vault_path(self) -> str:
        """The path secrets policies are written for: ``{mount}/data/{path}``."""
        return f"{self.mount}/data/{self.path}"

    def __str__(self) -> str:
        return f"{self.mount}/{self.path}#{self.field}"


def _is_valid(check: Callable[[str], str], text: str) -> bool:
    """Whether the secrets service takes ``text`` as it is (a mount or a secret path)."""
    try:
        return check(text) == text
    except BadRequest:
        return False


def is_secret_reference(value: Any) -> bool:
    return isinstance(value, dict) and SECRET_KEY in value


def parse_secret_reference(value: Mapping[str, Any]) -> SecretReference:
    """The reference ``value`` holds; 422 when it is malformed."""
    extra = set(value) - {SECRET_KEY, SECRET_MOUNT_KEY}
    target = value.get(SECRET_KEY)
    mount = value.get(SECRET_MOUNT_KEY, DEFAULT_SECRET_MOUNT)
    problem = None
    if extra:
        problem = f"a secret reference holds only {SECRET_KEY!r} and {SECRET_MOUNT_KEY!r}"
    elif not isinstance(target, str) or target.count("#") != 1:
        problem = 'a secret reference is "path/of/secret#field"'
    elif not isinstance(mount, str) or not _is_valid(check_mount_path, mount):
        problem = "a secret reference's mount is a mount name such as 'secret'"
    if problem is None:
        assert isinstance(target, str)
        path, _, name = target.partition("#")
        if not _is_valid(check_secret_path, path) or not name or len(name) > 256:
            problem = 'a secret reference is "path/of/secret#field"'
        else:
            return SecretReference(str(mount), path, name)
    raise ValidationFailed(f"Invalid secret reference: {problem}.")


def secret_references(values: Mapping[str, Any]) -> list[tuple[str, SecretReference]]:
    """Every secret reference in ``values`` with its JSON path; 422 for a malformed one."""
    return [(path, reference) for path, reference, _ in _walk(values, "$")]


def _walk(node: Any, path: str) -> Iterator[tuple[str, SecretReference, Any]]:
    if is_secret_reference(node):
        yield path, parse_secret_reference(node), node
    elif isinstance(node, dict):
        for key, item in node.items():
            yield from _walk(item, f"{path}.{key}" if _PLAIN.fullmatch(key) else f"{path}[{key!r}]")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{path}[{index}]")


_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def replace_secret_references(node: Any, resolved: Mapping[SecretReference, Any]) -> Any:
    """A copy of ``node`` with each reference found in ``resolved`` replaced by its value;
    the others are left as they are."""
    if is_secret_reference(node):
        reference = parse_secret_reference(node)
        return resolved.get(reference, node)
    if isinstance(node, dict):
        return {key: replace_secret_references(item, resolved) for key, item in node.items()}
    if isinstance(node, list):
        return [replace_secret_references(item, resolved) for item in node]
    return node


# -- change sets and diffs ------------------------------------------------------------------


@dataclass(frozen=True)
class Diff:
    """Key-level differences from one snapshot to another."""

    added: dict[str, Any]
    removed: dict[str, Any]
    changed: dict[str, dict[str, Any]]

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def keys(self) -> list[str]:
        return sorted({*self.added, *self.removed, *self.changed})


def diff_values(before: Mapping[str, Any], after: Mapping[str, Any]) -> Diff:
    return Diff(
        added={key: after[key] for key in sorted(after.keys() - before.keys())},
        removed={key: before[key] for key in sorted(before.keys() - after.keys())},
        changed={
            key: {"before": before[key], "after": after[key]}
            for key in sorted(before.keys() & after.keys())
            if not same_json(before[key], after[key])
        },
    )


def same_json(left: Any, right: Any) -> bool:
    """Equal as JSON documents (key order aside; ``1`` and ``true`` differ)."""
    return bool(_canonical(left) == _canonical(right))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def apply_change_set(
    current: Mapping[str, Any], set_values: Mapping[str, Any], unset: Sequence[str]
) -> dict[str, Any]:
    """The values after setting ``set_values`` and removing ``unset`` (absent keys ignored)."""
    both = set(set_values) & set(unset)
    if both:
        raise ValidationFailed(f"Keys both set and unset: {', '.join(sorted(both))}.")
    for key in [*set_values, *unset]:
        check_key(key)
    secret_references(set_values)  # refuses a malformed reference
    values = {key: value for key, value in current.items() if key not in set(unset)}
    values.update(set_values)
    return dict(sorted(values.items()))
