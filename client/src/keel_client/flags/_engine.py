"""The flag evaluation engine the SDK and the server share.

A snapshot is compiled once into a :class:`FlagStore`: every flag becomes a small tree of
prepared objects — frozensets for ``in`` values, tuples for ``startswith``/``endswith``,
RE2 patterns, parsed semantic versions and dates reduced to one bound, cumulative rollout
weights, and every result the flag can give (value, variation, reason) built in advance.
Evaluating is then a walk over that tree that allocates nothing on the common paths.

Evaluation order (``docs/flags.md``, section "Evaluation engine"): flag missing →
``ERROR``/``FLAG_NOT_FOUND``; off → ``OFF``; prerequisites → ``PREREQUISITE_FAILED``;
individual targets → ``TARGET_MATCH``; rules in order → ``RULE_MATCH``; the fallthrough
(after the schedule) → ``FALLTHROUGH``. Evaluation never raises: whatever goes wrong is an
``ERROR`` result carrying the caller's default.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import re2

from keel_client.flags._model import (
    MAX_PREREQUISITE_DEPTH,
    TOTAL_WEIGHT,
    FlagType,
    has_type,
    is_number,
    now_ms,
    parse_semver,
    parse_timestamp_ms,
    regex_options,
    timestamp_ms,
    validate_flag,
    validate_segment,
)

__all__ = [
    "ErrorKind",
    "EvaluationDetail",
    "EvaluationReason",
    "FlagStore",
    "ReasonKind",
    "bucket",
    "evaluate",
]

_logger = logging.getLogger("keel_client.flags")

#: The divisor of LaunchDarkly's bucketing: the largest 15-hex-digit number.
_BUCKET_SCALE: Final = 0xFFFFFFFFFFFFFFF
_sha1 = hashlib.sha1


class ReasonKind(StrEnum):
    """Why an evaluation gave its value."""

    TARGET_MATCH = "TARGET_MATCH"
    RULE_MATCH = "RULE_MATCH"
    FALLTHROUGH = "FALLTHROUGH"
    OFF = "OFF"
    PREREQUISITE_FAILED = "PREREQUISITE_FAILED"
    ERROR = "ERROR"


class ErrorKind(StrEnum):
    """What went wrong when the reason is ``ERROR`` (the caller's default is served)."""

    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    #: The flag (or a segment or prerequisite it needs) fails validation, or its
    #: prerequisites form a cycle or nest deeper than ten.
    MALFORMED_FLAG = "MALFORMED_FLAG"
    #: The variation's value is not of the type the caller asked for.
    WRONG_TYPE = "WRONG_TYPE"
    #: The context is not an object with a string ``key``.
    INVALID_CONTEXT = "INVALID_CONTEXT"
    #: An unexpected exception inside the engine (a bug): logged, never raised.
    EXCEPTION = "EXCEPTION"


@dataclass(frozen=True, slots=True)
class EvaluationReason:
    """The reason of one evaluation; :meth:`to_dict` gives its JSON shape."""

    kind: ReasonKind
    rule_id: str | None = None
    rule_index: int | None = None
    prerequisite_key: str | None = None
    error_kind: ErrorKind | None = None
    #: The flag is an experiment and the variation came from a rollout.
    in_experiment: bool = False

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., optional "rule_id", "rule_index", "prerequisite_key",
        "error_kind", "in_experiment"}``."""
        data: dict[str, Any] = {"kind": self.kind.value}
        if self.rule_id is not None:
            data["rule_id"] = self.rule_id
            data["rule_index"] = self.rule_index
        if self.prerequisite_key is not None:
            data["prerequisite_key"] = self.prerequisite_key
        if self.error_kind is not None:
            data["error_kind"] = self.error_kind.value
        if self.in_experiment:
            data["in_experiment"] = True
        return data


@dataclass(frozen=True, slots=True)
class EvaluationDetail:
    """The result of evaluating a flag for a context.

    ``variation`` is ``None`` exactly when ``value`` is the caller's default (an error, or a
    flag that is off without an off variation).

    Example::

        detail = store.evaluate("checkout-v2", {"key": "user-1"}, False)
        if detail.value:
            ...
        log.info("flag", variation=detail.variation, reason=detail.reason.to_dict())
    """

    value: Any
    variation: str | None
    reason: EvaluationReason

    @property
    def is_default_value(self) -> bool:
        return self.variation is None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "variation": self.variation, "reason": self.reason.to_dict()}


def bucket(salt: str, value: str) -> float:
    """The sticky bucket of ``value`` under ``salt``, in ``[0, 1]``.

    LaunchDarkly's algorithm: the first 15 hex digits of ``sha1(f"{salt}.{value}")`` over
    ``0xFFFFFFFFFFFFFFF``. It depends on nothing but its inputs, so it is the same in every
    process, on every platform and in every version of Keel.
    """
    digest = _sha1(f"{salt}.{value}".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:15], 16) / _BUCKET_SCALE


class _EvaluationError(Exception):
    """Ends an evaluation with ``ERROR``; caught by :meth:`FlagStore.evaluate`."""

    def __init__(self, error_kind: ErrorKind) -> None:
        super().__init__(error_kind.value)
        self.error_kind = error_kind


_ERROR_REASONS: Final = {
    kind: EvaluationReason(ReasonKind.ERROR, error_kind=kind) for kind in ErrorKind
}
_OFF: Final = EvaluationReason(ReasonKind.OFF)
_TARGET_MATCH: Final = EvaluationReason(ReasonKind.TARGET_MATCH)
_FALLTHROUGH: Final = EvaluationReason(ReasonKind.FALLTHROUGH)

# -- clauses ---------------------------------------------------------------------------------

#: A compiled clause: does the context match? (the store resolves segments)
_Match = Callable[[Mapping[str, Any], "FlagStore"], bool]
#: A compiled operator applied to one attribute value.
_Test = Callable[[Any], bool]
_NUMBER_CLASSES: Final = frozenset({int, float})  # bool is a subclass of int, not one of these


def _value_test(op: str, values: list[Any]) -> _Test:
    """The operator as a predicate on one attribute value; wrong types give ``False``."""
    if op == "in":
        strings = frozenset(value for value in values if value.__class__ is str)
        numbers = frozenset(value for value in values if is_number(value))
        booleans = frozenset(value for value in values if value.__class__ is bool)
        if not numbers and not booleans:
            return lambda value: value.__class__ is str and value in strings

        def is_in(value: Any) -> bool:
            kind = value.__class__
            if kind is str:
                return value in strings
            if kind is int or kind is float:
                return value in numbers
            return kind is bool and value in booleans

        return is_in
    if op == "starts_with":
        prefixes = tuple(values)
        return lambda value: value.__class__ is str and value.startswith(prefixes)
    if op == "ends_with":
        suffixes = tuple(values)
        return lambda value: value.__class__ is str and value.endswith(suffixes)
    if op == "contains":
        needles = tuple(values)
        return lambda value: value.__class__ is str and any(needle in value for needle in needles)
    if op == "matches":
        options = regex_options()
        patterns = tuple(re2.compile(pattern, options) for pattern in values)

        def matches(value: Any) -> bool:
            if value.__class__ is not str:
                return False
            return any(pattern.search(value) is not None for pattern in patterns)

        return matches
    if op in ("lt", "lte"):
        # Matching ANY value of the list is comparing with its largest (or smallest) one.
        high = max(values)
        if op == "lt":
            return lambda value: (
                (value.__class__ is int or value.__class__ is float) and value < high
            )
        return lambda value: (value.__class__ is int or value.__class__ is float) and value <= high
    if op in ("gt", "gte"):
        low = min(values)
        if op == "gt":
            return lambda value: (
                (value.__class__ is int or value.__class__ is float) and value > low
            )
        return lambda value: (value.__class__ is int or value.__class__ is float) and value >= low
    if op in ("semver_eq", "semver_lt", "semver_gt"):
        versions = [version for version in map(parse_semver, values) if version is not None]
        highest, lowest = max(versions), min(versions)

        def semver_test(value: Any) -> bool:
            if value.__class__ is not str:
                return False
            version = parse_semver(value)
            if version is None:
                return False
            if op == "semver_lt":
                return bool(version < highest)
            if op == "semver_gt":
                return bool(version > lowest)
            return any(version.compare(other) == 0 for other in versions)

        return semver_test
    moments = [moment for moment in map(timestamp_ms, values) if moment is not None]
    if op == "before":
        latest = max(moments)

        def before(value: Any) -> bool:
            moment = timestamp_ms(value)
            return moment is not None and moment < latest

        return before
    if op == "after":
        earliest = min(moments)

        def after(value: Any) -> bool:
            moment = timestamp_ms(value)
            return moment is not None and moment > earliest

        return after
    raise ValueError(f"unknown operator {op!r}")  # validation refuses it first


def _compile_clause(clause: Mapping[str, Any]) -> _Match:
    op: str = clause["op"]
    values: list[Any] = clause["values"]
    negate = bool(clause.get("negate", False))
    if op == "in_segment":
        segment_keys = tuple(dict.fromkeys(values))

        def in_segment(context: Mapping[str, Any], store: FlagStore) -> bool:
            segments = store._segments
            for key in segment_keys:
                segment = segments.get(key)
                if segment is not None and segment.contains(context, store):
                    return not negate
            return negate

        return in_segment
    attribute: str = clause["attribute"]
    test = _value_test(op, values)
    # ``kind`` defaults to "user"; any other missing attribute reads as None, which no
    # operator matches (so a negated clause does).
    missing = "user" if attribute == "kind" else None

    def match(context: Mapping[str, Any], store: FlagStore) -> bool:
        value = context.get(attribute, missing)
        if value.__class__ is list:
            for item in value:
                if test(item):
                    return not negate
            return negate
        return test(value) is not negate

    return match


def _rules_match(clauses: tuple[_Match, ...], context: Mapping[str, Any], store: FlagStore) -> bool:
    # A plain loop: measurably faster than all() over a generator on the hot path.
    for clause in clauses:  # noqa: SIM110
        if not clause(context, store):
            return False
    return True


# -- segments --------------------------------------------------------------------------------


class _Segment:
    __slots__ = ("excluded", "included", "key", "problems", "rules")

    def __init__(self, key: str, segment: Mapping[str, Any], problems: list[str]) -> None:
        self.key = key
        self.problems = tuple(problems)
        if problems:
            self.included: frozenset[str] = frozenset()
            self.excluded: frozenset[str] = frozenset()
            self.rules: tuple[tuple[tuple[_Match, ...], bool], ...] = ()
            return
        self.included = frozenset(segment.get("included") or ())
        self.excluded = frozenset(segment.get("excluded") or ())
        self.rules = tuple(
            (
                tuple(_compile_clause(clause) for clause in rule["clauses"]),
                bool(rule.get("negate", False)),
            )
            for rule in segment.get("rules") or ()
        )

    def contains(self, context: Mapping[str, Any], store: FlagStore) -> bool:
        """Included wins, then excluded, then any rule."""
        if self.problems:
            raise _EvaluationError(ErrorKind.MALFORMED_FLAG)
        key = context["key"]
        if key in self.included:
            return True
        if key in self.excluded:
            return False
        for clauses, negate in self.rules:
            if _rules_match(clauses, context, store) is not negate:
                return True
        return False


def _compile_segment(key: str, segment: object) -> _Segment:
    problems = validate_segment(segment)
    if not problems and isinstance(segment, Mapping) and segment.get("key") != key:
        problems.append(f"key: {segment.get('key')!r} is filed under {key!r} in the snapshot")
    if problems:
        return _Segment(key, {}, problems)
    assert isinstance(segment, Mapping)
    try:
        return _Segment(key, segment, [])
    except Exception as error:  # defensive: validation should have refused it
        return _Segment(key, {}, [f"could not be compiled ({type(error).__name__})"])


# -- flags -----------------------------------------------------------------------------------


class _Rollout:
    """Weighted variations: cumulative upper bounds and the result of each."""

    __slots__ = ("bounds", "bucket_by", "results", "salt")

    def __init__(
        self, salt: str, bucket_by: str, bounds: list[int], results: list[EvaluationDetail]
    ) -> None:
        self.salt = salt
        self.bucket_by = bucket_by
        self.bounds = bounds
        self.results = results

    def pick(self, context: Mapping[str, Any]) -> EvaluationDetail:
        bucket_by = self.bucket_by
        if bucket_by == "key":
            value = context["key"]
        else:
            # A missing attribute (or one that is neither a string nor an integer)
            # buckets by the context key.
            value = context.get(bucket_by)
            kind = value.__class__
            if kind is int:
                value = str(value)
            elif kind is not str:
                value = context["key"]
        # bucket(), inlined: this is the hot path of every rollout.
        digest = _sha1(f"{self.salt}.{value}".encode(), usedforsecurity=False).hexdigest()
        position = int(digest[:15], 16) / _BUCKET_SCALE * TOTAL_WEIGHT
        index = bisect_right(self.bounds, position)
        results = self.results
        # A bucket of exactly 1.0 reaches no upper bound: it belongs to the last variation.
        return results[index] if index < len(results) else results[-1]


_Serve = EvaluationDetail | _Rollout
_Rule = tuple[tuple[_Match, ...], bool, _Serve]


class _Flag:
    """A compiled flag. ``problems`` non-empty means malformed: evaluating it is an error."""

    __slots__ = (
        "fallthrough",
        "has_mutable_values",
        "is_on",
        "key",
        "off",
        "prerequisites",
        "problems",
        "rules",
        "schedule",
        "targets",
        "version",
    )

    def __init__(self, key: str, flag: Mapping[str, Any], problems: list[str]) -> None:
        self.key = key
        self.problems = tuple(problems)
        self.version: int | None = flag.get("version") if isinstance(flag, Mapping) else None
        self.is_on = False
        self.off = EvaluationDetail(None, None, _OFF)
        self.prerequisites: tuple[tuple[str, str, EvaluationDetail], ...] = ()
        self.targets: dict[str, EvaluationDetail] = {}
        self.rules: tuple[_Rule, ...] = ()
        self.fallthrough: _Serve = self.off
        self.schedule: tuple[tuple[float, _Serve], ...] = ()
        self.has_mutable_values = False
        if not problems:
            self._compile(flag)

    def _compile(self, flag: Mapping[str, Any]) -> None:
        values = {variation["id"]: variation["value"] for variation in flag["variations"]}
        experiment = bool(flag.get("experiment", False))
        salt: str = flag.get("salt") or self.key

        def result(variation_id: str | None, reason: EvaluationReason) -> EvaluationDetail:
            if variation_id is None:
                return EvaluationDetail(None, None, reason)
            return EvaluationDetail(values[variation_id], variation_id, reason)

        def serve(spec: Mapping[str, Any], reason: EvaluationReason) -> _Serve:
            if "variation" in spec:
                return result(spec["variation"], reason)
            rollout = spec["rollout"]
            if experiment:
                reason = EvaluationReason(
                    reason.kind, reason.rule_id, reason.rule_index, in_experiment=True
                )
            bounds, results, total = [], [], 0
            for entry in rollout["variations"]:
                total += entry["weight"]
                bounds.append(total)
                results.append(result(entry["variation"], reason))
            return _Rollout(salt, rollout.get("bucket_by") or "key", bounds, results)

        self.is_on = flag["on"]
        self.off = result(flag.get("off_variation"), _OFF)
        self.prerequisites = tuple(
            (
                prerequisite["key"],
                prerequisite["variation"],
                result(
                    flag.get("off_variation"),
                    EvaluationReason(
                        ReasonKind.PREREQUISITE_FAILED, prerequisite_key=prerequisite["key"]
                    ),
                ),
            )
            for prerequisite in flag.get("prerequisites") or ()
        )
        targets: dict[str, EvaluationDetail] = {}
        for target in flag.get("targets") or ():
            target_result = result(target["variation"], _TARGET_MATCH)
            for context_key in target["values"]:
                targets.setdefault(context_key, target_result)  # the first target wins
        self.targets = targets
        self.rules = tuple(
            (
                tuple(_compile_clause(clause) for clause in rule["clauses"]),
                bool(rule.get("negate", False)),
                serve(rule["serve"], EvaluationReason(ReasonKind.RULE_MATCH, rule["id"], index)),
            )
            for index, rule in enumerate(flag.get("rules") or ())
        )
        self.fallthrough = serve(flag["fallthrough"], _FALLTHROUGH)
        steps = [
            (parse_timestamp_ms(step["at"]) or 0.0, serve(step["fallthrough"], _FALLTHROUGH))
            for step in flag.get("schedule") or ()
        ]
        self.schedule = tuple(sorted(steps, key=lambda step: step[0]))
        self.has_mutable_values = any(isinstance(value, (dict, list)) for value in values.values())

    def evaluate(
        self,
        context: Mapping[str, Any],
        store: FlagStore,
        now: datetime | None,
        chain: tuple[str, ...],
    ) -> EvaluationDetail:
        """The result for ``context``; ``variation`` None means "the caller's default"."""
        if self.problems:
            raise _EvaluationError(ErrorKind.MALFORMED_FLAG)
        if not self.is_on:
            return self.off
        if self.prerequisites:
            failed = self._failed_prerequisite(context, store, now, chain)
            if failed is not None:
                return failed
        if self.targets:
            target = self.targets.get(context["key"])
            if target is not None:
                return target
        for clauses, negate, rule_serve in self.rules:
            if _rules_match(clauses, context, store) is not negate:
                return rule_serve.pick(context) if isinstance(rule_serve, _Rollout) else rule_serve
        serve = self.fallthrough
        if self.schedule:
            moment = now_ms(now)
            for at, step in self.schedule:
                if at > moment:
                    break
                serve = step  # the latest step whose time has come
        return serve.pick(context) if isinstance(serve, _Rollout) else serve

    def _failed_prerequisite(
        self,
        context: Mapping[str, Any],
        store: FlagStore,
        now: datetime | None,
        chain: tuple[str, ...],
    ) -> EvaluationDetail | None:
        inner = (*chain, self.key)
        for key, variation_id, failed in self.prerequisites:
            prerequisite = store._flags.get(key)
            if prerequisite is None:
                return failed
            if key in inner or len(inner) > MAX_PREREQUISITE_DEPTH:
                raise _EvaluationError(ErrorKind.MALFORMED_FLAG)
            outcome = prerequisite.evaluate(context, store, now, inner)
            if not prerequisite.is_on or outcome.variation != variation_id:
                return failed
        return None


def _compile_flag(key: str, flag: object) -> _Flag:
    problems = validate_flag(flag)
    if not problems and isinstance(flag, Mapping) and flag.get("key") != key:
        problems.append(f"key: {flag.get('key')!r} is filed under {key!r} in the snapshot")
    mapping: Mapping[str, Any] = flag if isinstance(flag, Mapping) else {}
    try:
        return _Flag(key, mapping, problems)
    except Exception as error:  # defensive: validation should have refused it
        return _Flag(key, mapping, [f"could not be compiled ({type(error).__name__})"])


# -- the store -------------------------------------------------------------------------------


class FlagStore:
    """A snapshot of one environment, compiled for fast evaluation. Immutable.

    Example::

        store = FlagStore(snapshot)          # {"environment", "version", "flags", "segments"}
        detail = store.evaluate("checkout-v2", {"key": "user-1", "email": "a@corp.com"}, False)
        detail.value, detail.variation, detail.reason.kind

        store = store.with_changes(flags={"checkout-v2": new_flag})   # or None to delete

    A flag or segment that fails validation is kept, and evaluates to
    ``ERROR``/``MALFORMED_FLAG`` with the caller's default; :meth:`problems` says why.
    Construction raises ``ValueError`` only when the snapshot itself is not a snapshot.
    """

    __slots__ = ("_flags", "_segments", "environment", "version")

    def __init__(self, snapshot: Mapping[str, Any] | None = None) -> None:
        snapshot = {} if snapshot is None else snapshot
        if not isinstance(snapshot, Mapping):
            raise ValueError("a flag snapshot must be a JSON object")
        flags = _mapping_of(snapshot, "flags")
        segments = _mapping_of(snapshot, "segments")
        self.environment: str | None = snapshot.get("environment")
        self.version: int | None = snapshot.get("version")
        self._segments: dict[str, _Segment] = {
            key: _compile_segment(key, segment) for key, segment in segments.items()
        }
        self._flags: dict[str, _Flag] = {
            key: _compile_flag(key, flag) for key, flag in flags.items()
        }

    def with_changes(
        self,
        *,
        flags: Mapping[str, Any] | None = None,
        segments: Mapping[str, Any] | None = None,
        version: int | None = None,
    ) -> FlagStore:
        """A new store with these flags and segments replaced (``None`` deletes one).

        Unchanged flags are shared, not recompiled: a change stream can apply one flag at a
        time. Segments and prerequisites are looked up at evaluation, so a changed segment
        takes effect in every flag that uses it.
        """
        changed = FlagStore.__new__(FlagStore)
        changed.environment = self.environment
        changed.version = self.version if version is None else version
        changed._flags = dict(self._flags)
        changed._segments = dict(self._segments)
        for key, flag in (flags or {}).items():
            if flag is None:
                changed._flags.pop(key, None)
            else:
                changed._flags[key] = _compile_flag(key, flag)
        for key, segment in (segments or {}).items():
            if segment is None:
                changed._segments.pop(key, None)
            else:
                changed._segments[key] = _compile_segment(key, segment)
        return changed

    def keys(self) -> list[str]:
        """The keys of the flags in the snapshot."""
        return list(self._flags)

    def problems(self) -> dict[str, list[str]]:
        """Why each malformed flag or segment is refused: ``{"flags.<key>": [...],
        "segments.<key>": [...]}``; empty when everything compiled."""
        found = {
            f"flags.{key}": list(flag.problems)
            for key, flag in self._flags.items()
            if flag.problems
        }
        found.update(
            (f"segments.{key}", list(segment.problems))
            for key, segment in self._segments.items()
            if segment.problems
        )
        return found

    def evaluate(
        self,
        flag_key: str,
        context: Mapping[str, Any],
        default: Any = None,
        *,
        now: datetime | None = None,
        value_type: FlagType | None = None,
    ) -> EvaluationDetail:
        """Evaluate ``flag_key`` for ``context``. Never raises.

        ``now`` decides the schedule's step (default: the current time). With
        ``value_type``, a value of another type is ``ERROR``/``WRONG_TYPE`` with ``default``.
        """
        flag = self._flags.get(flag_key)
        if flag is None:
            return EvaluationDetail(default, None, _ERROR_REASONS[ErrorKind.FLAG_NOT_FOUND])
        if (context.__class__ is not dict and not isinstance(context, Mapping)) or context.get(
            "key"
        ).__class__ is not str:
            return EvaluationDetail(default, None, _ERROR_REASONS[ErrorKind.INVALID_CONTEXT])
        try:
            detail = flag.evaluate(context, self, now, ())
        except _EvaluationError as error:
            return EvaluationDetail(default, None, _ERROR_REASONS[error.error_kind])
        except Exception as error:
            # Never raise from an evaluation; the exception's type is enough to find the
            # bug and keeps context values out of the log.
            _logger.error("flag %r: evaluation failed (%s)", flag_key, type(error).__name__)
            return EvaluationDetail(default, None, _ERROR_REASONS[ErrorKind.EXCEPTION])
        if detail.variation is None:
            return EvaluationDetail(default, None, detail.reason)
        # Every validated value is JSON: only the other types need a look at the value.
        if (
            value_type is not None
            and value_type != "json"
            and not has_type(detail.value, value_type)
        ):
            return EvaluationDetail(default, None, _ERROR_REASONS[ErrorKind.WRONG_TYPE])
        if flag.has_mutable_values:
            # The compiled result is shared: the caller gets its own copy of a JSON value.
            return EvaluationDetail(copy.deepcopy(detail.value), detail.variation, detail.reason)
        return detail

    def evaluate_all(
        self, context: Mapping[str, Any], *, now: datetime | None = None
    ) -> dict[str, EvaluationDetail]:
        """Every flag of the snapshot for ``context`` (default value ``None``)."""
        return {key: self.evaluate(key, context, None, now=now) for key in self._flags}


def _mapping_of(snapshot: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = snapshot.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ValueError(f"a flag snapshot's {name!r} must be an object keyed by {name[:-1]} key")
    return value


def evaluate(
    snapshot_or_store: FlagStore | Mapping[str, Any],
    flag_key: str,
    context: Mapping[str, Any],
    default: Any = None,
    *,
    now: datetime | None = None,
    value_type: FlagType | None = None,
) -> EvaluationDetail:
    """Evaluate one flag of a :class:`FlagStore`, or of a snapshot dict (compiled for this
    one call: keep a store to evaluate often). Never raises."""
    if isinstance(snapshot_or_store, FlagStore):
        store = snapshot_or_store
    else:
        try:
            store = FlagStore(snapshot_or_store)
        except ValueError:
            return EvaluationDetail(default, None, _ERROR_REASONS[ErrorKind.MALFORMED_FLAG])
    return store.evaluate(flag_key, context, default, now=now, value_type=value_type)
