"""The compiled engine agrees with a plain reading of the spec, over random flags and contexts.

``reference_evaluate`` below walks the JSON as ``docs/flags.md`` describes it, with no
compilation, no precomputed bounds and no caches; random snapshots (targets, rules with
every operator, segments, prerequisites including cycles, rollouts, schedules) and random
contexts (including wrong types, lists and missing attributes) must give the same value,
variation and reason from both.
"""

from __future__ import annotations

import hashlib
import random
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import semver

from keel_client.flags import FlagStore, validate_flag, validate_segment

SEED = 20261122

# -- the reference interpretation ------------------------------------------------------------

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _as_ms(value: Any) -> float | None:
    if _is_number(value):
        return float(value)
    if isinstance(value, str) and _DATE.fullmatch(value):
        return datetime.fromisoformat(value.replace("z", "Z")).timestamp() * 1000
    return None


def _as_version(value: Any) -> semver.Version | None:
    if not isinstance(value, str):
        return None
    try:
        return semver.Version.parse(value, optional_minor_and_patch=True)
    except ValueError:
        return None


def _op_matches(op: str, actual: Any, expected: Any) -> bool:
    if op == "in":
        if type(actual) is bool or type(expected) is bool:
            return type(actual) is type(expected) and actual == expected
        if _is_number(actual) and _is_number(expected):
            return bool(actual == expected)
        return type(actual) is str and actual == expected
    if op in ("starts_with", "ends_with", "contains", "matches"):
        if type(actual) is not str:
            return False
        if op == "starts_with":
            return actual.startswith(expected)
        if op == "ends_with":
            return actual.endswith(expected)
        if op == "contains":
            return expected in actual
        return re.search(expected, actual) is not None
    if op in ("lt", "lte", "gt", "gte"):
        if not _is_number(actual):
            return False
        return bool(
            {
                "lt": actual < expected,
                "lte": actual <= expected,
                "gt": actual > expected,
                "gte": actual >= expected,
            }[op]
        )
    if op.startswith("semver_"):
        mine, theirs = _as_version(actual), _as_version(expected)
        if mine is None or theirs is None:
            return False
        return {
            "semver_eq": mine.compare(theirs) == 0,
            "semver_lt": mine.compare(theirs) < 0,
            "semver_gt": mine.compare(theirs) > 0,
        }[op]
    mine_ms, theirs_ms = _as_ms(actual), _as_ms(expected)
    if mine_ms is None or theirs_ms is None:
        return False
    return mine_ms < theirs_ms if op == "before" else mine_ms > theirs_ms


def _clause_matches(
    clause: dict[str, Any], context: dict[str, Any], snapshot: dict[str, Any]
) -> bool:
    if clause["op"] == "in_segment":
        result = any(
            key in snapshot["segments"]
            and _in_segment(snapshot["segments"][key], context, snapshot)
            for key in clause["values"]
        )
    else:
        attribute = clause["attribute"]
        actual = context.get(attribute, "user" if attribute == "kind" else None)
        candidates = actual if isinstance(actual, list) else [actual]
        result = any(
            _op_matches(clause["op"], item, value)
            for item in candidates
            for value in clause["values"]
        )
    return bool(result != clause.get("negate", False))


def _rule_matches(rule: dict[str, Any], context: dict[str, Any], snapshot: dict[str, Any]) -> bool:
    matched = all(_clause_matches(clause, context, snapshot) for clause in rule["clauses"])
    return bool(matched != rule.get("negate", False))


def _in_segment(segment: dict[str, Any], context: dict[str, Any], snapshot: dict[str, Any]) -> bool:
    if context["key"] in segment["included"]:
        return True
    if context["key"] in segment["excluded"]:
        return False
    return any(_rule_matches(rule, context, snapshot) for rule in segment["rules"])


class _Malformed(Exception):
    pass


def _serve(
    flag: dict[str, Any], serve: dict[str, Any], context: dict[str, Any]
) -> tuple[str, bool]:
    if "variation" in serve:
        return serve["variation"], False
    rollout = serve["rollout"]
    attribute = rollout.get("bucket_by", "key")
    value = context.get(attribute)
    if type(value) is int:
        value = str(value)
    if type(value) is not str:
        value = context["key"]
    salt = flag.get("salt", flag["key"])
    digest = hashlib.sha1(f"{salt}.{value}".encode(), usedforsecurity=False).hexdigest()
    point = int(digest[:15], 16) / 0xFFFFFFFFFFFFFFF * 100_000
    upper = 0
    for entry in rollout["variations"]:
        upper += entry["weight"]
        if point < upper:
            return entry["variation"], True
    return rollout["variations"][-1]["variation"], True


