"""OAuth 2.0 and OpenID Connect: ``/auth/v1/oauth/token`` (RFC 6749), ``/introspect``
(RFC 7662), ``/revoke`` (RFC 7009), ``/userinfo``, and the ``/.well-known`` documents."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Form, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import JSONResponse

from keel.auth.dependencies import (
    AnonymousActor,
    Auth,
    CurrentPrincipal,
    bearer_credential,
    get_auth_service,
)
from keel.auth.models import PrincipalType
from keel.auth.service import AuthFailure, AuthService
from keel.auth.service.authorize import AuthorizationCodeFlow
from keel.core.audit import Actor
from keel.core.deps import DbSession, get_context

router = APIRouter(tags=["auth"])
well_known_router = APIRouter(tags=["oidc"])

#: The token request's fields and their longest accepted values.
_TOKEN_FIELDS = {
    "grant_type": 100,
    "scope": 2000,
    "audience": 200,
    "refresh_token": 200,
    "client_id": 64,
    "client_secret": 200,
    "code": 200,
    "redirect_uri": 2000,
    "code_verifier": 128,
}
_TOKEN_REQUEST_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["grant_type"],
                    "properties": {
                        name: {"type": "string", "maxLength": length}
                        for name, length in _TOKEN_FIELDS.items()
                    },
                }
            }
        },
    }
}


@router.post("/oauth/token", openapi_extra=_TOKEN_REQUEST_SCHEMA)
async def token(request: Request, actor: AnonymousActor) -> Response:
    """OAuth 2.0 token endpoint (RFC 6749): ``authorization_code`` (with PKCE),
    ``client_credentials`` and ``refresh_token``.

    The form is read here rather than declared as eleven ``Form`` parameters, and the unit
    of work opened here rather than by a dependency: this is the hottest endpoint of
    machine-to-machine traffic, and a malformed request gets the OAuth
    ``invalid_request`` answer its clients expect rather than a 422.
    """
    auth = await get_auth_service(request)
    async with get_context(request).database.session() as session:
        return await _token_grant(request, session, auth, actor)


async def _token_grant(
    request: Request, session: AsyncSession, auth: AuthService, actor: Actor
) -> Response:
    form = await _token_form(request)
    if isinstance(form, Response):
        return form
    grant_type = form.get("grant_type", "")
    scope = form.get("scope", "")
    audience = form.get("audience")
    refresh_token = form.get("refresh_token")
    client_id = form.get("client_id")
    client_secret = form.get("client_secret")
    code = form.get("code")
    redirect_uri = form.get("redirect_uri")
    code_verifier = form.get("code_verifier")
    basic_id, basic_secret = _basic_credentials(request)
    client_id = basic_id or client_id
    client_secret = basic_secret or client_secret
    if grant_type == "client_credentials":
        if not client_id:
            return _oauth_error("invalid_client", "Client authentication failed.", 401)
        result = await auth.client_credentials_grant(
            session, client_id, client_secret, scope, audience
        )
    elif grant_type == "refresh_token":
        if not refresh_token:
            return _oauth_error("invalid_request", "refresh_token is required.")
        if client_id:
            client = await auth.authenticate_client(session, client_id, client_secret)
            if client is None:
                return _oauth_error("invalid_client", "Client authentication failed.", 401)
        result = await auth.refresh(session, refresh_token, actor, client_id)
    elif grant_type == "authorization_code":
        client = (
            await auth.authenticate_client(session, client_id, client_secret) if client_id else None
        )
        if client is None:
            return _oauth_error("invalid_client", "Client authentication failed.", 401)
        if not code or not redirect_uri or not code_verifier:
            return _oauth_error(
                "invalid_request", "code, redirect_uri and code_verifier are required."
            )
        result = await AuthorizationCodeFlow(auth).exchange(
            session,
            client,
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=code_verifier,
            actor=actor,
        )
    else:
        return _oauth_error("unsupported_grant_type", f"{grant_type!r} is not supported.")
    if isinstance(result, AuthFailure):
        await session.commit()
        if result.reason == "invalid_client":
            return _oauth_error("invalid_client", "Client authentication failed.", 401)
        if result.reason == "unauthorized_client":
            return _oauth_error("unauthorized_client", "This client may not use this grant.")
        if result.reason == "invalid_scope":
            return _oauth_error("invalid_scope", "No requested scope can be granted.")
        return _oauth_error("invalid_grant", "The grant is invalid, expired or revoked.")
    body: dict[str, Any] = {
        "access_token": result.access_token,
        "token_type": "Bearer",
        "expires_in": result.expires_in,
    }
    if result.refresh_token:
        body["refresh_token"] = result.refresh_token
    if result.scope:
        body["scope"] = result.scope
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@router.post("/oauth/introspect")
async def introspect(
    request: Request,
    session: DbSession,
    auth: Auth,
    token: Annotated[str, Form(max_length=16_384)],
) -> Response:
    """RFC 7662 token introspection; the caller authenticates as a client or principal."""
    tenant_id = await _introspecting_tenant(request, session, auth)
    if tenant_id is None:
        return _oauth_error("invalid_client", "Authenticate to introspect tokens.", 401)
    result = await auth.introspect(session, token, tenant_id=tenant_id)
    return JSONResponse(result, headers={"Cache-Control": "no-store"})


@router.post("/oauth/revoke")
async def revoke(
    request: Request,
    session: DbSession,
    auth: Auth,
    actor: AnonymousActor,
    token: Annotated[str, Form(max_length=16_384)],
    client_id: Annotated[str | None, Form(max_length=64)] = None,
    client_secret: Annotated[str | None, Form(max_length=200)] = None,
) -> Response:
    """RFC 7009 token revocation: 200 whether or not the token was known.

    A token issued to a client (client credentials, authorization code) is revoked only
    by that client, authenticated (section 2.1); a login's tokens need no client.
    """
    basic_id, basic_secret = _basic_credentials(request)
    client_id = basic_id or client_id
    client_secret = basic_secret or client_secret
    if client_id and not await auth.authenticate_client(session, client_id, client_secret):
        return _oauth_error("invalid_client", "Client authentication failed.", 401)
    if not await auth.revoke_token(session, token, actor, client_id):
        return _oauth_error(
            "invalid_client", "The token was issued to a client: authenticate as it.", 401
        )
    return Response(status_code=200)


@router.get("/oauth/userinfo")
async def userinfo(principal: CurrentPrincipal, session: DbSession, auth: Auth) -> Any:
    """OIDC UserInfo for the user an access token stands for."""
    if principal.principal_type != PrincipalType.user:
        return {"sub": principal.subject, "tid": principal.tenant_id}
    user = await auth.get_user(session, principal.tenant_id, principal.subject)
    info: dict[str, Any] = {
        "sub": user.id,
        "preferred_username": user.username,
        "tid": principal.tenant_id,
    }
    if user.email:
        info.update(email=user.email, email_verified=user.is_email_verified)
    if user.display_name:
        info["name"] = user.display_name
    return info


# -- the well-known documents, at the root of the server ---------------------------------------


@well_known_router.get("/.well-known/openid-configuration")
async def openid_configuration(request: Request, auth: Auth) -> Response:
    base = auth.issuer
    document = {
        "issuer": base,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "token_endpoint": f"{base}/auth/v1/oauth/token",
        "introspection_endpoint": f"{base}/auth/v1/oauth/introspect",
        "revocation_endpoint": f"{base}/auth/v1/oauth/revoke",
        "userinfo_endpoint": f"{base}/auth/v1/oauth/userinfo",
        "authorization_endpoint": f"{base}/auth/v1/oauth/authorize",
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [auth.settings.signing_algorithm],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "scopes_supported": ["openid", "profile", "email"],
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "tid",
            "roles",
            "permissions",
            "scope",
        ],
    }
    return JSONResponse(document, headers={"Cache-Control": "public, max-age=3600"})


@well_known_router.get("/.well-known/jwks.json")
async def jwks(request: Request, session: DbSession, auth: Auth) -> Response:
    document = await auth.keys.published(session)
    max_age = auth.settings.jwks_max_age_seconds
    return JSONResponse(document, headers={"Cache-Control": f"public, max-age={max_age}"})


# -- helpers ----------------------------------------------------------------------------------


def _basic_credentials(request: Request) -> tuple[str | None, str | None]:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    client_id, _, client_secret = decoded.partition(":")
    # RFC 6749 §2.3.1: both parts are form-urlencoded inside the Basic credentials.
    return unquote(client_id) or None, unquote(client_secret) or None


async def _token_form(request: Request) -> dict[str, str] | Response:
    """The token request's parameters (RFC 6749 section 3.2), or the ``invalid_request``
    answer: a form body, each parameter at most once, none too long, ``grant_type`` given."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _oauth_error("invalid_request", "Send application/x-www-form-urlencoded.")
    try:
        pairs = parse_qsl(
            (await request.body()).decode(),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=len(_TOKEN_FIELDS) + 5,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        return _oauth_error("invalid_request", "The form cannot be read.")
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            return _oauth_error("invalid_request", f"{name} is given more than once.")
        longest = _TOKEN_FIELDS.get(name)
        if longest is not None and len(value) > longest:
            return _oauth_error("invalid_request", f"{name} is longer than {longest}.")
        if value:
            form[name] = value
    if "grant_type" not in form:
        return _oauth_error("invalid_request", "grant_type is required.")
    return form


def _oauth_error(error: str, description: str, status: int = 400) -> Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="keel"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


async def _introspecting_tenant(
    request: Request, session: AsyncSession, auth: AuthService
) -> str | None:
    """The tenant of a caller allowed to introspect (a client or a permitted principal)."""
    client_id, client_secret = _basic_credentials(request)
    if client_id is not None:
        client = await auth.authenticate_client(session, client_id, client_secret)
        return str(client.tenant_id) if client is not None else None
    credential = bearer_credential(request)
    if credential is None:
        return None
    principal = await auth.authenticate(session, credential)
    if principal is None or not principal.has_permission("auth:token:introspect"):
        return None
    return str(principal.tenant_id)
