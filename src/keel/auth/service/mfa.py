"""TOTP second factor (RFC 6238) and its one-time recovery codes.

* Enrolment creates a secret, sealed by the master key and bound to the user
  (``auth.totp:<user id>``); it guards logins only once confirmed with a first code.
* A code is accepted for the current 30-second step or one step either side (clock drift),
  and only for a step *after* the last accepted one, so a code seen once is never accepted
  again — not even within its own step.
* Confirmation issues ten recovery codes, shown once and stored as keyed hashes; each stands
  in for a TOTP code once.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import pyotp
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import RecoveryCode, User, UserTotp
from keel.auth.service.passwords import Passwords
from keel.core.audit import Actor, Outcome, record_event
from keel.core.crypto import Keyring
from keel.core.db import utcnow
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.sealed import register_sealed_column

RECOVERY_CODE_COUNT = 10
#: Steps accepted either side of the current one (RFC 6238 §5.2 recommends at most one).
TOTP_WINDOW = 1
TOTP_DIGITS = 6
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i to misread
_RECOVERY_HALF = 5


class MfaCheck(StrEnum):
    """Why a second factor was refused; the values are audit reasons."""

    required = "mfa_required"
    invalid = "mfa_invalid"
    replayed = "mfa_replayed"


@dataclass(frozen=True)
class TotpEnrolment:
    """A pending enrolment: the secret and the ``otpauth://`` URI an authenticator app scans."""

    secret: str
    provisioning_uri: str


def _associated_data(user_id: str) -> bytes:
    return f"auth.totp:{user_id}".encode()


register_sealed_column(
    UserTotp.secret_sealed, lambda row: _associated_data(row.user_id), context=(UserTotp.user_id,)
)


def new_recovery_code() -> str:
    """``xxxxx-xxxxx`` from a 31-letter alphabet: about 50 bits, easy to type."""
    letters = [secrets.choice(_RECOVERY_ALPHABET) for _ in range(2 * _RECOVERY_HALF)]
    return "".join(letters[:_RECOVERY_HALF]) + "-" + "".join(letters[_RECOVERY_HALF:])


def normalise_code(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def matching_step(secret: str, code: str, at: datetime, window: int = TOTP_WINDOW) -> int | None:
    """The time step within ``window`` of ``at`` whose code is ``code``, else None."""
    if len(code) != TOTP_DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS)
    current = totp.timecode(at)
    found = None
    for step in range(current - window, current + window + 1):
        # Every candidate is compared, so the time taken does not say which step matched.
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


