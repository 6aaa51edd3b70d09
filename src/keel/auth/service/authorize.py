"""OAuth 2.0 authorization code grant (RFC 6749 §4.1) with PKCE (RFC 7636, S256 only).

The flow: a client sends the browser to ``GET /auth/v1/oauth/authorize``; Keel shows a login
form; a successful ``POST`` issues a code (single use, 60 s, stored as a keyed hash, bound to
the client, the redirect URI, the PKCE challenge and the user) and redirects back; the client
exchanges the code and its ``code_verifier`` at the token endpoint.

The form is CSRF-safe without server state: it carries a *form token*, the validated
request signed with a key derived from the master key (:meth:`Keyring.token_hash`), valid for
ten minutes and bound to a random per-browser cookie (``SameSite=Strict``, ``HttpOnly``). A
POST from another site has neither a matching cookie nor a token it could forge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.models import AuthorizationCode, LoginSession, OAuthClient, User, UserStatus
from keel.auth.service import AuthFailure, AuthService, TokenPair
from keel.core.audit import Actor, Outcome, record_event
from keel.core.db import utcnow
from keel.core.tenancy import Tenant, bind_tenant

CODE_LIFETIME = timedelta(seconds=60)
FORM_TOKEN_LIFETIME_SECONDS = 600
BROWSER_COOKIE = "keel_authorize"
MAX_STATE_LENGTH = 1000
MAX_SCOPE_LENGTH = 1000
MAX_REDIRECT_URI_LENGTH = 2000
_CODE_PREFIX = "kac_"
#: RFC 7636 §4.2: BASE64URL(SHA256(verifier)) is always 43 characters.
_S256_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
#: RFC 7636 §4.1: 43-128 unreserved characters.
_CODE_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
#: RFC 6749 §3.3 scope-token characters, space-separated.
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$")
_BROWSER_BINDING = re.compile(r"^[A-Za-z0-9_-]{32}$")


class AuthorizeError(Exception):
    """A refused authorization request.

    ``redirectable`` is False when the client or redirect URI cannot be trusted (RFC 6749
    §4.1.2.1): the user then sees an error page and is never sent anywhere.
    """

    def __init__(self, error: str, description: str, *, redirectable: bool) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.redirectable = redirectable


@dataclass(frozen=True)
class AuthorizationRequest:
    client_id: str
    redirect_uri: str
    code_challenge: str
    state: str | None
    scope: str


def s256_challenge(code_verifier: str) -> str:
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def pkce_matches(code_verifier: str, code_challenge: str) -> bool:
    if not _CODE_VERIFIER.fullmatch(code_verifier):
        return False
    return hmac.compare_digest(s256_challenge(code_verifier), code_challenge)


def redirect_with(redirect_uri: str, params: dict[str, str | None]) -> str:
    """``redirect_uri`` with ``params`` added to its query (RFC 6749 §4.1.2: kept as is)."""
    parts = urlsplit(redirect_uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(key, value) for key, value in params.items() if value is not None]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_browser_binding() -> str:
    return secrets.token_urlsafe(24)


def valid_browser_binding(value: str | None) -> bool:
    return value is not None and _BROWSER_BINDING.fullmatch(value) is not None


class AuthorizationCodeFlow:
    """Validate requests, sign the login form, issue and exchange codes."""

    def __init__(self, auth: AuthService) -> None:
        self.auth = auth

    # -- the authorization request ----------------------------------------------------------

    async def find_client(self, session: AsyncSession, client_id: str | None) -> OAuthClient:
        if not client_id or len(client_id) > 64:
            raise AuthorizeError("invalid_request", "client_id is missing.", redirectable=False)
        client = await session.scalar(
            select(OAuthClient)
            .where(OAuthClient.client_id == client_id)
            .execution_options(all_tenants=True)  # the client id tells which tenant
        )
        if client is None or client.is_revoked or "authorization_code" not in client.grant_types:
            raise AuthorizeError(
                "unauthorized_client",
                "This application is not registered for sign-in.",
                redirectable=False,
            )
        return client

    async def validate(
        self, session: AsyncSession, params: dict[str, list[str]]
    ) -> tuple[OAuthClient, AuthorizationRequest]:
        """Check an authorization request in the order RFC 6749 §4.1.2.1 requires."""

        def single(name: str) -> str | None:
            values = params.get(name, [])
            if len(values) > 1:
                # Checked for the client and redirect URI before any redirect is trusted.
                raise AuthorizeError(
                    "invalid_request", f"{name} is given more than once.", redirectable=False
                )
            return values[0] if values else None

        client = await self.find_client(session, single("client_id"))
        redirect_uri = single("redirect_uri")
        if not redirect_uri or redirect_uri not in client.redirect_uris:
            raise AuthorizeError(
                "invalid_request",
                "The redirect URI is missing or not registered for this application.",
                redirectable=False,
            )
        try:
            state = single("state")
            response_type = single("response_type")
            code_challenge = single("code_challenge")
            method = single("code_challenge_method")
            scope = single("scope") or ""
        except AuthorizeError as exc:
            raise AuthorizeError(exc.error, exc.description, redirectable=True) from None
        if state is not None and len(state) > MAX_STATE_LENGTH:
            raise AuthorizeError("invalid_request", "state is too long.", redirectable=True)
        if response_type != "code":
            raise AuthorizeError(
                "unsupported_response_type", "Only response_type=code.", redirectable=True
            )
        if not code_challenge:
            raise AuthorizeError(
                "invalid_request", "code_challenge is required (PKCE).", redirectable=True
            )
        if method != "S256":
            raise AuthorizeError(
                "invalid_request",
                "code_challenge_method must be S256; plain is not supported.",
                redirectable=True,
            )
        if not _S256_CHALLENGE.fullmatch(code_challenge):
            raise AuthorizeError(
                "invalid_request", "code_challenge is not a S256 challenge.", redirectable=True
            )
        if scope and (len(scope) > MAX_SCOPE_LENGTH or not _SCOPE.fullmatch(scope)):
            raise AuthorizeError("invalid_scope", "The scope is malformed.", redirectable=True)
        request = AuthorizationRequest(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            code_challenge=code_challenge,
            state=state,
            scope=scope,
        )
        return client, request

    # -- the signed login form --------------------------------------------------------------

    def _browser_tag(self, browser_binding: str) -> str:
        return self.auth.keyring.token_hash(f"keel.authorize.browser|{browser_binding}")[:32]

    def _signature(self, payload: str) -> str:
        return self.auth.keyring.token_hash(f"keel.authorize.form|{payload}")

    def form_token(self, request: AuthorizationRequest, browser_binding: str) -> str:
        payload = _b64(
            json.dumps(
                {
                    "c": request.client_id,
                    "r": request.redirect_uri,
                    "ch": request.code_challenge,
                    "s": request.state,
                    "sc": request.scope,
                    "b": self._browser_tag(browser_binding),
                    "exp": int(time.time()) + FORM_TOKEN_LIFETIME_SECONDS,
                },
                separators=(",", ":"),
            ).encode()
        )
        return f"{payload}.{self._signature(payload)}"

    def read_form_token(
        self, token: str | None, browser_binding: str | None
    ) -> AuthorizationRequest | None:
        """The request a form token stands for, if it is genuine, fresh and this browser's."""
        if not token or not valid_browser_binding(browser_binding):
            return None
        assert browser_binding is not None
        payload, _, signature = token.partition(".")
        if not hmac.compare_digest(self._signature(payload), signature):
            return None
        try:
            data: dict[str, Any] = json.loads(_unb64(payload))
        except ValueError:
            return None
        if not isinstance(data.get("exp"), int) or data["exp"] < time.time():
            return None
        if not hmac.compare_digest(str(data.get("b")), self._browser_tag(browser_binding)):
            return None
        return AuthorizationRequest(
            client_id=str(data["c"]),
            redirect_uri=str(data["r"]),
            code_challenge=str(data["ch"]),
            state=data.get("s"),
            scope=str(data.get("sc") or ""),
        )

    # -- codes ------------------------------------------------------------------------------

    async def tenant_slug(self, session: AsyncSession, client: OAuthClient) -> str:
        slug = await session.scalar(select(Tenant.slug).where(Tenant.id == client.tenant_id))
        assert slug is not None
        return slug

    async def issue_code(
        self,
        session: AsyncSession,
        client: OAuthClient,
        request: AuthorizationRequest,
        user: User,
        actor: Actor,
    ) -> str:
        bind_tenant(session, client.tenant_id)
        code = _CODE_PREFIX + secrets.token_urlsafe(32)
        session.add(
            AuthorizationCode(
                code_hash=self.auth.keyring.token_hash(code),
                client_id=client.client_id,
                user_id=user.id,
                redirect_uri=request.redirect_uri,
                code_challenge=request.code_challenge,
                scope=request.scope,
                expires_at=utcnow() + CODE_LIFETIME,
            )
        )
        record_event(
            session,
            tenant_id=client.tenant_id,
            action="auth.oauth.authorize",
            actor_type="user",
            actor_id=user.id,
            ip_address=actor.ip_address,
            target_type="client",
            target_id=client.client_id,
            data={"scope": request.scope},
        )
        return code

    async def exchange(
        self,
        session: AsyncSession,
        client: OAuthClient,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str,
        actor: Actor,
    ) -> TokenPair | AuthFailure:
        """Trade a code for tokens once; a code presented again ends what it was traded for."""
        if "authorization_code" not in client.grant_types:
            return AuthFailure("unauthorized_client")
        row = await session.scalar(
            select(AuthorizationCode)
            .where(AuthorizationCode.code_hash == self.auth.keyring.token_hash(code))
            .execution_options(all_tenants=True)
        )
        if row is None:
            return AuthFailure("unknown_code")
        bind_tenant(session, row.tenant_id)
        now = utcnow()
        if row.used_at is not None:
            return await self._refuse_reuse(session, row, actor)
        if row.client_id != client.client_id:
            return AuthFailure("wrong_client")
        if row.expires_at <= now:
            return AuthFailure("code_expired")
        if row.redirect_uri != redirect_uri:
            return AuthFailure("redirect_uri_mismatch")
        if not pkce_matches(code_verifier, row.code_challenge):
            return AuthFailure("pkce_mismatch")
        spent = await session.execute(
            update(AuthorizationCode)
            .where(AuthorizationCode.id == row.id, AuthorizationCode.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        if int(getattr(spent, "rowcount", 0) or 0) != 1:
            return AuthFailure("code_reuse")
        user = await session.scalar(select(User).where(User.id == row.user_id))
        if user is None or user.status != UserStatus.active:
            return AuthFailure("disabled")
        pair = await self.auth.start_session(
            session, row.tenant_id, user, actor, client.client_id, scope=row.scope
        )
        await session.execute(
            update(AuthorizationCode)
            .where(AuthorizationCode.id == row.id)
            .values(session_id=pair.session_id)
            .execution_options(synchronize_session=False)
        )
        record_event(
            session,
            tenant_id=row.tenant_id,
            action="auth.token.issue",
            actor_type="user",
            actor_id=user.id,
            ip_address=actor.ip_address,
            target_type="session",
            target_id=pair.session_id,
            data={
                "grant_type": "authorization_code",
                "client_id": client.client_id,
                "scope": row.scope,
            },
        )
        return pair

    async def _refuse_reuse(
        self, session: AsyncSession, row: AuthorizationCode, actor: Actor
    ) -> AuthFailure:
        # RFC 6749 §4.1.2: a code used twice may have leaked; revoke what it was traded for.
        if row.session_id is not None:
            await session.execute(
                update(LoginSession)
                .where(LoginSession.id == row.session_id, LoginSession.revoked_at.is_(None))
                .values(revoked_at=utcnow(), revoked_reason="code_reuse")
                .execution_options(synchronize_session=False)
            )
        record_event(
            session,
            tenant_id=row.tenant_id,
            action="auth.token.issue",
            outcome=Outcome.DENIED,
            actor_type="user",
            actor_id=row.user_id,
            ip_address=actor.ip_address,
            target_type="client",
            target_id=row.client_id,
            reason="code_reuse",
            data={"grant_type": "authorization_code", "revoked_session": row.session_id},
        )
        return AuthFailure("code_reuse")
