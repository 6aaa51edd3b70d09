"""Secret references in values (``{"$secret": "apps/billing/db#password"}``), resolved for
a reader through the secrets service (:class:`keel.secrets.service.SecretReader`): each
reference the caller may read becomes the secret's field, the others stay references."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keel.config.service.validation import (
    SecretReference,
    replace_secret_references,
    secret_references,
)
from keel.secrets.service import SecretReader


@dataclass(frozen=True)
class ResolvedReference:
    """What became of one secret reference of a read."""

    path: str
    reference: str
    resolved: bool
    #: Why it was left as a reference: ``denied``, ``not-found`` or ``unreadable``.
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "path": self.path,
            "reference": self.reference,
            "resolved": self.resolved,
        }
        if self.reason:
            document["reason"] = self.reason
        return document


async def resolve_secret_references(
    reader: SecretReader, values: Mapping[str, Any]
) -> tuple[dict[str, Any], list[ResolvedReference]]:
    """``values`` with each secret reference the reader's caller may read replaced by the
    secret's field; the others stay references. Each secret read (or refused) is audited
    as a secrets read would be, before the answer: the caller may read
    ``{mount}/data/{path}`` when it holds ``secrets:root`` or a secrets policy granting
    ``read`` there, exactly as on the secrets API."""
    found = secret_references(values)
    if not found:
        return dict(values), []
    resolved: dict[SecretReference, Any] = {}
    reasons: dict[SecretReference, str] = {}
    for reference in dict.fromkeys(reference for _, reference in found):
        read = await reader.read_field(reference.mount, reference.path, reference.field)
        if read.refusal is None:
            resolved[reference] = read.value
        else:
            reasons[reference] = read.refusal
    report = [
        ResolvedReference(path, str(reference), reference in resolved, reasons.get(reference))
        for path, reference in found
    ]
    return replace_secret_references(dict(values), resolved), report