class TotpMfa:
    """Enrolment, verification and removal of a user's TOTP factor."""

    def __init__(self, keyring: Keyring, passwords: Passwords, issuer_name: str = "Keel") -> None:
        self.keyring = keyring
        self.passwords = passwords
        self.issuer_name = issuer_name

    async def _factor(self, session: AsyncSession, user_id: str) -> UserTotp | None:
        return await session.scalar(select(UserTotp).where(UserTotp.user_id == user_id))

    def _secret(self, factor: UserTotp) -> str:
        return self.keyring.open(factor.secret_sealed, _associated_data(factor.user_id)).decode()

    def _recovery_hash(self, user_id: str, code: str) -> str:
        return self.keyring.token_hash(f"auth.recovery:{user_id}:{normalise_code(code)}")

    async def is_enabled(self, session: AsyncSession, user_id: str) -> bool:
        factor = await self._factor(session, user_id)
        return factor is not None and factor.confirmed_at is not None

    async def recovery_codes_left(self, session: AsyncSession, user_id: str) -> int:
        count = await session.scalar(
            select(func.count())
            .select_from(RecoveryCode)
            .where(RecoveryCode.user_id == user_id, RecoveryCode.used_at.is_(None))
        )
        return int(count or 0)

    async def enrol(self, session: AsyncSession, user: User, actor: Actor) -> TotpEnrolment:
        """Start (or restart) enrolment; refused while a confirmed factor exists."""
        factor = await self._factor(session, user.id)
        if factor is not None and factor.confirmed_at is not None:
            raise Conflict("Two-factor authentication is on already; turn it off first.")
        if factor is not None:
            await session.delete(factor)
            await session.flush()
        secret = pyotp.random_base32()
        session.add(
            UserTotp(
                user_id=user.id,
                secret_sealed=self.keyring.seal(secret.encode(), _associated_data(user.id)),
            )
        )
        record_event(
            session,
            tenant_id=user.tenant_id,
            action="auth.mfa.enrol",
            actor=actor,
            ip_address=actor.ip_address,
            target_type="user",
            target_id=user.id,
            data={"method": "totp"},
        )
        uri = pyotp.TOTP(secret, digits=TOTP_DIGITS).provisioning_uri(
            name=user.email or user.username, issuer_name=self.issuer_name
        )
        return TotpEnrolment(secret, uri)

    async def confirm(
        self, session: AsyncSession, user: User, code: str, actor: Actor
    ) -> list[str]:
        """Turn the factor on with a first valid code; returns the recovery codes (once)."""
        factor = await self._factor(session, user.id)
        if factor is None:
            raise NotFound("No enrolment to confirm; start one with POST /auth/v1/mfa/totp.")
        if factor.confirmed_at is not None:
            raise Conflict("Two-factor authentication is on already.")
        now = utcnow()
        step = matching_step(self._secret(factor), normalise_code(code), now)
        if step is None:
            raise ValidationFailed("The code is not valid; check the device's clock.")
        factor.confirmed_at = now
        factor.last_used_step = step
        codes = await self._replace_recovery_codes(session, user.id)
        record_event(
            session,
            tenant_id=user.tenant_id,
            action="auth.mfa.confirm",
            actor=actor,
            ip_address=actor.ip_address,
            target_type="user",
            target_id=user.id,
            data={"method": "totp", "recovery_codes": len(codes)},
        )
        return codes

    async def _replace_recovery_codes(self, session: AsyncSession, user_id: str) -> list[str]:
        await session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
        codes = [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
        for code in codes:
            session.add(RecoveryCode(user_id=user_id, code_hash=self._recovery_hash(user_id, code)))
        await session.flush()
        return codes

    async def check_login_code(
        self, session: AsyncSession, user: User, code: str | None
    ) -> MfaCheck | None:
        """None when the login may go on: no confirmed factor, or a good code (now spent)."""
        factor = await self._factor(session, user.id)
        if factor is None or factor.confirmed_at is None:
            return None
        if not code or not code.strip():
            return MfaCheck.required
        return await self._spend_code(session, factor, code)

    async def _spend_code(
        self, session: AsyncSession, factor: UserTotp, code: str
    ) -> MfaCheck | None:
        normalised = normalise_code(code)
        if normalised.isdigit():
            step = matching_step(self._secret(factor), normalised, utcnow())
            if step is None:
                return MfaCheck.invalid
            if factor.last_used_step is not None and step <= factor.last_used_step:
                return MfaCheck.replayed
            # Conditional, so two concurrent logins cannot both spend the same step.
            spent = await session.execute(
                update(UserTotp)
                .where(
                    UserTotp.id == factor.id,
                    (UserTotp.last_used_step.is_(None)) | (UserTotp.last_used_step < step),
                )
                .values(last_used_step=step)
                .execution_options(synchronize_session="fetch")
            )
            return None if _rowcount(spent) == 1 else MfaCheck.replayed
        spent = await session.execute(
            update(RecoveryCode)
            .where(
                RecoveryCode.user_id == factor.user_id,
                RecoveryCode.code_hash == self._recovery_hash(factor.user_id, normalised),
                RecoveryCode.used_at.is_(None),
            )
            .values(used_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if _rowcount(spent) != 1:
            return MfaCheck.invalid
        record_event(
            session,
            tenant_id=factor.tenant_id,
            action="auth.mfa.recovery_code_use",
            actor_type="user",
            actor_id=factor.user_id,
            target_type="user",
            target_id=factor.user_id,
        )
        return None

    async def disable(
        self,
        session: AsyncSession,
        user: User,
        *,
        password: str | None,
        code: str | None,
        actor: Actor,
    ) -> bool:
        """Turn the factor off once the user proves it with the password or a current code.

        Returns False (after recording the refusal) when neither proves it, so the caller
        can commit the record before answering: a failed proof must leave a trace.
        """
        factor = await self._factor(session, user.id)
        if factor is None:
            raise NotFound("Two-factor authentication is not on.")
        # A pending enrolment guards nothing yet: it can go without proof.
        proven = factor.confirmed_at is None
        if not proven and password:
            proven = await self.passwords.verify_off_loop(user.password_hash, password)
        if not proven and code:
            proven = await self._spend_code(session, factor, code) is None
        if not proven:
            record_event(
                session,
                tenant_id=user.tenant_id,
                action="auth.mfa.disable",
                outcome=Outcome.DENIED,
                actor=actor,
                ip_address=actor.ip_address,
                target_type="user",
                target_id=user.id,
                reason="not_proven",
            )
            return False
        await self.remove(session, user, actor)
        return True

    async def remove(self, session: AsyncSession, user: User, actor: Actor) -> None:
        """Delete the factor and recovery codes (after the caller checked the right to)."""
        await session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
        await session.execute(delete(UserTotp).where(UserTotp.user_id == user.id))
        record_event(
            session,
            tenant_id=user.tenant_id,
            action="auth.mfa.disable",
            actor=actor,
            ip_address=actor.ip_address,
            target_type="user",
            target_id=user.id,
            data={"method": "totp"},
        )


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