def _evaluate_flag(
    snapshot: dict[str, Any],
    flag: dict[str, Any],
    context: dict[str, Any],
    now: datetime,
    visiting: list[str],
) -> tuple[str | None, dict[str, Any]]:
    if not flag["on"]:
        return flag.get("off_variation"), {"kind": "OFF"}
    for prerequisite in flag["prerequisites"]:
        other = snapshot["flags"].get(prerequisite["key"])
        if other is None:
            return flag.get("off_variation"), {
                "kind": "PREREQUISITE_FAILED",
                "prerequisite_key": prerequisite["key"],
            }
        if prerequisite["key"] in [*visiting, flag["key"]] or len(visiting) + 1 > 10:
            raise _Malformed
        variation, _ = _evaluate_flag(snapshot, other, context, now, [*visiting, flag["key"]])
        if not other["on"] or variation != prerequisite["variation"]:
            return flag.get("off_variation"), {
                "kind": "PREREQUISITE_FAILED",
                "prerequisite_key": prerequisite["key"],
            }
    for target in flag["targets"]:
        if context["key"] in target["values"]:
            return target["variation"], {"kind": "TARGET_MATCH"}
    for index, rule in enumerate(flag["rules"]):
        if _rule_matches(rule, context, snapshot):
            variation, from_rollout = _serve(flag, rule["serve"], context)
            reason = {"kind": "RULE_MATCH", "rule_id": rule["id"], "rule_index": index}
            if from_rollout and flag.get("experiment"):
                reason["in_experiment"] = True
            return variation, reason
    fallthrough = flag["fallthrough"]
    for step in sorted(flag.get("schedule", []), key=lambda step: _as_ms(step["at"]) or 0):
        if _as_ms(step["at"]) <= now.timestamp() * 1000:  # type: ignore[operator]
            fallthrough = step["fallthrough"]
    variation, from_rollout = _serve(flag, fallthrough, context)
    reason = {"kind": "FALLTHROUGH"}
    if from_rollout and flag.get("experiment"):
        reason["in_experiment"] = True
    return variation, reason


def reference_evaluate(
    snapshot: dict[str, Any], key: str, context: dict[str, Any], default: Any, now: datetime
) -> tuple[Any, str | None, dict[str, Any]]:
    flag = snapshot["flags"].get(key)
    if flag is None:
        return default, None, {"kind": "ERROR", "error_kind": "FLAG_NOT_FOUND"}
    try:
        variation, reason = _evaluate_flag(snapshot, flag, context, now, [])
    except _Malformed:
        return default, None, {"kind": "ERROR", "error_kind": "MALFORMED_FLAG"}
    if variation is None:
        return default, None, reason
    values = {item["id"]: item["value"] for item in flag["variations"]}
    return values[variation], variation, reason


# -- random snapshots and contexts -----------------------------------------------------------

COUNTRIES = ["US", "CA", "FR", "DE", "JP"]
DOMAINS = ["@corp.com", "@mail.com", "@corp.com.evil"]
VERSIONS = ["1.0.0", "1.2", "1.2.3", "1.2.3-rc.1", "2.0.0", "10.1.0", "bad", "1.2.3+b9"]
DATES = [
    "2026-01-01T00:00:00Z",
    "2026-06-15T12:30:00+02:00",
    "2026-12-31T23:59:59.5Z",
    1_767_225_600_000,
    "2026-06-15",
    "2026-06-15T12:30:00",
]
PATTERNS = [r"^u\d+@", r"corp\.com$", "[aeiou]{2}", "^x"]
BASE = datetime(2026, 12, 1, tzinfo=UTC)


def _random_value(rng: random.Random) -> Any:
    return rng.choice([None, True, 3, 2.5, "US", ["US", "FR"], {"a": 1}, "1.2.3", [], 18])


