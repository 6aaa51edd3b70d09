"""Who is calling: the identity a verified token or API key stands for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keel_client.auth._permissions import has_permission


@dataclass(frozen=True)
class Principal:
    """A verified caller: a user, a service account, or either acting through an API key.

    Example::

        principal = await verifier.verify(token)
        if principal.has_permission("billing:invoice:read"):
            ...
    """

    subject: str
    tenant_id: str
    principal_type: str
    roles: frozenset[str] = frozenset()
    permissions: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    #: How the caller authenticated: ``"jwt"`` or ``"api_key"``.
    credential: str = "jwt"
    claims: Mapping[str, Any] = field(default_factory=dict)

    def has_permission(self, permission: str) -> bool:
        return has_permission(self.permissions, permission)

    def has_role(self, role: str) -> bool:
        return role in self.roles

    @property
    def expires_at(self) -> int | None:
        exp = self.claims.get("exp")
        return int(exp) if isinstance(exp, int | float) else None

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], credential: str = "jwt") -> Principal:
        scope = claims.get("scope", "")
        return cls(
            subject=str(claims["sub"]),
            tenant_id=str(claims.get("tid", "")),
            principal_type=str(claims.get("typ", "user")),
            roles=frozenset(_strings(claims.get("roles"))),
            permissions=frozenset(_strings(claims.get("permissions"))),
            scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
            credential=credential,
            claims=dict(claims),
        )


def _strings(value: Any) -> list[str]:
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []
