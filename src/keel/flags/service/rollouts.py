"""What a flag's state serves over time, read from its document: the fallthrough in force
after the schedule's steps, a rollout's weights per variation, and whether one variation
goes to everybody. Pure: experiment results and the stale listing build on them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from keel.core.db import utcnow


def effective_fallthrough(state: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The fallthrough in force at ``now``: the latest schedule step whose time has passed,
    else the state's own."""
    chosen: tuple[datetime, dict[str, Any]] | None = None
    for step in state.get("schedule") or ():
        at = _parse_time(step.get("at")) if isinstance(step, Mapping) else None
        if at is not None and at <= now and (chosen is None or at >= chosen[0]):
            chosen = (at, dict(step.get("fallthrough") or {}))
    return chosen[1] if chosen else dict(state.get("fallthrough") or {})


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value / 1000, tz=utcnow().tzinfo)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else None
    return None


def rollout_weights(fallthrough: Mapping[str, Any]) -> dict[str, int] | None:
    rollout = fallthrough.get("rollout")
    if not isinstance(rollout, Mapping):
        return None
    weights: dict[str, int] = {}
    for entry in rollout.get("variations") or ():
        if isinstance(entry, Mapping):
            variation = str(entry.get("variation"))
            weights[variation] = weights.get(variation, 0) + int(entry.get("weight") or 0)
    return weights


def fully_rolled_out(state: Mapping[str, Any], now: datetime) -> str | None:
    """The one variation everybody gets when the flag is on with no targets, rules or
    prerequisites, no schedule step still to come, and a fallthrough serving one variation
    (or a rollout giving one variation 100 %); else ``None``."""
    if not state.get("on") or state.get("targets") or state.get("rules"):
        return None
    if state.get("prerequisites"):
        return None
    for step in state.get("schedule") or ():
        at = _parse_time(step.get("at")) if isinstance(step, Mapping) else None
        if at is None or at > now:
            return None
    fallthrough = effective_fallthrough(state, now)
    if isinstance(fallthrough.get("variation"), str):
        return str(fallthrough["variation"])
    weights = rollout_weights(fallthrough)
    if weights:
        full = [variation for variation, weight in weights.items() if weight >= 100_000]
        if len(full) == 1 and all(w == 0 for v, w in weights.items() if v != full[0]):
            return full[0]
    return None
