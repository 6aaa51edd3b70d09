"""HTTP routes of the auth service: ``/auth/v1/...`` and the OIDC well-known documents."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Form, Header, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import JSONResponse

from keel.auth import schemas
from keel.auth.authorize import AuthorizationCodeFlow
from keel.auth.dependencies import (
    Auth,
    CurrentPrincipal,
    bearer_credential,
    get_auth_service,
    limit_by_address,
    no_store,
    request_actor,
    require_permission,
)
from keel.auth.mfa import MfaCheck
from keel.auth.models import PrincipalType
from keel.auth.service import AuthFailure, AuthService, TokenPair
from keel.core.audit import Actor
from keel.core.deps import DbSession, get_context
from keel.core.errors import Forbidden, Unauthorized, ValidationFailed
from keel.core.http import ServiceRouter
from keel.core.versioned import with_etag


def _token_response(pair: TokenPair) -> schemas.TokenResponse:
    return schemas.TokenResponse(
        access_token=pair.access_token,
        expires_in=pair.expires_in,
        refresh_token=pair.refresh_token,
        scope=pair.scope,
    )


def build_router() -> APIRouter:
    router = ServiceRouter(prefix="/v1", tags=["auth"])

    # -- sessions -------------------------------------------------------------------------------

    @router.post("/login", response_model=schemas.TokenResponse)
    async def login(
        body: schemas.LoginRequest,
        request: Request,
        response: Response,
        session: DbSession,
        auth: Auth,
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
            actor=request_actor(request),
            totp_code=body.totp_code.get_secret_value() if body.totp_code else None,
        )
        if isinstance(result, AuthFailure):
            await session.commit()  # the failure counts towards the lockout
            if result.reason == MfaCheck.required:
                # Only after the right password: it tells nothing about who has an account.
                raise Unauthorized("A second-factor code is required.", mfa_required=True)
            raise Unauthorized("Invalid username or password.")
        no_store(response)
        return _token_response(result)

    @router.post("/refresh", response_model=schemas.TokenResponse)
    async def refresh(
        body: schemas.RefreshRequest,
        request: Request,
        response: Response,
        session: DbSession,
        auth: Auth,
    ) -> schemas.TokenResponse:
        """Rotate a refresh token. Reusing a rotated token ends its whole session."""
        result = await auth.refresh(
            session, body.refresh_token.get_secret_value(), request_actor(request)
        )
        if isinstance(result, AuthFailure):
            await session.commit()  # a detected reuse revokes the family
            raise Unauthorized("The refresh token is invalid, expired or revoked.")
        no_store(response)
        return _token_response(result)

    @router.post("/logout", status_code=204)
    async def logout(principal: CurrentPrincipal, session: DbSession, auth: Auth) -> None:
        """End the session of the presented access token."""
        await auth.logout(session, principal)

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
        session_id: str, principal: CurrentPrincipal, session: DbSession, auth: Auth
    ) -> None:
        _require_user(principal)
        await auth.revoke_session(
            session, principal.tenant_id, principal.subject, session_id, actor=Actor.of(principal)
        )

    @router.delete("/sessions", status_code=204)
    async def revoke_all_sessions(
        principal: CurrentPrincipal, session: DbSession, auth: Auth
    ) -> None:
        _require_user(principal)
        await auth.revoke_all_sessions(
            session, principal.tenant_id, principal.subject, actor=Actor.of(principal)
        )

    # -- users ----------------------------------------------------------------------------------

    @router.post(
        "/users",
        status_code=201,
        response_model=schemas.User,
        dependencies=[require_permission("auth:user:create")],
    )
    async def create_user(
        body: schemas.UserCreate, principal: CurrentPrincipal, session: DbSession, auth: Auth
    ) -> Any:
        actor = Actor.of(principal)
        user = await auth.create_user(
            session,
            principal.tenant_id,
            username=body.username,
            email=body.email,
            display_name=body.display_name,
            password=body.password.get_secret_value() if body.password else None,
            actor=actor,
        )
        for role in body.roles:
            await auth.assign_role(
                session,
                principal.tenant_id,
                role,
                PrincipalType.user,
                user.id,
                actor=actor,
                grantor=principal,
            )
        return user

    @router.get(
        "/users",
        response_model=list[schemas.User],
        dependencies=[require_permission("auth:user:read")],
    )
    async def list_users(principal: CurrentPrincipal, session: DbSession, auth: Auth) -> Any:
        return await auth.list_users(session, principal.tenant_id)

    @router.get(
        "/users/{user_id}",
        response_model=schemas.User,
        dependencies=[require_permission("auth:user:read")],
    )
    async def get_user(
        user_id: str,
        response: Response,
        principal: CurrentPrincipal,
        session: DbSession,
        auth: Auth,
    ) -> Any:
        user = await auth.get_user(session, principal.tenant_id, user_id)
        return with_etag(user, response)

    @router.patch(
        "/users/{user_id}",
        response_model=schemas.User,
        dependencies=[require_permission("auth:user:update")],
    )
    async def update_user(
        user_id: str,
        body: schemas.UserUpdate,
        response: Response,
        principal: CurrentPrincipal,
        session: DbSession,
        auth: Auth,
        if_match: Annotated[str | None, Header()] = None,
    ) -> Any:
        user = await auth.update_user(
            session,
            principal.tenant_id,
            user_id,
            if_match=if_match,
            changes=body.model_dump(exclude_unset=True),
            actor=Actor.of(principal),
            grantor=principal,
        )
        return with_etag(user, response)

    @router.post("/users/{user_id}/password", status_code=204)
    async def change_password(
        user_id: str,
        body: schemas.PasswordChange,
        principal: CurrentPrincipal,
        session: DbSession,
        auth: Auth,
    ) -> None:
        """Users change their own password (giving the current one); admins set anyone's."""
        is_self = principal.principal_type == PrincipalType.user and principal.subject == user_id
        if not is_self and not principal.has_permission("auth:user:update"):
            raise Forbidden("This needs the permission 'auth:user:update'.")
        if is_self and body.current_password is None:
            raise ValidationFailed("Give current_password to change your own password.")
        await auth.set_password(
            session,
            principal.tenant_id,
            user_id,
            body.new_password.get_secret_value(),
            current_password=(
                body.current_password.get_secret_value() if body.current_password else None
            ),
            actor=Actor.of(principal),
            grantor=principal,
        )

    # -- service accounts -----------------------------------------------------------------------

    @router.post(
        "/service-accounts",
        status_code=201,
        response_model=schemas.ServiceAccountCreated,
        dependencies=[require_permission("auth:service_account:create")],
    )
    async def create_service_account(
        body: schemas.ServiceAccountCreate,
        response: Response,
        principal: CurrentPrincipal,
        session: DbSession,
        auth: Auth,
    ) -> schemas.ServiceAccountCreated:
        actor = Actor.of(principal)
        account, secret = await auth.create_service_account(
            session,
            principal.tenant_id,
            name=body.name,
            description=body.description,
            actor=actor,
        )
        for role in body.roles:
            await auth.assign_role(
                session,
                principal.tenant_id,
                role,
                PrincipalType.service_account,
                account.id,
                actor=actor,
                grantor=principal,
            )
        no_store(response)
        return schemas.ServiceAccountCreated(
            id=account.id, name=account.name, client_id=secret.id, client_secret=secret.secret
        )

    # -- API keys -------------------------------------------------------------------------------

    @router.post(
        "/api-keys",
        status_code=201,
        response_model=schemas.ApiKeyCreated,
        dependencies=[require_permission("auth:api_key:create")],
    )
    async def create_api_key(
        body: schemas.ApiKeyCreate,
        response: Response,
        principal: CurrentPrincipal,
        session: DbSession,
        auth: Auth,
    ) -> schemas.ApiKeyCreated:
        principal_type = body.principal_type or PrincipalType(principal.principal_type)
        principal_id = body.principal_id or principal.subject
        key, token = await auth.create_api_key(
            session,
            principal.tenant_id,
            name=body.name,
            principal_type=principal_type,
            principal_id=principal_id,
            scopes=body.scopes,
            expires_at=body.expires_at,
            actor=Actor.of(principal),
            grantor=principal,
        )
        no_store(response)
        return schemas.ApiKeyCreated.model_validate(
            {**schemas.ApiKey.model_validate(key).model_dump(), "key": token}
        )

    @router.get(
        "/api-keys",
        response_model=list[schemas.ApiKey],
        dependencies=[require_permission("auth:api_key:read")],
    )
    async def list_api_keys(principal: CurrentPrincipal, session: DbSession, auth: Auth) -> Any:
        return await auth.list_api_keys(session, principal.tenant_id)

    @router.delete(
        "/api-keys/{key_id}",
        status_code=204,
        dependencies=[require_permission("auth:api_key:revoke")],
    )
    async def revoke_api_key(
        key_id: str, principal: CurrentPrincipal, session: DbSession, auth: Auth
    ) -> None:
        await auth.revoke_api_key(session, principal.tenant_id, key_id, Actor.of(principal))

    # -- roles ----------------------------------------------------------------------------------

    @router.post(
        "/roles",
        status_code=201,
        response_model=schemas.Role,
        dependencies=[require_permission("auth:role:create")],
    )
    async def create_role(
        body: schemas.RoleCreate, principal: CurrentPrincipal, session: DbSession, auth: Auth
    ) -> Any:
        return await auth.create_role(
            session,
            principal.tenant_id,
            name=body.name,
            permissions=body.permissions,
            description=body.description,
            actor=Actor.of(principal),
            grantor=principal,
        )

    @router.get(
        "/roles",
        response_model=list[schemas.Role],
        dependencies=[require_permission("auth:role:read")],
    )
    async def list_roles(principal: CurrentPrincipal, session: DbSession, auth: Auth) -> Any:
        return await auth.list_roles(session, principal.tenant_id)

    @router.get(
        "/roles/{name}",
        response_model=schemas.Role,
        dependencies=[require_permission("auth:role:read")],
    )
    async def get_role(
        name: str,
        response: Response,
        principal: CurrentPrincipal,
        session: DbSession,
        auth: Auth,
    ) -> Any:
        role = await auth.get_role(session, principal.tenant_id, name)
        return with_etag(role, response)

    @router.put(
        "/roles/{name}",
        response_model=schemas.Role,
        dependencies=[require_permission("auth:role:update")],
    )
    async def update_role(
        name: str,
        body: schemas.RoleUpdate,
        response: Response,
        principal: CurrentPrincipal,
        session: DbSession,
        auth: Auth,
        if_match: Annotated[str | None, Header()] = None,
    ) -> Any:
        role = await auth.update_role(
            session,
            principal.tenant_id,
            name,
            permissions=body.permissions,
            if_match=if_match,
            actor=Actor.of(principal),
            grantor=principal,
        )
        return with_etag(role, response)

    @router.delete(
        "/roles/{name}", status_code=204, dependencies=[require_permission("auth:role:delete")]
    )
    async def delete_role(
        name: str, principal: CurrentPrincipal, session: DbSession, auth: Auth
    ) -> None:
        await auth.delete_role(
            session, principal.tenant_id, name, Actor.of(principal), grantor=principal
        )

    @router.post(
        "/roles/{name}/assignments",
        status_code=204,
        dependencies=[require_permission("auth:role:assign")],
    )
    async def assign_role(
        name: str,
        body: schemas.RoleAssignmentCreate,
        principal: CurrentPrincipal,
        session: DbSession,
        auth: Auth,
    ) -> None:
        await auth.assign_role(
            session,
            principal.tenant_id,
            name,
            body.principal_type,
            body.principal_id,
            Actor.of(principal),
            grantor=principal,
        )

    @router.delete(
        "/roles/{name}/assignments/{principal_type}/{principal_id}",
        status_code=204,
        dependencies=[require_permission("auth:role:assign")],
    )
    async def unassign_role(
        name: str,
        principal_type: PrincipalType,
        principal_id: str,
        principal: CurrentPrincipal,
        session: DbSession,
        auth: Auth,
    ) -> None:
        await auth.unassign_role(
            session,
            principal.tenant_id,
            name,
            principal_type,
            principal_id,
            Actor.of(principal),
            grantor=principal,
        )

    # -- signing keys ---------------------------------------------------------------------------

    @router.post(
        "/signing-keys/rotate",
        response_model=schemas.RotatedKey,
        dependencies=[require_permission("auth:signing_key:rotate")],
    )
    async def rotate_signing_key(
        principal: CurrentPrincipal, session: DbSession, auth: Auth
    ) -> schemas.RotatedKey:
        """Promote the published next key to signing and publish a new next key."""
        return schemas.RotatedKey(
            active_kid=await auth.rotate_signing_key(
                session, Actor.of(principal), tenant_id=principal.tenant_id
            )
        )

    # -- OAuth 2.0 ------------------------------------------------------------------------------

    @router.post("/oauth/token", openapi_extra=_TOKEN_REQUEST_SCHEMA)
    async def token(request: Request) -> Response:
        """OAuth 2.0 token endpoint (RFC 6749): ``authorization_code`` (with PKCE),
        ``client_credentials`` and ``refresh_token``.

        The form is read here rather than declared as eleven ``Form`` parameters, and the unit
        of work opened here rather than by a dependency: this is the hottest endpoint of
        machine-to-machine traffic, and a malformed request gets the OAuth
        ``invalid_request`` answer its clients expect rather than a 422.
        """
        auth = await get_auth_service(request)
        async with get_context(request).database.session() as session:
            return await _token_grant(request, session, auth)

    async def _token_grant(request: Request, session: AsyncSession, auth: AuthService) -> Response:
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
            result = await auth.refresh(session, refresh_token, request_actor(request), client_id)
        elif grant_type == "authorization_code":
            client = (
                await auth.authenticate_client(session, client_id, client_secret)
                if client_id
                else None
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
                actor=request_actor(request),
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
        if not await auth.revoke_token(session, token, request_actor(request), client_id):
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

    router.match_first("/v1/oauth/token")  # machine-to-machine traffic's hottest endpoint
    return router


def build_well_known_router() -> APIRouter:
    router = APIRouter(tags=["oidc"])

    @router.get("/.well-known/openid-configuration")
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

    @router.get("/.well-known/jwks.json")
    async def jwks(request: Request, session: DbSession, auth: Auth) -> Response:
        document = await auth.keys.published(session)
        max_age = auth.settings.jwks_max_age_seconds
        return JSONResponse(document, headers={"Cache-Control": f"public, max-age={max_age}"})

    return router


def _require_user(principal: Any) -> None:
    if principal.principal_type != PrincipalType.user:
        raise Forbidden("Only users have login sessions.")


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


async def _introspecting_tenant(request: Request, session: Any, auth: Any) -> str | None:
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
