"""What the auth service's operations answer, shared by its concepts and its callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.auth.service.account_notices import AccountNotice


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str | None
    scope: str
    session_id: str | None = None
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    #: The access token's ``permissions`` claim, where the grant knows it (client
    #: credentials): a caller answering with them needs no second look at the token.
    permissions: tuple[str, ...] = field(default=(), repr=False, compare=False)
    #: For the user, to deliver after the commit (a login from a new device).
    notice: AccountNotice | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class AuthFailure:
    """A refused authentication; ``reason`` is for the audit trail, never for the caller.

    Returned rather than raised, so the unit of work that records it (a wrong password counts
    towards a lockout, a reused refresh token revokes its family) still commits.
    ``notice`` is for the user, to deliver after that commit (this failure locked their
    account): :func:`keel.auth.service.account_notices.deliver_later`.
    """

    reason: str
    notice: AccountNotice | None = None


@dataclass(frozen=True)
class IssuedSecret:
    """A credential shown once at creation."""

    id: str
    secret: str
    extra: dict[str, Any]
