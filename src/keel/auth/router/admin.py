"""Administering a tenant's identities: ``/auth/v1/users``, ``/service-accounts``,
``/clients``, ``/api-keys``, ``/roles`` and ``/signing-keys``.

Every change names its caller with ``actor: CallerActor`` (principal, address, user agent).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response

from keel.auth import schemas
from keel.auth.auth import (
    ApiKeyCreator,
    ApiKeyReader,
    ApiKeyRevoker,
    ClientCreator,
    RoleAssigner,
    RoleCreator,
    RoleDeleter,
    RoleReader,
    RoleUpdater,
    ServiceAccountCreator,
    SigningKeyRotator,
    UserCreator,
    UserReader,
    UserUpdater,
)
from keel.auth.dependencies import (
    Auth,
    CallerActor,
    CurrentPrincipal,
    no_store,
)
from keel.auth.models import PrincipalType
from keel.core.deps import DbSession
from keel.core.errors import Forbidden, ValidationFailed
from keel.core.versioned import with_etag

router = APIRouter(tags=["auth"])

# -- users ------------------------------------------------------------------------------------


@router.post(
    "/users",
    status_code=201,
    response_model=schemas.User,
)
async def create_user(
    body: schemas.UserCreate,
    principal: UserCreator,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> Any:
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
)
async def list_users(principal: UserReader, session: DbSession, auth: Auth) -> Any:
    return await auth.list_users(session, principal.tenant_id)


@router.get(
    "/users/{user_id}",
    response_model=schemas.User,
)
async def get_user(
    user_id: str,
    response: Response,
    principal: UserReader,
    session: DbSession,
    auth: Auth,
) -> Any:
    user = await auth.get_user(session, principal.tenant_id, user_id)
    return with_etag(user, response)


@router.patch(
    "/users/{user_id}",
    response_model=schemas.User,
)
async def update_user(
    user_id: str,
    body: schemas.UserUpdate,
    response: Response,
    principal: UserUpdater,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
    if_match: Annotated[str | None, Header()] = None,
) -> Any:
    user = await auth.update_user(
        session,
        principal.tenant_id,
        user_id,
        if_match=if_match,
        changes=body.model_dump(exclude_unset=True),
        actor=actor,
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
    actor: CallerActor,
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
        actor=actor,
        grantor=principal,
    )


# -- service accounts and application clients -------------------------------------------------


@router.post(
    "/service-accounts",
    status_code=201,
    response_model=schemas.ServiceAccountCreated,
)
async def create_service_account(
    body: schemas.ServiceAccountCreate,
    response: Response,
    principal: ServiceAccountCreator,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> schemas.ServiceAccountCreated:
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


@router.post(
    "/clients",
    status_code=201,
    response_model=schemas.ClientCreated,
)
async def create_client(
    body: schemas.ClientCreate,
    response: Response,
    principal: ClientCreator,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> schemas.ClientCreated:
    """Register an application for the authorization code flow (PKCE required)."""
    issued = await auth.create_application_client(
        session,
        principal.tenant_id,
        name=body.name,
        redirect_uris=body.redirect_uris,
        is_public=body.is_public,
        actor=actor,
    )
    no_store(response)
    return schemas.ClientCreated(
        client_id=issued.id,
        name=body.name,
        redirect_uris=body.redirect_uris,
        is_public=body.is_public,
        client_secret=issued.secret or None,
    )


# -- API keys ---------------------------------------------------------------------------------


@router.post(
    "/api-keys",
    status_code=201,
    response_model=schemas.ApiKeyCreated,
)
async def create_api_key(
    body: schemas.ApiKeyCreate,
    response: Response,
    principal: ApiKeyCreator,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
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
        actor=actor,
        grantor=principal,
    )
    no_store(response)
    return schemas.ApiKeyCreated.model_validate(
        {**schemas.ApiKey.model_validate(key).model_dump(), "key": token}
    )


@router.get(
    "/api-keys",
    response_model=list[schemas.ApiKey],
)
async def list_api_keys(principal: ApiKeyReader, session: DbSession, auth: Auth) -> Any:
    return await auth.list_api_keys(session, principal.tenant_id)


@router.delete(
    "/api-keys/{key_id}",
    status_code=204,
)
async def revoke_api_key(
    key_id: str,
    principal: ApiKeyRevoker,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> None:
    await auth.revoke_api_key(session, principal.tenant_id, key_id, actor)


# -- roles ------------------------------------------------------------------------------------


@router.post(
    "/roles",
    status_code=201,
    response_model=schemas.Role,
)
async def create_role(
    body: schemas.RoleCreate,
    principal: RoleCreator,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> Any:
    return await auth.create_role(
        session,
        principal.tenant_id,
        name=body.name,
        permissions=body.permissions,
        description=body.description,
        actor=actor,
        grantor=principal,
    )


@router.get(
    "/roles",
    response_model=list[schemas.Role],
)
async def list_roles(principal: RoleReader, session: DbSession, auth: Auth) -> Any:
    return await auth.list_roles(session, principal.tenant_id)


@router.get(
    "/roles/{name}",
    response_model=schemas.Role,
)
async def get_role(
    name: str,
    response: Response,
    principal: RoleReader,
    session: DbSession,
    auth: Auth,
) -> Any:
    role = await auth.get_role(session, principal.tenant_id, name)
    return with_etag(role, response)


@router.put(
    "/roles/{name}",
    response_model=schemas.Role,
)
async def update_role(
    name: str,
    body: schemas.RoleUpdate,
    response: Response,
    principal: RoleUpdater,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
    if_match: Annotated[str | None, Header()] = None,
) -> Any:
    role = await auth.update_role(
        session,
        principal.tenant_id,
        name,
        permissions=body.permissions,
        if_match=if_match,
        actor=actor,
        grantor=principal,
    )
    return with_etag(role, response)


@router.delete("/roles/{name}", status_code=204)
async def delete_role(
    name: str,
    principal: RoleDeleter,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> None:
    await auth.delete_role(session, principal.tenant_id, name, actor, grantor=principal)


@router.post(
    "/roles/{name}/assignments",
    status_code=204,
)
async def assign_role(
    name: str,
    body: schemas.RoleAssignmentCreate,
    principal: RoleAssigner,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> None:
    await auth.assign_role(
        session,
        principal.tenant_id,
        name,
        body.principal_type,
        body.principal_id,
        actor,
        grantor=principal,
    )


@router.delete(
    "/roles/{name}/assignments/{principal_type}/{principal_id}",
    status_code=204,
)
async def unassign_role(
    name: str,
    principal_type: PrincipalType,
    principal_id: str,
    principal: RoleAssigner,
    session: DbSession,
    auth: Auth,
    actor: CallerActor,
) -> None:
    await auth.unassign_role(
        session,
        principal.tenant_id,
        name,
        principal_type,
        principal_id,
        actor,
        grantor=principal,
    )


# -- signing keys -----------------------------------------------------------------------------


@router.post(
    "/signing-keys/rotate",
    response_model=schemas.RotatedKey,
)
async def rotate_signing_key(
    principal: SigningKeyRotator, session: DbSession, auth: Auth, actor: CallerActor
) -> schemas.RotatedKey:
    """Promote the published next key to signing and publish a new next key."""
    return schemas.RotatedKey(
        active_kid=await auth.rotate_signing_key(session, actor, tenant_id=principal.tenant_id)
    )