def _random_context(rng: random.Random, index: int) -> dict[str, Any]:
    context: dict[str, Any] = {
        "key": f"u{rng.randrange(60)}" if rng.random() < 0.5 else f"k{index}"
    }
    if rng.random() < 0.8:
        context["country"] = rng.choice([*COUNTRIES, ["US", "JP"], 7, None])
    if rng.random() < 0.8:
        context["email"] = f"u{rng.randrange(100)}{rng.choice(DOMAINS)}"
    if rng.random() < 0.8:
        context["age"] = rng.choice(
            [rng.randrange(0, 90), rng.uniform(0, 90), 18, 21.5, 65, "30", True]
        )
    if rng.random() < 0.7:
        context["version"] = rng.choice([*VERSIONS, 3])
    if rng.random() < 0.7:
        context["signup"] = rng.choice(
            [*DATES, rng.randrange(1_760_000_000_000, 1_800_000_000_000)]
        )
    if rng.random() < 0.5:
        context["groups"] = rng.sample(["staff", "beta", "ops", "admins"], rng.randrange(0, 3))
    if rng.random() < 0.3:
        context["kind"] = rng.choice(["user", "device", "org"])
    if rng.random() < 0.3:
        context["org"] = rng.choice([f"org-{rng.randrange(5)}", rng.randrange(5), None, 1.5])
    if rng.random() < 0.2:
        context[rng.choice(["country", "email", "age", "version", "signup"])] = _random_value(rng)
    return context


def _random_clause(
    rng: random.Random, segment_keys: list[str], *, allow_segments: bool
) -> dict[str, Any]:
    choices = [
        "in",
        "in",
        "starts_with",
        "ends_with",
        "contains",
        "matches",
        "lt",
        "lte",
        "gt",
        "gte",
        "semver_eq",
        "semver_lt",
        "semver_gt",
        "before",
        "after",
    ]
    if allow_segments:
        choices += ["in_segment"] * 2
    op = rng.choice(choices)
    clause: dict[str, Any] = {"op": op, "negate": rng.random() < 0.25}
    if op == "in_segment":
        clause["attribute"] = ""
        clause["values"] = rng.sample([*segment_keys, "missing-segment"], rng.randrange(1, 3))
        return clause
    pool: list[Any]
    if op == "in":
        in_pools: list[tuple[str, list[Any]]] = [
            ("country", [*COUNTRIES, 7, True]),
            ("groups", ["beta", "ops"]),
            ("kind", ["user", "device"]),
            ("age", [18, 30.0, "30"]),
            ("key", ["u1", "u2", "u3"]),
        ]
        attribute, pool = rng.choice(in_pools)
    elif op in ("starts_with", "ends_with", "contains"):
        attribute, pool = rng.choice(
            [
                ("email", ["u1", "u2", *DOMAINS, "corp"]),
                ("country", ["U", "S", "D"]),
                ("key", ["u", "k1"]),
            ]
        )
    elif op == "matches":
        attribute, pool = rng.choice(["email", "key", "country"]), PATTERNS
    elif op in ("lt", "lte", "gt", "gte"):
        attribute, pool = "age", [0, 18, 21.5, 65, 90]
    elif op.startswith("semver_"):
        attribute, pool = "version", [v for v in VERSIONS if v != "bad"]
    else:
        attribute, pool = (
            "signup",
            [d for d in DATES if d not in ("2026-06-15", "2026-06-15T12:30:00")],
        )
    if rng.random() < 0.1:
        attribute = rng.choice(["missing", "email", "age"])  # often the wrong type
    clause["attribute"] = attribute
    clause["values"] = rng.sample(pool, rng.randrange(1, min(3, len(pool)) + 1))
    return clause


def _random_serve(rng: random.Random, variation_ids: list[str]) -> dict[str, Any]:
    if rng.random() < 0.5:
        return {"variation": rng.choice(variation_ids)}
    cuts = sorted(rng.randrange(0, 100_001) for _ in range(len(variation_ids) - 1))
    weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100_000], strict=True)]
    rollout: dict[str, Any] = {
        "variations": [
            {"variation": v, "weight": w} for v, w in zip(variation_ids, weights, strict=True)
        ]
    }
    if rng.random() < 0.3:
        rollout["bucket_by"] = "org"
    return {"rollout": rollout}


