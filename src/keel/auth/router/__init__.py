"""HTTP routes of the auth service, one module per audience:

=============  ==========================================================================
``sessions``   logging in and out, refreshing, the caller's own sessions
``admin``      users, service accounts, application clients, API keys, roles, signing keys
``oauth``      the OAuth 2.0 token, introspection, revocation and userinfo endpoints, and
               the ``/.well-known`` OpenID Connect documents
``account``    a user's own second factor, password reset and e-mail verification
``authorize``  the browser side of the authorization code flow and its login page
=============  ==========================================================================

Each module declares its ``router`` and handlers at module level; ``keel.auth.spec`` names
the builders below, which the app calls when it first needs the routes.
"""

from __future__ import annotations

from fastapi import APIRouter

from keel.auth.router import account, admin, authorize, oauth, sessions
from keel.core.http import ServiceRouter

__all__ = ["build_router", "build_well_known_router"]


def build_router() -> ServiceRouter:
    """``/v1/...``: OAuth, sessions, administration, the account-security routes and the
    OAuth authorization endpoint (with its login page).

    OAuth comes first, and the token endpoint first in it: machine-to-machine traffic's
    hottest endpoint is matched before any other route is tried.
    """
    router = ServiceRouter(prefix="/v1")
    for part in (oauth.router, sessions.router, admin.router, account.router, authorize.router):
        router.include_router(part)
    return router


def build_well_known_router() -> APIRouter:
    """The OpenID Connect discovery document and the JWKS, at the root of the server."""
    return oauth.well_known_router
