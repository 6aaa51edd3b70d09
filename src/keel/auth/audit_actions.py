"""The audit actions of the auth service: its entries of the action catalogue."""

from __future__ import annotations

from keel.core.audit import ActionSpec, Sensitivity, register_actions

_SECURITY = "security"
_ACCESS = "access"

register_actions(
    ActionSpec("auth.session.login", "A login attempt, successful or not.", _SECURITY),
    ActionSpec("auth.session.revoke", "A login session ended.", _SECURITY),
    ActionSpec("auth.session.revoke_all", "Every session of a user ended.", _SECURITY),
    ActionSpec("auth.token.issue", "An access token issued.", _ACCESS),
    ActionSpec("auth.token.refresh", "A refresh token used, or its reuse refused.", _ACCESS),
    ActionSpec("auth.token.revoke", "A token revoked (RFC 7009).", _ACCESS),
    ActionSpec("auth.oauth.authorize", "An authorization code granted or refused.", _ACCESS),
    ActionSpec("auth.user.create", "A user created.", "change"),
    ActionSpec("auth.user.update", "A user's e-mail, name or status changed.", "change"),
    ActionSpec(
        "auth.user.password_change",
        "A password set or changed.",
        _SECURITY,
        Sensitivity.CONFIDENTIAL,
    ),
    ActionSpec("auth.password_reset.request", "A password reset requested.", _SECURITY),
    ActionSpec("auth.password_reset.confirm", "A password reset used.", _SECURITY),
    ActionSpec("auth.email_verification.request", "An e-mail verification requested.", _SECURITY),
    ActionSpec("auth.email_verification.confirm", "An e-mail address verified.", _SECURITY),
    ActionSpec("auth.mfa.enrol", "TOTP enrolment started.", _SECURITY),
    ActionSpec("auth.mfa.confirm", "TOTP turned on.", _SECURITY),
    ActionSpec("auth.mfa.disable", "TOTP turned off.", _SECURITY),
    ActionSpec("auth.mfa.recovery_code_use", "A recovery code used.", _SECURITY),
    ActionSpec("auth.service_account.create", "A service account created.", "change"),
    ActionSpec("auth.client.create", "An OAuth client created.", "change"),
    ActionSpec("auth.api_key.create", "An API key created.", _SECURITY),
    ActionSpec("auth.api_key.revoke", "An API key revoked.", _SECURITY),
    ActionSpec("auth.role.create", "A role created.", "change"),
    ActionSpec("auth.role.update", "A role's permissions changed.", "change"),
    ActionSpec("auth.role.delete", "A role deleted.", "change"),
    ActionSpec("auth.role.assign", "A role assigned.", _SECURITY),
    ActionSpec("auth.role.unassign", "A role unassigned.", _SECURITY),
    ActionSpec("auth.signing_key.rotate", "The token signing key rotated.", _SECURITY),
)
