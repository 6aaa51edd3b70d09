"""The auth service's pure rules: valid names, who may grant what, a token's scope and audience.

No I/O here: the concepts of :mod:`keel.auth.service` call these, and tests call them directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from keel.core.errors import Forbidden, ValidationFailed
from keel_client.auth import Principal, is_valid_permission, narrow_permissions

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{1,149}$")
#: Names of roles and service accounts.
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


def is_self(principal: Principal, principal_type: str, principal_id: str) -> bool:
    """Whether ``principal`` is the principal ``principal_type``/``principal_id``."""
    return principal.principal_type == principal_type and principal.subject == principal_id


def ensure_may_grant(grantor: Principal | None, permissions: Iterable[str]) -> None:
    """Refuse to let ``grantor`` hand out a permission it does not hold itself.

    Without this, ``auth:role:assign`` or ``auth:api_key:create`` alone would reach every
    permission of the tenant (assign yourself ``admin``, mint a key for an administrator).
    ``None`` is the platform itself (CLI, bootstrap), which may grant anything.
    """
    if grantor is None:
        return
    missing = [p for p in permissions if not grantor.has_permission(p)]
    if missing:
        raise Forbidden(f"Granting {missing[0]!r} needs holding it.")


def validated_permissions(permissions: Iterable[str]) -> list[str]:
    """``permissions`` sorted and without duplicates; 422 on one that is not well formed."""
    values = sorted(set(permissions))
    invalid = [p for p in values if not is_valid_permission(p)]
    if invalid:
        raise ValidationFailed(
            f"Permission {invalid[0]!r} is not service:resource:action (with * wildcards)."
        )
    return values


def granted_scope(permissions: Sequence[str], requested: str) -> str | None:
    """The scope granted for ``requested`` (RFC 6749 section 3.3): each requested permission
    that ``permissions`` cover at least in part, and every other scope (``openid``, ...) as
    asked; None when permissions were asked for and not one of them is held."""
    scopes = requested.split()
    granted = [s for s in scopes if ":" not in s or narrow_permissions(permissions, [s])]
    if any(":" in s for s in scopes) and not any(":" in s for s in granted):
        return None
    return " ".join(granted)


def audience_claim(requested: str | None, default: str) -> str | list[str]:
    """``aud`` of a new token: the requested audiences (space-separated, as ``scope`` is; one
    may be Keel's own, for a token meant for a service and for Keel), or Keel's own."""
    audiences = list(dict.fromkeys((requested or "").split())) or [default]
    return audiences[0] if len(audiences) == 1 else audiences


def names_audience(claim: object, audience: str) -> bool:
    """Whether an ``aud`` claim (a string or a list of them, RFC 7519) includes ``audience``."""
    if isinstance(claim, str):
        return claim == audience
    return isinstance(claim, list) and audience in claim
