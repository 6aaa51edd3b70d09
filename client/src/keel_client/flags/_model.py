"""The flag model: its vocabulary, value parsing, and the checks a flag must pass.

A flag or segment is plain JSON (see ``docs/flags.md``). :func:`validate_flag` and
:func:`validate_segment` list everything wrong with one, each problem prefixed with the
path of the offending field (``rules[0].clauses[1].values[0]: ...``), so the server can
refuse a malformed write with a message that names the field. The engine runs the same
checks when it compiles a snapshot: a flag that fails them evaluates to
``ERROR``/``MALFORMED_FLAG`` instead of half-working.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, Literal, TypeGuard

import re2
import semver

__all__ = [
    "CLAUSE_OPERATORS",
    "FLAG_TYPES",
    "MAX_PATTERN_LENGTH",
    "MAX_PREREQUISITE_DEPTH",
    "TOTAL_WEIGHT",
    "FlagType",
    "has_type",
    "is_number",
    "now_ms",
    "parse_semver",
    "parse_timestamp_ms",
    "regex_options",
    "timestamp_ms",
    "validate_flag",
    "validate_segment",
]

FlagType = Literal["boolean", "string", "number", "json"]
FLAG_TYPES: Final = frozenset({"boolean", "string", "number", "json"})

#: Rollout weights are in units of 1/100 000 and sum to this.
TOTAL_WEIGHT: Final = 100_000
#: A prerequisite chain longer than this is refused at evaluation (``MALFORMED_FLAG``).
MAX_PREREQUISITE_DEPTH: Final = 10
#: RE2 runs in linear time whatever the pattern; the length bound keeps the compiled
#: automaton (and a write's validation time) small.
MAX_PATTERN_LENGTH: Final = 1024

STRING_OPERATORS: Final = frozenset({"starts_with", "ends_with", "contains", "matches"})
NUMBER_OPERATORS: Final = frozenset({"lt", "lte", "gt", "gte"})
SEMVER_OPERATORS: Final = frozenset({"semver_eq", "semver_lt", "semver_gt"})
DATE_OPERATORS: Final = frozenset({"before", "after"})
CLAUSE_OPERATORS: Final = frozenset(
    {"in", "in_segment"} | STRING_OPERATORS | NUMBER_OPERATORS | SEMVER_OPERATORS | DATE_OPERATORS
)

# RFC 3339 only: ``datetime.fromisoformat`` alone would also take ISO 8601 forms such as
# ``20261201`` or a date without a time, and a naive time whose zone would be a guess.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def regex_options() -> re2.Options:
    """RE2 options for clause patterns: errors are reported to the caller, not logged."""
    options = re2.Options()
    options.log_errors = False
    return options


_REGEX_OPTIONS: Final = regex_options()


def is_number(value: object) -> TypeGuard[int | float]:
    """A JSON number: ``int`` or finite ``float``, never ``bool``."""
    kind = value.__class__
    return kind is int or (kind is float and math.isfinite(value))  # type: ignore[arg-type]


@lru_cache(maxsize=4096)
def parse_timestamp_ms(text: str) -> float | None:
    """Milliseconds since the epoch of an RFC 3339 date-time, or ``None`` if it is not one."""
    if _RFC3339.fullmatch(text) is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    return moment.timestamp() * 1000.0


def timestamp_ms(value: object) -> float | None:
    """A date attribute as epoch milliseconds: an RFC 3339 string or a number of ms."""
    if value.__class__ is str:
        return parse_timestamp_ms(value)
    if is_number(value):
        return float(value)
    return None


@lru_cache(maxsize=4096)
def parse_semver(text: str) -> semver.Version | None:
    """A semantic version (``1.2`` reads as ``1.2.0``), or ``None`` if ``text`` is not one."""
    try:
        return semver.Version.parse(text, optional_minor_and_patch=True)
    except (ValueError, TypeError):
        return None


def has_type(value: object, value_type: str) -> bool:
    """Whether a variation's value is of the flag type ``value_type``."""
    if value_type == "boolean":
        return value.__class__ is bool
    if value_type == "string":
        return value.__class__ is str
    if value_type == "number":
        return is_number(value)
    return value_type == "json" and _is_json(value)


