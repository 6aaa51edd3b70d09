"""Flag evaluation figures (issue #8): local evaluations per second.

- ``flags.eval_boolean_per_s``: a boolean flag that is simply on.
- ``flags.eval_rules_rollout_per_s``: a flag with one rule of three clauses (``in``,
  ``ends_with``, ``gte``) serving a 50/50 rollout; half the contexts satisfy the clauses.

Peers, in the same process and run: UnleashClient's ``is_enabled`` (its Rust engine,
Yggdrasil, fed the equivalent features JSON offline through a bootstrapped cache: no
registration, no metrics, no network) and GrowthBook's ``is_on`` on one instance given each
context's attributes by ``set_attributes`` (the equivalent features: a force rule with
``coverage: 0.5`` under a condition of ``$in``, ``$regex`` and ``$gte`` — GrowthBook has
no ends-with operator). The target is a ratio of at least 2 against the faster peer.

Every implementation evaluates the same contexts in slices; the slices rotate the order of
the implementations and are timed in process CPU time, and each figure is the median over
slices, so bursts of other load on the shared machine hit every implementation alike.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks._figures import Figure, emit, machine
from keel_client.flags import FlagStore

TARGET_RATIO = 2.0
CONTEXTS = 2_000
SLICES = 15
COUNTRIES = ["US", "CA", "GB", "FR", "DE", "JP"]

KEEL_SNAPSHOT: dict[str, Any] = {
    "environment": "production",
    "version": 1,
    "segments": {},
    "flags": {
        "simple-on": {
            "key": "simple-on", "version": 1, "type": "boolean", "on": True,
            "variations": [{"id": "on", "value": True}, {"id": "off", "value": False}],
            "off_variation": "off", "fallthrough": {"variation": "on"},
        },
        "checkout": {
            "key": "checkout", "version": 1, "type": "boolean", "on": True,
            "variations": [{"id": "on", "value": True}, {"id": "off", "value": False}],
            "off_variation": "off",
            "rules": [{
                "id": "corp-adults",
                "clauses": [
                    {"attribute": "country", "op": "in", "values": ["US", "CA", "GB"]},
                    {"attribute": "email", "op": "ends_with", "values": ["@corp.com"]},
                    {"attribute": "age", "op": "gte", "values": [18]},
                ],
                "serve": {"rollout": {"bucket_by": "key", "variations": [
                    {"variation": "on", "weight": 50_000}, {"variation": "off", "weight": 50_000},
                ]}},
            }],
            "fallthrough": {"variation": "off"},
        },
    },
}  # fmt: skip

UNLEASH_FEATURES: dict[str, Any] = {
    "version": 1,
    "features": [
        {"name": "simple-on", "enabled": True,
         "strategies": [{"name": "default", "parameters": {}}]},
        {
            "name": "checkout", "enabled": True,
            "strategies": [{
                "name": "flexibleRollout",
                "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "checkout"},
                "constraints": [
                    {"contextName": "country", "operator": "IN", "values": ["US", "CA", "GB"]},
                    {"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@corp.com"]},
                    {"contextName": "age", "operator": "NUM_GTE", "value": "18"},
                ],
            }],
        },
    ],
}  # fmt: skip

GROWTHBOOK_FEATURES: dict[str, Any] = {
    "simple-on": {"defaultValue": True},
    "checkout": {
        "defaultValue": False,
        "rules": [{
            "condition": {
                "country": {"$in": ["US", "CA", "GB"]},
                "email": {"$regex": "@corp\\.com$"},
                "age": {"$gte": 18},
            },
            "force": True, "coverage": 0.5, "hashAttribute": "id",
        }],
    },
}  # fmt: skip


def _contexts(count: int) -> list[dict[str, Any]]:
    """Half satisfy the rule's three clauses; the others fail one of them."""
    rng = random.Random(8)
    contexts = []
    for index in range(count):
        matching = index % 2 == 0
        miss = rng.randrange(3)
        contexts.append(
            {
                "key": f"user-{rng.getrandbits(64):016x}",
                "country": rng.choice(COUNTRIES[:3]) if matching or miss else "FR",
                "email": f"u{index}@corp.com" if matching or miss != 1 else f"u{index}@mail.com",
                "age": rng.randrange(18, 80) if matching or miss != 2 else rng.randrange(0, 18),
            }
        )
    return contexts


Runner = Callable[[str, list[Any]], int]


