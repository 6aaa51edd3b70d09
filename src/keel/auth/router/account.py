"""A user's own account security: ``/auth/v1/mfa/...`` (TOTP and recovery codes),
``/password-reset...`` and ``/.../verify-email...``."""

from __future__ import annotations

from fastapi import APIRouter, BackgroundTasks, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth import schemas
from keel.auth.dependencies import (
    AnonymousActor,
    Auth,
    CallerActor,
    CurrentPrincipal,
    limit_by_address,
    no_store,
)
from keel.auth.models import PrincipalType, User
from keel.auth.service import AuthService
from keel.auth.service.one_time_tokens import AccountTokenMessage, deliver
from keel.core.deps import DbSession
from keel.core.errors import Forbidden, Unauthorized
from keel_client.auth import Principal

router = APIRouter(tags=["auth"])


async def _current_user(principal: Principal, session: AsyncSession, auth: AuthService) -> User:
    if principal.principal_type != PrincipalType.user:
        raise Forbidden("Only users have a second factor.")
    return await auth.get_user(session, principal.tenant_id, principal.subject)


def _send_after_response(
    background: BackgroundTasks, auth: AuthService, message: AccountTokenMessage | None
) -> None:
    # After the response (and so after the commit): the token exists when it arrives, and
    # the time a delivery takes does not tell whether an account exists.
    if message is not None:
        background.add_task(deliver, auth.deliver_account_token, message)


# -- TOTP -------------------------------------------------------------------------------------


@router.get("/mfa", response_model=schemas.MfaStatus)
async def mfa_status(
    principal: CurrentPrincipal, session: DbSession, auth: Auth
) -> schemas.MfaStatus:
    """Whether the caller's second factor is on, and how many recovery codes are left."""
    user = await _current_user(principal, session, auth)
    return schemas.MfaStatus(
        totp_enabled=await auth.mfa.is_enabled(session, user.id),
        recovery_codes_left=await auth.mfa.recovery_codes_left(session, user.id),
    )


@router.post("/mfa/totp", status_code=201, response_model=schemas.TotpEnrolment)
async def enrol_totp(
    response: Response,
    principal: CurrentPrincipal,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> schemas.TotpEnrolment:
    """Start TOTP enrolment: a new secret, on only once confirmed with a first code."""
    user = await _current_user(principal, session, auth)
    enrolment = await auth.mfa.enrol(session, user, actor)
    no_store(response)
    return schemas.TotpEnrolment(secret=enrolment.secret, otpauth_uri=enrolment.provisioning_uri)


@router.post("/mfa/totp/confirm", response_model=schemas.RecoveryCodes)
async def confirm_totp(
    body: schemas.TotpConfirm,
    request: Request,
    response: Response,
    principal: CurrentPrincipal,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> schemas.RecoveryCodes:
    """Turn TOTP on with a first code; answers the ten recovery codes, shown only now."""
    await limit_by_address(request, "mfa")
    user = await _current_user(principal, session, auth)
    codes = await auth.mfa.confirm(session, user, body.code.get_secret_value(), actor)
    no_store(response)
    return schemas.RecoveryCodes(recovery_codes=codes)


@router.delete("/mfa/totp", status_code=204)
async def disable_totp(
    body: schemas.TotpDisable,
    request: Request,
    principal: CurrentPrincipal,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> None:
    """Turn TOTP off, proven with the password or a current (or recovery) code."""
    await limit_by_address(request, "mfa")
    user = await _current_user(principal, session, auth)
    removed = await auth.mfa.disable(
        session,
        user,
        password=body.password.get_secret_value() if body.password else None,
        code=body.code.get_secret_value() if body.code else None,
        actor=actor,
    )
    if not removed:
        await session.commit()  # the refusal stays on the record
        raise Unauthorized("Give your password or a current code to turn this off.")


# -- password reset and e-mail verification ---------------------------------------------------


@router.post("/password-reset", status_code=202)
async def request_password_reset(
    body: schemas.PasswordResetRequest,
    request: Request,
    background: BackgroundTasks,
    session: DbSession,
    auth: Auth,
    actor: AnonymousActor,
) -> dict[str, str]:
    """Send a password reset token to the address, if it belongs to an active user.

    The answer is the same 202 whether or not it does.
    """
    await limit_by_address(request, "password-reset")
    message = await auth.request_password_reset(
        session, tenant_slug=body.tenant, email=body.email, actor=actor
    )
    _send_after_response(background, auth, message)
    return {"status": "If the address belongs to an account, a reset link is on its way."}


@router.post("/password-reset/confirm", status_code=204)
async def confirm_password_reset(
    body: schemas.PasswordResetConfirm,
    request: Request,
    session: DbSession,
    auth: Auth,
    actor: AnonymousActor,
) -> None:
    """Set a new password with a reset token; every session of the user ends."""
    await limit_by_address(request, "password-reset")
    await auth.reset_password(
        session,
        token=body.token.get_secret_value(),
        new_password=body.new_password.get_secret_value(),
        actor=actor,
    )


@router.post("/users/{user_id}/verify-email", status_code=202)
async def request_email_verification(
    user_id: str,
    background: BackgroundTasks,
    principal: CurrentPrincipal,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> dict[str, str]:
    """Send a verification token to the user's address (the user, or an admin)."""
    is_self = principal.principal_type == PrincipalType.user and principal.subject == user_id
    if not is_self and not principal.has_permission("auth:user:update"):
        raise Forbidden("This needs the permission 'auth:user:update'.")
    message = await auth.request_email_verification(session, principal.tenant_id, user_id, actor)
    _send_after_response(background, auth, message)
    return {"status": "A verification link is on its way."}


@router.post("/verify-email/confirm", status_code=204)
async def confirm_email_verification(
    body: schemas.EmailVerificationConfirm,
    session: DbSession,
    auth: Auth,
    actor: AnonymousActor,
) -> None:
    """Mark the address the token was sent to as verified."""
    await auth.verify_email(session, token=body.token.get_secret_value(), actor=actor)