def _is_json(value: object, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if value is None or value.__class__ in (str, bool, int) or is_number(value):
        return True
    if isinstance(value, list):
        return all(_is_json(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and _is_json(item, depth + 1) for key, item in value.items()
        )
    return False


# -- validation ------------------------------------------------------------------------------


class _Problems:
    """Collects ``path: message`` lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.lines.append(f"{path}: {message}" if path else message)


def _is_bool(value: object) -> bool:
    return value.__class__ is bool


def _is_int(value: object) -> TypeGuard[int]:
    return value.__class__ is int


def _nonempty_str(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and value != ""


def _list(problems: _Problems, path: str, value: object, *, required: bool = False) -> list[Any]:
    """``value`` as a list; a missing optional list is empty."""
    if value is None and not required:
        return []
    if not isinstance(value, list):
        problems.add(path, "must be a list")
        return []
    return value


def validate_flag(flag: object) -> list[str]:
    """Every problem with a flag as evaluated in one environment; empty when it is valid.

    Example::

        problems = validate_flag(body)
        if problems:
            raise InvalidFlag("; ".join(problems))
    """
    problems = _Problems()
    if not isinstance(flag, Mapping):
        return ["a flag must be a JSON object"]
    key = flag.get("key")
    if not _nonempty_str(key):
        problems.add("key", "must be a non-empty string")
    if "version" in flag and not (_is_int(flag["version"]) and flag["version"] >= 0):
        problems.add("version", "must be a non-negative integer")
    flag_type = flag.get("type")
    if flag_type not in FLAG_TYPES:
        problems.add("type", f"must be one of {', '.join(sorted(FLAG_TYPES))}")
    variation_ids = _check_variations(problems, flag.get("variations"), flag_type)
    if "salt" in flag and not _nonempty_str(flag["salt"]):
        problems.add("salt", "must be a non-empty string")
    if not _is_bool(flag.get("on")):
        problems.add("on", "must be true or false")
    if "experiment" in flag and not _is_bool(flag["experiment"]):
        problems.add("experiment", "must be true or false")
    off_variation = flag.get("off_variation")
    if off_variation is not None and off_variation not in variation_ids:
        problems.add("off_variation", f"unknown variation {off_variation!r}")
    _check_prerequisites(problems, flag.get("prerequisites"), key)
    _check_targets(problems, flag.get("targets"), variation_ids)
    _check_rules(problems, flag.get("rules"), variation_ids, "rules", is_segment=False)
    if "fallthrough" not in flag:
        problems.add("fallthrough", "is required")
    else:
        _check_serve(problems, "fallthrough", flag["fallthrough"], variation_ids)
    _check_schedule(problems, flag.get("schedule"), variation_ids)
    return problems.lines


def validate_segment(segment: object) -> list[str]:
    """Every problem with a segment; empty when it is valid.

    Segment rules cannot use ``in_segment``: segments do not nest.
    """
    problems = _Problems()
    if not isinstance(segment, Mapping):
        return ["a segment must be a JSON object"]
    if not _nonempty_str(segment.get("key")):
        problems.add("key", "must be a non-empty string")
    if "version" in segment and not (_is_int(segment["version"]) and segment["version"] >= 0):
        problems.add("version", "must be a non-negative integer")
    for name in ("included", "excluded"):
        for index, value in enumerate(_list(problems, name, segment.get(name))):
            if not isinstance(value, str):
                problems.add(f"{name}[{index}]", "must be a string (a context key)")
    _check_rules(problems, segment.get("rules"), set(), "rules", is_segment=True)
    return problems.lines


def _check_variations(problems: _Problems, variations: object, flag_type: object) -> set[str]:
    ids: set[str] = set()
    entries = _list(problems, "variations", variations, required=True)
    if isinstance(variations, list) and not entries:
        problems.add("variations", "must hold at least one variation")
    for index, variation in enumerate(entries):
        path = f"variations[{index}]"
        if not isinstance(variation, Mapping):
            problems.add(path, "must be an object with id and value")
            continue
        variation_id = variation.get("id")
        if not _nonempty_str(variation_id):
            problems.add(f"{path}.id", "must be a non-empty string")
        elif variation_id in ids:
            problems.add(f"{path}.id", f"duplicate variation id {variation_id!r}")
        else:
            ids.add(variation_id)
        if "value" not in variation:
            problems.add(f"{path}.value", "is required")
        elif flag_type in FLAG_TYPES and not has_type(variation["value"], str(flag_type)):
            problems.add(f"{path}.value", f"is not a {flag_type} value")
    return ids


def _check_prerequisites(problems: _Problems, prerequisites: object, key: object) -> None:
    for index, prerequisite in enumerate(_list(problems, "prerequisites", prerequisites)):
        path = f"prerequisites[{index}]"
        if not isinstance(prerequisite, Mapping):
            problems.add(path, "must be an object with key and variation")
            continue
        prerequisite_key = prerequisite.get("key")
        if not _nonempty_str(prerequisite_key):
            problems.add(f"{path}.key", "must be a non-empty string")
        elif prerequisite_key == key:
            problems.add(f"{path}.key", "a flag cannot be its own prerequisite")
        if not _nonempty_str(prerequisite.get("variation")):
            problems.add(f"{path}.variation", "must be a non-empty string")


def _check_targets(problems: _Problems, targets: object, variation_ids: set[str]) -> None:
    for index, target in enumerate(_list(problems, "targets", targets)):
        path = f"targets[{index}]"
        if not isinstance(target, Mapping):
            problems.add(path, "must be an object with variation and values")
            continue
        if target.get("variation") not in variation_ids:
            problems.add(f"{path}.variation", f"unknown variation {target.get('variation')!r}")
        for position, value in enumerate(_list(problems, f"{path}.values", target.get("values"))):
            if not isinstance(value, str):
                problems.add(f"{path}.values[{position}]", "must be a string (a context key)")


def _check_rules(
    problems: _Problems, rules: object, variation_ids: set[str], path: str, *, is_segment: bool
) -> None:
    seen: set[str] = set()
    for index, rule in enumerate(_list(problems, path, rules)):
        rule_path = f"{path}[{index}]"
        if not isinstance(rule, Mapping):
            problems.add(rule_path, "must be an object")
            continue
        rule_id = rule.get("id")
        if not _nonempty_str(rule_id):
            problems.add(f"{rule_path}.id", "must be a non-empty string")
        elif rule_id in seen:
            problems.add(f"{rule_path}.id", f"duplicate rule id {rule_id!r}")
        else:
            seen.add(rule_id)
        if "negate" in rule and not _is_bool(rule["negate"]):
            problems.add(f"{rule_path}.negate", "must be true or false")
        clauses = _list(problems, f"{rule_path}.clauses", rule.get("clauses"), required=True)
        if isinstance(rule.get("clauses"), list) and not clauses:
            problems.add(f"{rule_path}.clauses", "must hold at least one clause")
        for position, clause in enumerate(clauses):
            _check_clause(problems, f"{rule_path}.clauses[{position}]", clause, is_segment)
        if not is_segment:
            if "serve" not in rule:
                problems.add(f"{rule_path}.serve", "is required")
            else:
                _check_serve(problems, f"{rule_path}.serve", rule["serve"], variation_ids)


def _check_clause(problems: _Problems, path: str, clause: object, is_segment: bool) -> None:
    if not isinstance(clause, Mapping):
        problems.add(path, "must be an object with attribute, op and values")
        return
    op = clause.get("op")
    if op not in CLAUSE_OPERATORS:
        problems.add(f"{path}.op", f"unknown operator {op!r}")
        return
    if op == "in_segment" and is_segment:
        problems.add(f"{path}.op", "a segment rule cannot use in_segment")
    if op != "in_segment" and not _nonempty_str(clause.get("attribute")):
        problems.add(f"{path}.attribute", "must be a non-empty string")
    if "negate" in clause and not _is_bool(clause["negate"]):
        problems.add(f"{path}.negate", "must be true or false")
    values = _list(problems, f"{path}.values", clause.get("values"), required=True)
    if isinstance(clause.get("values"), list) and not values:
        problems.add(f"{path}.values", "must hold at least one value")
    for index, value in enumerate(values):
        message = _clause_value_problem(str(op), value)
        if message:
            problems.add(f"{path}.values[{index}]", message)


def _clause_value_problem(op: str, value: object) -> str | None:
    if op == "in":
        if value.__class__ in (str, bool) or is_number(value):
            return None
        return "must be a string, number or boolean"
    if op == "in_segment":
        return None if _nonempty_str(value) else "must be a segment key"
    if op in STRING_OPERATORS:
        if not isinstance(value, str):
            return "must be a string"
        if op == "matches":
            return _pattern_problem(value)
        return None
    if op in NUMBER_OPERATORS:
        return None if is_number(value) else "must be a number"
    if op in SEMVER_OPERATORS:
        if isinstance(value, str) and parse_semver(value) is not None:
            return None
        return f"{value!r} is not a semantic version"
    # before / after
    if timestamp_ms(value) is None:
        return "must be an RFC 3339 date-time with a zone, or epoch milliseconds"
    return None


def _pattern_problem(pattern: str) -> str | None:
    if len(pattern) > MAX_PATTERN_LENGTH:
        return f"a pattern may be at most {MAX_PATTERN_LENGTH} characters"
    try:
        re2.compile(pattern, _REGEX_OPTIONS)
    except re2.error as error:
        detail = error.args[0] if error.args else "invalid"
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        return f"not a valid regular expression (RE2 syntax): {detail}"
    return None


def _check_serve(problems: _Problems, path: str, serve: object, variation_ids: set[str]) -> None:
    if not isinstance(serve, Mapping) or ("variation" in serve) == ("rollout" in serve):
        problems.add(path, 'must be {"variation": id} or {"rollout": {...}}')
        return
    if "variation" in serve:
        if serve["variation"] not in variation_ids:
            problems.add(f"{path}.variation", f"unknown variation {serve['variation']!r}")
        return
    rollout = serve["rollout"]
    path = f"{path}.rollout"
    if not isinstance(rollout, Mapping):
        problems.add(path, "must be an object with variations")
        return
    if "bucket_by" in rollout and not _nonempty_str(rollout["bucket_by"]):
        problems.add(f"{path}.bucket_by", "must be a non-empty string (an attribute)")
    entries = _list(problems, f"{path}.variations", rollout.get("variations"), required=True)
    if isinstance(rollout.get("variations"), list) and not entries:
        problems.add(f"{path}.variations", "must hold at least one variation")
    total = 0
    for index, entry in enumerate(entries):
        entry_path = f"{path}.variations[{index}]"
        if not isinstance(entry, Mapping):
            problems.add(entry_path, "must be an object with variation and weight")
            continue
        if entry.get("variation") not in variation_ids:
            problems.add(f"{entry_path}.variation", f"unknown variation {entry.get('variation')!r}")
        weight = entry.get("weight")
        if not (_is_int(weight) and 0 <= weight <= TOTAL_WEIGHT):
            problems.add(f"{entry_path}.weight", f"must be an integer from 0 to {TOTAL_WEIGHT}")
        else:
            total += weight
    if (
        entries
        and total != TOTAL_WEIGHT
        and not any(
            line.startswith(f"{path}.variations[") and ".weight" in line for line in problems.lines
        )
    ):
        problems.add(f"{path}.variations", f"weights sum to {total}, not {TOTAL_WEIGHT}")


def _check_schedule(problems: _Problems, schedule: object, variation_ids: set[str]) -> None:
    seen: set[float] = set()
    for index, step in enumerate(_list(problems, "schedule", schedule)):
        path = f"schedule[{index}]"
        if not isinstance(step, Mapping):
            problems.add(path, "must be an object with at and fallthrough")
            continue
        at = step.get("at")
        moment = parse_timestamp_ms(at) if isinstance(at, str) else None
        if moment is None:
            problems.add(f"{path}.at", "must be an RFC 3339 date-time with a zone")
        elif moment in seen:
            problems.add(f"{path}.at", f"two steps at {at}")
        else:
            seen.add(moment)
        if "fallthrough" not in step:
            problems.add(f"{path}.fallthrough", "is required")
        else:
            _check_serve(problems, f"{path}.fallthrough", step["fallthrough"], variation_ids)


def now_ms(now: datetime | None) -> float:
    """``now`` (UTC if naive) or the current time, as epoch milliseconds."""
    if now is None:
        return time.time() * 1000.0
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.timestamp() * 1000.0
