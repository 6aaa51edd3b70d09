"""Builders of flags, segments and stores for the engine's tests (plain JSON, as served)."""

from __future__ import annotations

from typing import Any

from keel_client.flags import FlagStore

ON_OFF = [{"id": "on", "value": True}, {"id": "off", "value": False}]


def clause(attribute: str, op: str, values: list[Any], *, negate: Any = False) -> dict[str, Any]:
    return {"attribute": attribute, "op": op, "values": values, "negate": negate}


def rule(
    rule_id: str, *clauses: dict[str, Any], serve: str = "on", negate: bool = False
) -> dict[str, Any]:
    return {
        "id": rule_id,
        "negate": negate,
        "clauses": list(clauses),
        "serve": {"variation": serve},
    }


def rollout(*weights: tuple[str, Any], bucket_by: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "variations": [{"variation": variation, "weight": weight} for variation, weight in weights]
    }
    if bucket_by is not None:
        spec["bucket_by"] = bucket_by
    return {"rollout": spec}


def percent_on(percent: float, bucket_by: str | None = None) -> dict[str, Any]:
    """A boolean rollout serving ``on`` to ``percent`` % of contexts."""
    weight = round(percent * 1000)
    return rollout(("on", weight), ("off", 100_000 - weight), bucket_by=bucket_by)


def flag(key: str = "f", **fields: Any) -> dict[str, Any]:
    """A valid boolean flag, on, serving ``off`` by default; ``fields`` override."""
    base: dict[str, Any] = {
        "key": key,
        "version": 1,
        "type": "boolean",
        "variations": ON_OFF,
        "on": True,
        "off_variation": "off",
        "prerequisites": [],
        "targets": [],
        "rules": [],
        "fallthrough": {"variation": "off"},
    }
    base.update(fields)
    return base


def segment(key: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"key": key, "version": 1, "included": [], "excluded": [], "rules": []}
    base.update(fields)
    return base


def store(*flags: dict[str, Any], segments: list[dict[str, Any]] | None = None) -> FlagStore:
    return FlagStore(
        {
            "environment": "test",
            "version": 1,
            "flags": {item["key"]: item for item in flags},
            "segments": {item["key"]: item for item in segments or []},
        }
    )
