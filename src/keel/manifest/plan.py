"""The diff of a manifest against Keel, and applying it.

Each resource kind (:mod:`keel.manifest.kinds`) reads what Keel holds and returns a
:class:`Change` per resource that differs, each holding the write that makes it match. Every
kind is planned before anything is written; a problem only the database shows (a role that
does not exist, a flag whose type changed) is reported like a file's, and nothing is applied.
The writes then run in order (accounts and roles, config, flags, queues, job schedules, the
gateway policy, buckets, templates, audit actions) in the caller's one unit of work: they
commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from keel.core.audit import Actor
    from keel.core.context import Resources
    from keel.manifest.loaded import LoadedManifest, Problem
    from keel.settings import Settings


@dataclass
class Change:
    """One resource that changes: ``+`` created, ``~`` changed (with the fields that do)."""

    symbol: str
    kind: str
    name: str
    write: Callable[[], Awaitable[Any]]
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = f"{self.symbol} {self.kind} {self.name}"
        return f"{text}: {', '.join(self.details)}" if self.details else text


@dataclass
class Target:
    """Where the manifest is applied: one unit of work in one tenant, as the operator."""

    session: AsyncSession
    tenant_id: str
    actor: Actor
    settings: Settings
    resources: Resources
    loaded: LoadedManifest
    problems: list[Problem] = field(default_factory=list)

    def refuse(self, path: tuple[str | int, ...], message: str) -> None:
        self.problems.append(self.loaded.problem(path, message))


async def apply_changes(changes: list[Change]) -> None:
    """Run the changes' writes, in order."""
    for change in changes:
        await change.write()


def summary(changes: list[Change]) -> str:
    """The diff's last line."""
    if not changes:
        return "no changes"
    created = sum(1 for change in changes if change.symbol == "+")
    changed = len(changes) - created
    return f"{created} to create, {changed} to change"


def shown(value: Any) -> str:
    """A value in a ``~`` line: short, as JSON would write it."""
    import json

    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