def _keel() -> Runner:
    store = FlagStore(KEEL_SNAPSHOT)

    def run(flag_key: str, contexts: list[dict[str, Any]]) -> int:
        evaluate = store.evaluate
        on = 0
        for context in contexts:
            if evaluate(flag_key, context, False, value_type="boolean").value:
                on += 1
        return on

    return run


def _unleash() -> Runner:
    from UnleashClient.cache import BaseCache
    from UnleashClient.clients.unleash_client import UnleashClient

    class MemoryCache(BaseCache):
        def __init__(self) -> None:
            self._data: dict[str, Any] = {}

        def set(self, key: str, value: Any) -> None:
            self._data[key] = value

        def mset(self, data: dict[str, Any]) -> None:
            self._data.update(data)

        def get(self, key: str, default: Any = None) -> Any:
            return self._data.get(key, default)

        def exists(self, key: str) -> bool:
            return key in self._data

        def destroy(self) -> None:
            self._data.clear()

    from UnleashClient.constants import FEATURES_URL

    cache = MemoryCache()
    cache.set(FEATURES_URL, json.dumps(UNLEASH_FEATURES))
    cache.bootstrapped = True
    # Never initialised: no registration, no polling, no metrics thread, no network.
    client = UnleashClient(
        url="http://127.0.0.1:9", app_name="keel-bench", cache=cache,
        disable_metrics=True, disable_registration=True,
    )  # fmt: skip

    def run(flag_key: str, contexts: list[dict[str, Any]]) -> int:
        is_enabled = client.is_enabled
        on = 0
        for context in contexts:
            if is_enabled(flag_key, context):
                on += 1
        return on

    return run


def _growthbook() -> Runner:
    from growthbook import GrowthBook

    growthbook = GrowthBook(features=GROWTHBOOK_FEATURES)

    def run(flag_key: str, contexts: list[dict[str, Any]]) -> int:
        set_attributes, is_on = growthbook.set_attributes, growthbook.is_on
        on = 0
        for context in contexts:
            set_attributes(context)
            if is_on(flag_key):
                on += 1
        return on

    return run


def _measure(
    runners: dict[str, Runner], flag_key: str, inputs: dict[str, list[Any]]
) -> tuple[dict[str, float], dict[str, int]]:
    """Evaluations per CPU second of each runner: the median over rotating slices."""
    names = list(runners)
    rates: dict[str, list[float]] = {name: [] for name in names}
    enabled: dict[str, int] = {}
    for name in names:  # warm-up, and the answer each one gives
        enabled[name] = runners[name](flag_key, inputs[name])
    for index in range(SLICES):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            started = time.process_time()
            runners[name](flag_key, inputs[name])
            elapsed = time.process_time() - started
            rates[name].append(len(inputs[name]) / elapsed)
    return {name: statistics.median(values) for name, values in rates.items()}, enabled


def main() -> list[Figure]:
    contexts = _contexts(CONTEXTS)
    unleash_contexts = [
        {"userId": c["key"], "properties": {k: str(v) for k, v in c.items() if k != "key"}}
        for c in contexts
    ]
    growthbook_contexts = [
        {"id": c["key"], **{k: v for k, v in c.items() if k != "key"}} for c in contexts
    ]
    inputs = {"keel": contexts, "unleash": unleash_contexts, "growthbook": growthbook_contexts}
    runners = {"keel": _keel(), "unleash": _unleash(), "growthbook": _growthbook()}
    figures = []
    for figure_name, flag_key, description in (
        ("flags.eval_boolean_per_s", "simple-on", "a boolean flag that is simply on"),
        (
            "flags.eval_rules_rollout_per_s",
            "checkout",
            "three clauses (in, ends_with, gte) and a 50/50 rollout",
        ),
    ):
        rates, enabled = _measure(runners, flag_key, inputs)
        peer = max(("unleash", "growthbook"), key=lambda name: rates[name])
        ratio = rates["keel"] / rates[peer]
        figures.append(
            emit(
                Figure(
                    figure_name, round(rates["keel"]), "evaluations/s",
                    "UnleashClient" if peer == "unleash" else "GrowthBook", round(ratio, 2),
                    {
                        "flag": description,
                        "unleash_per_s": round(rates["unleash"]),
                        "growthbook_per_s": round(rates["growthbook"]),
                        "enabled_of": {**enabled, "contexts": len(contexts)},
                        "target_ratio": TARGET_RATIO,
                        "met": ratio >= TARGET_RATIO,
                        "machine": machine(),
                    },
                )
            )
        )  # fmt: skip
    return figures


if __name__ == "__main__":
    main()