def _random_snapshot(rng: random.Random) -> dict[str, Any]:
    segment_keys = ["beta", "staff"]
    segments = {
        key: {
            "key": key,
            "version": 1,
            "included": [f"u{rng.randrange(60)}" for _ in range(rng.randrange(4))],
            "excluded": [f"u{rng.randrange(60)}" for _ in range(rng.randrange(4))],
            "rules": [
                {
                    "id": f"{key}-{n}",
                    "negate": rng.random() < 0.1,
                    "clauses": [
                        _random_clause(rng, [], allow_segments=False)
                        for _ in range(rng.randrange(1, 3))
                    ],
                }
                for n in range(rng.randrange(3))
            ],
        }
        for key in segment_keys
    }
    flag_keys = [f"flag-{n}" for n in range(6)]
    flags = {}
    for position, key in enumerate(flag_keys):
        ids = ["a", "b", "c"][: rng.randrange(2, 4)]
        flag: dict[str, Any] = {
            "key": key,
            "version": 1,
            "type": "string",
            "variations": [{"id": i, "value": f"value-{i}"} for i in ids],
            "on": rng.random() < 0.85,
            "experiment": rng.random() < 0.3,
            "off_variation": rng.choice([*ids, None]),
            "prerequisites": [],
            "targets": [],
            "rules": [],
            "fallthrough": _random_serve(rng, ids),
        }
        if rng.random() < 0.3:
            flag["salt"] = rng.choice(["shared", key + "-salt"])
        if rng.random() < 0.4:
            # Mostly on earlier flags; sometimes a later one, which may close a cycle.
            others = flag_keys[:position] if position and rng.random() < 0.8 else flag_keys
            other = rng.choice([k for k in others if k != key] or ["flag-missing"])
            flag["prerequisites"].append({"key": other, "variation": rng.choice(["a", "b"])})
        for _ in range(rng.randrange(3)):
            flag["targets"].append(
                {
                    "variation": rng.choice(ids),
                    "values": [f"u{rng.randrange(60)}" for _ in range(3)],
                }
            )
        for n in range(rng.randrange(4)):
            flag["rules"].append(
                {
                    "id": f"r{n}",
                    "negate": rng.random() < 0.1,
                    "clauses": [
                        _random_clause(rng, segment_keys, allow_segments=True)
                        for _ in range(rng.randrange(1, 4))
                    ],
                    "serve": _random_serve(rng, ids),
                }
            )
        if rng.random() < 0.3:
            flag["schedule"] = [
                {
                    "at": (BASE + timedelta(days=d)).isoformat(),
                    "fallthrough": _random_serve(rng, ids),
                }
                for d in rng.sample(range(-3, 4), rng.randrange(1, 4))
            ]
        flags[key] = flag
    return {"environment": "test", "version": 1, "flags": flags, "segments": segments}


def test_random_snapshots_are_valid() -> None:
    rng = random.Random(SEED)
    for _ in range(20):
        snapshot = _random_snapshot(rng)
        for flag in snapshot["flags"].values():
            assert validate_flag(flag) == []
        for segment in snapshot["segments"].values():
            assert validate_segment(segment) == []


def test_the_engine_agrees_with_the_reference() -> None:
    rng = random.Random(SEED)
    compared = 0
    kinds: set[str] = set()
    for _ in range(40):
        snapshot = _random_snapshot(rng)
        store = FlagStore(snapshot)
        assert store.problems() == {}
        for index in range(60):
            context = _random_context(rng, index)
            now = BASE + timedelta(days=rng.uniform(-4, 4))
            for key in [*snapshot["flags"], "no-such-flag"]:
                detail = store.evaluate(key, context, "default", now=now)
                expected = reference_evaluate(snapshot, key, context, "default", now)
                actual = (detail.value, detail.variation, detail.reason.to_dict())
                assert actual == expected, (key, context, snapshot["flags"].get(key))
                kinds.add(str(expected[2]["kind"]) + str(expected[2].get("error_kind", "")))
                compared += 1
    assert compared == 40 * 60 * 7
    # The random flags reach every path, so the agreement means something.
    assert kinds == {
        "OFF",
        "PREREQUISITE_FAILED",
        "TARGET_MATCH",
        "RULE_MATCH",
        "FALLTHROUGH",
        "ERRORFLAG_NOT_FOUND",
        "ERRORMALFORMED_FLAG",
    }
