"""Logging in and out: ``/auth/v1/login``, ``/refresh``, ``/logout``, ``/me``, ``/sessions``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from keel.auth import schemas
from keel.auth.dependencies import (
    AnonymousActor,
    Auth,
    CallerActor,
    CurrentPrincipal,
    limit_by_address,
    no_store,
)
from keel.auth.models import PrincipalType
from keel.auth.service import AuthFailure, TokenPair
from keel.auth.service.account_notices import deliver_later
from keel.auth.service.mfa import MfaCheck
from keel.core.deps import DbSession
from keel.core.errors import Forbidden, Unauthorized
from keel_client.auth import Principal

router = APIRouter(tags=["auth"])


def token_response(pair: TokenPair) -> schemas.TokenResponse:
    return schemas.TokenResponse(
        access_token=pair.access_token,
        expires_in=pair.expires_in,
        refresh_token=pair.refresh_token,
        scope=pair.scope,
    )


def _require_user(principal: Principal) -> None:
    if principal.principal_type != PrincipalType.user:
        raise Forbidden("Only users have login sessions.")


@router.post("/login", response_model=schemas.TokenResponse)
async def login(
    body: schemas.LoginRequest,
    request: Request,
    response: Response,
    session: DbSession,
    auth: Auth,
    actor: AnonymousActor,
) -> schemas.TokenResponse:
    """Exchange a username (or e-mail) and password for an access and a refresh token.

    Every failure answers the same 401, whether the account exists or not.
    """
    await limit_by_address(request, "login")
    result = await auth.login(
        session,
        tenant_slug=body.tenant,
        identifier=body.username,
        password=body.password.get_secret_value(),
        actor=actor,
        totp_code=body.totp_code.get_secret_value() if body.totp_code else None,
    )
    if isinstance(result, AuthFailure):
        await session.commit()  # the failure counts towards the lockout
        deliver_later(auth.deliver_account_notice, result.notice)
        if result.reason == MfaCheck.required:
            # Only after the right password: it tells nothing about who has an account.
            raise Unauthorized("A second-factor code is required.", mfa_required=True)
        raise Unauthorized("Invalid username or password.")
    no_store(response)
    deliver_later(auth.deliver_account_notice, result.notice)
    return token_response(result)


@router.post("/refresh", response_model=schemas.TokenResponse)
async def refresh(
    body: schemas.RefreshRequest,
    response: Response,
    session: DbSession,
    auth: Auth,
    actor: AnonymousActor,
) -> schemas.TokenResponse:
    """Rotate a refresh token. Reusing a rotated token ends its whole session."""
    result = await auth.refresh(session, body.refresh_token.get_secret_value(), actor)
    if isinstance(result, AuthFailure):
        await session.commit()  # a detected reuse revokes the family
        raise Unauthorized("The refresh token is invalid, expired or revoked.")
    no_store(response)
    return token_response(result)


@router.post("/logout", status_code=204)
async def logout(
    principal: CurrentPrincipal, session: DbSession, auth: Auth, actor: CallerActor
) -> None:
    """End the session of the presented access token."""
    await auth.logout(session, principal, actor)


@router.get("/me", response_model=schemas.Me)
async def me(principal: CurrentPrincipal) -> schemas.Me:
    return schemas.Me(
        subject=principal.subject,
        tenant_id=principal.tenant_id,
        principal_type=principal.principal_type,
        roles=sorted(principal.roles),
        permissions=sorted(principal.permissions),
        credential=principal.credential,
    )


@router.get("/sessions", response_model=list[schemas.Session])
async def list_sessions(principal: CurrentPrincipal, session: DbSession, auth: Auth) -> Any:
    _require_user(principal)
    return await auth.list_sessions(session, principal.tenant_id, principal.subject)


@router.delete("/sessions/{session_id}", status_code=204)
async def revoke_session(
    session_id: str,
    principal: CurrentPrincipal,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> None:
    _require_user(principal)
    await auth.revoke_session(
        session, principal.tenant_id, principal.subject, session_id, actor=actor
    )


@router.delete("/sessions", status_code=204)
async def revoke_all_sessions(
    principal: CurrentPrincipal, session: DbSession, auth: Auth, actor: CallerActor
) -> None:
    _require_user(principal)
    await auth.revoke_all_sessions(session, principal.tenant_id, principal.subject, actor=actor)
