"""Promotion: copy one environment's values (all, or some keys) to another, previewed
first, then applied as a new revision of the target."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from keel.config.models import ConfigRevision
from keel.config.service.state import EnvironmentState, current_state
from keel.config.service.validation import Diff, check_key, diff_values
from keel.config.service.writes import write_revision
from keel.core.audit import Actor
from keel.core.errors import PreconditionFailed, PreconditionRequired, ValidationFailed
from keel.core.http import etag_for


@dataclass(frozen=True)
class Promotion:
    """A promotion's preview, or its result when ``applied``."""

    source: str
    source_revision: int
    target: str
    target_revision: int
    diff: Diff
    applied: bool
    #: The target's new revision when applied (None for a preview or an empty diff).
    revision: ConfigRevision | None = None


async def promote(
    session: AsyncSession,
    tenant_id: str,
    application: str,
    source: str,
    target: str,
    *,
    keys: Sequence[str] | None = None,
    confirm: bool = False,
    if_match: str | None = None,
    source_revision: int | None = None,
    message: str = "",
    actor: Actor,
) -> Promotion:
    """Copy ``source``'s values (all, or only ``keys``) to ``target``.

    Without ``confirm``: the preview, the diff the target would see. With it: applied as a
    new revision of the target, which needs ``if_match`` (the target's ETag the preview
    showed) and, when given, ``source_revision`` still current: what is applied is what was
    previewed.
    """
    if source == target:
        raise ValidationFailed("A promotion copies from one environment to another.")
    if keys is not None:
        if not keys:
            raise ValidationFailed("keys, when given, names at least one key.")
        for key in keys:
            check_key(key)
    origin = await current_state(session, tenant_id, application, source)
    destination = await current_state(session, tenant_id, application, target)
    if keys is not None:
        unknown = sorted(set(keys) - origin.values.keys() - destination.values.keys())
        if unknown:
            raise ValidationFailed(f"Keys in neither environment: {', '.join(unknown)}.")

    def build(state: EnvironmentState) -> dict[str, Any]:
        return _promoted(origin.values, state.values, keys)

    preview = diff_values(destination.values, build(destination))
    if not confirm:
        return Promotion(
            source, origin.revision, target, destination.revision, preview, applied=False
        )
    if if_match is None:
        raise PreconditionRequired(
            "Applying a promotion needs If-Match with the target's ETag from the preview."
        )
    if source_revision is not None and source_revision != origin.revision:
        raise PreconditionFailed(
            f"{source!r} changed since the preview (now revision {origin.revision}).",
            current_etag=etag_for(origin.revision),
        )
    outcome = await write_revision(
        session,
        tenant_id,
        application,
        target,
        build,
        operation="promote",
        source=f"{source}@{origin.revision}",
        message=message or f"promoted from {source} revision {origin.revision}",
        if_match=if_match,
        actor=actor,
        action="config.env.promote",
        extra_audit={"from": source, "from_revision": origin.revision},
    )
    return Promotion(
        source,
        origin.revision,
        target,
        outcome.revision.number,
        preview,
        applied=True,
        revision=outcome.revision if outcome.created else None,
    )


def _promoted(
    source: Mapping[str, Any], target: Mapping[str, Any], keys: Sequence[str] | None
) -> dict[str, Any]:
    if keys is None:
        return dict(sorted(source.items()))
    values = dict(target)
    for key in keys:
        if key in source:
            values[key] = source[key]
        else:
            values.pop(key, None)
    return dict(sorted(values.items()))
