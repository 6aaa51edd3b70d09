"""One module per resource kind of a manifest; each has ``async plan(target) -> [Change]``."""

from __future__ import annotations

from keel.manifest.kinds import (
    audit,
    auth,
    config,
    flags,
    gateway,
    notify,
    queues,
    schedules,
    storage,
)
from keel.manifest.plan import Change, Target


async def plan_changes(target: Target) -> list[Change]:
    """Every change the manifest asks for, in the order they are to be applied; problems
    found on the way are in ``target.problems``."""
    changes: list[Change] = []
    for kind in (auth, config, flags, queues, schedules, gateway, storage, notify, audit):
        changes.extend(await kind.plan(target))
    return changes
