"""The auth service's logic: identities, credentials, roles, sessions and tokens.

One module per concept, each a class holding only what it needs:

==================  ====================================================================
``users``           users, their profile and status, passwords (policy, history)
``roles``           roles, assignments, what a principal may do through them
``api_keys``        API keys and the principal a presented key acts as
``clients``         service accounts, OAuth clients, the client credentials grant
``tokens``          signing, verifying, introspecting and revoking access tokens
``sessions``        login (password, second factor, lockout), refresh, logout
``signing``         the platform's signing keys, their rotation, the local verifier
``account_tokens``  password reset and e-mail verification tokens
``account_notices`` notices to a user about their account (a lockout, a new device)
``devices``         the devices users log in from (keyed hashes), for the new-device notice
``policy``          the pure rules: valid names, who may grant what, scope, audience
==================  ====================================================================

:class:`AuthService` is the front the router, the CLI, the jobs and the tests hold: it builds
the concepts once and offers their operations under one name each (``auth.create_user`` is
``auth.users.create_user``).

Plain arguments in, plain objects out. Nothing here commits; the caller's unit of work does.
Failures that must still be recorded (a wrong password counts towards a lockout, a reused
refresh token revokes its family) are *returned* as :class:`AuthFailure` rather than raised,
so the unit of work that records them commits.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import keel.auth.audit_actions  # noqa: F401 - registers the catalogue entries
from keel.auth.models import PrincipalType
from keel.auth.service.account_notices import (
    AccountNotice,
    AccountNoticeDelivery,
    AccountNoticeKind,
    log_account_notice,
)
from keel.auth.service.account_tokens import AccountTokens
from keel.auth.service.api_keys import ApiKeys
from keel.auth.service.caches import API_KEYS, CLIENT_GRANTS, REVOCATIONS
from keel.auth.service.clients import Clients
from keel.auth.service.mfa import TotpMfa
from keel.auth.service.one_time_tokens import (
    AccountTokenDelivery,
    AccountTokenMessage,
    log_account_token_request,
)
from keel.auth.service.passwords import Passwords
from keel.auth.service.policy import granted_scope
from keel.auth.service.results import AuthFailure, IssuedSecret, TokenPair
from keel.auth.service.roles import ADMIN_PERMISSIONS, ADMIN_ROLE, Roles, roles_and_permissions
from keel.auth.service.sessions import LoginSessions
from keel.auth.service.signing import Signing
from keel.auth.service.tokens import Tokens
from keel.auth.service.users import Users
from keel.core.crypto import Keyring
from keel.settings import AuthSettings

__all__ = [
    "ADMIN_PERMISSIONS",
    "ADMIN_ROLE",
    "API_KEYS",
    "CLIENT_GRANTS",
    "REVOCATIONS",
    "AccountNotice",
    "AccountNoticeDelivery",
    "AccountNoticeKind",
    "AccountTokenDelivery",
    "AccountTokenMessage",
    "AuthFailure",
    "AuthService",
    "IssuedSecret",
    "PrincipalType",
    "TokenPair",
    "granted_scope",
]


class AuthService:
    """The auth service: its concepts, built once, and their operations under one roof."""

    def __init__(self, settings: AuthSettings, keyring: Keyring, *, issuer: str) -> None:
        self.settings = settings
        self.keyring = keyring
        self.issuer = issuer
        self.passwords = Passwords(settings)
        self.access_ttl = timedelta(seconds=settings.access_token_ttl_seconds)
        self.refresh_ttl = timedelta(seconds=settings.refresh_token_ttl_seconds)
        self.mfa = TotpMfa(keyring, self.passwords)
        #: Sends e-mail verification and password reset tokens; replace to deliver them.
        self.deliver_account_token: AccountTokenDelivery = log_account_token_request
        #: Tells a user what happened to their account (a lockout); replace to deliver it.
        self.deliver_account_notice: AccountNoticeDelivery = log_account_notice

        self.signing = Signing(settings, keyring, issuer=issuer, token_lifetime=self.access_ttl)
        self.keys = self.signing.keys
        self.verifier = self.signing.verifier
        self.roles = Roles()
        self.api_keys = ApiKeys(keyring)
        self.tokens = Tokens(settings, keyring, self.signing, self.api_keys, issuer=issuer)
        self.clients = Clients(keyring, self.tokens)
        self.login_sessions = LoginSessions(
            settings, keyring, self.passwords, self.mfa, self.tokens
        )
        self.users = Users(settings, self.passwords)
        self.account_tokens = AccountTokens(keyring, self.users)

        # The operations, by concept.
        self.rotate_signing_key = self.signing.rotate_signing_key

        self.create_user = self.users.create_user
        self.get_user = self.users.get_user
        self.list_users = self.users.list_users
        self.update_user = self.users.update_user
        self.set_password = self.users.set_password

        self.create_role = self.roles.create_role
        self.get_role = self.roles.get_role
        self.list_roles = self.roles.list_roles
        self.update_role = self.roles.update_role
        self.delete_role = self.roles.delete_role
        self.assign_role = self.roles.assign_role
        self.unassign_role = self.roles.unassign_role
        self.roles_and_permissions = roles_and_permissions

        self.create_api_key = self.api_keys.create_api_key
        self.list_api_keys = self.api_keys.list_api_keys
        self.revoke_api_key = self.api_keys.revoke_api_key
        self.principal_for_api_key = self.api_keys.principal_for_api_key

        self.create_service_account = self.clients.create_service_account
        self.create_application_client = self.clients.create_application_client
        self.find_service_account = self.clients.find_service_account
        self.add_client_secret = self.clients.add_client_secret
        self.revoke_client_secret = self.clients.revoke_client_secret
        self.client_id_for_secret = self.clients.client_id_for_secret
        self.authenticate_client = self.clients.authenticate_client
        self.client_credentials_grant = self.clients.client_credentials_grant

        self.issue_access_token = self.tokens.issue_access_token
        self.verify_access_token = self.tokens.verify_access_token
        self.authenticate = self.tokens.authenticate
        self.introspect = self.tokens.introspect
        self.revoke_token = self.tokens.revoke_token
        self.purge_expired = self.tokens.purge_expired

        self.login = self.login_sessions.login
        self.check_credentials = self.login_sessions.check_credentials
        self.note_login_device = self.login_sessions.note_device
        self.start_session = self.login_sessions.start_session
        self.refresh = self.login_sessions.refresh
        self.logout = self.login_sessions.logout
        self.list_sessions = self.login_sessions.list_sessions
        self.revoke_session = self.login_sessions.revoke_session
        self.revoke_all_sessions = self.login_sessions.revoke_all_sessions

        self.request_password_reset = self.account_tokens.request_password_reset
        self.reset_password = self.account_tokens.reset_password
        self.request_email_verification = self.account_tokens.request_email_verification
        self.verify_email = self.account_tokens.verify_email

    def use_database(self, sessions: Any) -> None:
        """Give the verifier a way to reload keys on an unknown ``kid``, and API key cache
        hits a way to read their key again ahead of its expiry (``sessions()``: a unit of
        work)."""
        self.signing.use_database(sessions)
        self.api_keys.use_database(sessions)

    async def aclose(self) -> None:
        """Wait for what runs in the background (at shutdown)."""
        await self.api_keys.aclose()
