"""The tenant's audit actions: an action missing from the catalogue is registered, one whose
entry (description, category, sensitivity, sensitive fields) differs is changed, as
``PUT /audit/v1/actions/{name}`` does; an action the manifest does not name stays."""

from __future__ import annotations

from keel.audit.schemas import ActionIn
from keel.audit.service.catalogue import register_action, tenant_actions
from keel.core.audit import ActionSpec
from keel.manifest.plan import Change, Target, shown

#: An entry's fields, as the audit API takes them.
FIELDS = ("description", "category", "sensitivity", "sensitive_fields")


def _entry(spec: ActionSpec) -> dict[str, object]:
    return {
        "description": spec.description,
        "category": spec.category,
        "sensitivity": str(spec.sensitivity),
        "sensitive_fields": sorted(spec.sensitive_fields),
    }


async def plan(target: Target) -> list[Change]:
    if not target.loaded.audit_actions:
        return []
    session, tenant_id, actor = target.session, target.tenant_id, target.actor
    registered = {spec.name: spec for spec in await tenant_actions(session, tenant_id)}
    changes: list[Change] = []
    for name, wanted in target.loaded.audit_actions.items():
        assert isinstance(wanted, ActionIn)
        spec = ActionSpec(
            name,
            wanted.description,
            wanted.category,
            wanted.sensitivity,
            frozenset(wanted.sensitive_fields),
        )
        new = _entry(spec)
        current = registered.get(name)
        if current is None:
            details = [f"{spec.category}, {spec.sensitivity}"]
        else:
            old = _entry(current)
            differing = [field for field in FIELDS if old[field] != new[field]]
            if not differing:
                continue
            details = [f"{field} {shown(old[field])} -> {shown(new[field])}" for field in differing]

        async def register(spec: ActionSpec = spec) -> None:
            await register_action(session, tenant_id, spec, actor=actor)

        symbol = "+" if current is None else "~"
        changes.append(Change(symbol, "audit-action", name, register, details))
    return changes
