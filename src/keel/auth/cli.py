"""``keel auth ...``: administer identities, roles, keys and signing keys from a shell."""

from __future__ import annotations

import shlex
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Annotated

import typer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.dependencies import AUTH_RESOURCE
from keel.auth.models import PrincipalType, ServiceAccount, User
from keel.auth.service import AuthService
from keel.core.db import utcnow
from keel.core.errors import KeelError
from keel.core.tenancy import bind_tenant, get_tenant_by_slug

app = typer.Typer(
    help="Administer users, service accounts, API keys, roles and signing keys.",
    no_args_is_help=True,
)

TenantOption = Annotated[str, typer.Option(help="Tenant slug.")]
PasswordStdinOption = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
]


@asynccontextmanager
async def _auth_session(tenant: str) -> AsyncIterator[tuple[AuthService, AsyncSession, str]]:
    from keel.core.commands import EXIT_USAGE, fail, settings_or_exit, started_context

    settings = settings_or_exit()
    async with started_context(settings) as context:
        auth = context.resources.get(AUTH_RESOURCE)
        if not isinstance(auth, AuthService):
            fail("the auth service is not enabled (KEEL_SERVICES)", EXIT_USAGE)
        async with context.database.session() as session:
            tenant_id = (await get_tenant_by_slug(session, tenant)).id
            bind_tenant(session, tenant_id)
            yield auth, session, tenant_id


def _run(main: Callable[[], Awaitable[None]]) -> None:
    from keel.core.commands import EXIT_USAGE, fail, run_database_command

    async def guarded() -> None:
        try:
            await main()
        except KeelError as exc:
            fail(str(exc), EXIT_USAGE)

    run_database_command(guarded)


async def _principal(
    session: AsyncSession, user: str | None, service_account: str | None
) -> tuple[PrincipalType, str]:
    from keel.core.commands import EXIT_USAGE, fail

    if (user is None) == (service_account is None):
        fail("name exactly one of --user or --service-account", EXIT_USAGE)
    if user is not None:
        user_id = await session.scalar(select(User.id).where(User.username == user))
        if user_id is None:
            fail(f"no user {user!r} in this tenant", EXIT_USAGE)
        return PrincipalType.user, user_id
    account_id = await session.scalar(
        select(ServiceAccount.id).where(ServiceAccount.name == service_account)
    )
    if account_id is None:
        fail(f"no service account {service_account!r} in this tenant", EXIT_USAGE)
    return PrincipalType.service_account, account_id


def _read_password(password_stdin: bool, *, command: str, otherwise: str = "") -> str:
    """The first line of stdin with ``--password-stdin``, else typed twice at the terminal.
    Never a command-line argument: ``ps`` shows those to every user of the host."""
    from keel.core.commands import EXIT_USAGE, fail

    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        fail(
            f"no terminal to type the password at: pipe it into {command} --password-stdin"
            f"{otherwise}",
            EXIT_USAGE,
        )
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@app.command("create-user")
def create_user(
    username: str,
    email: Annotated[str | None, typer.Option()] = None,
    role: Annotated[list[str] | None, typer.Option(help="Role to assign (repeatable).")] = None,
    password_stdin: PasswordStdinOption = False,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="Create without a password.")
    ] = False,
    tenant: TenantOption = "default",
) -> None:
    """Create a user (prompting for the password unless --password-stdin/--no-password)."""
    password = (
        None
        if no_password
        else _read_password(
            password_stdin,
            command=f"keel auth create-user {shlex.quote(username)}",
            otherwise=", or create the user with --no-password",
        )
    )

    async def main() -> None:
        async with _auth_session(tenant) as (auth, session, tenant_id):
            user = await auth.create_user(
                session, tenant_id, username=username, email=email, password=password
            )
            for name in role or []:
                await auth.assign_role(session, tenant_id, name, PrincipalType.user, user.id)
        typer.echo(f"user {username}: created ({user.id})")

    _run(main)


@app.command("set-password")
def set_password(
    username: str,
    password_stdin: PasswordStdinOption = False,
    tenant: TenantOption = "default",
) -> None:
    """Set a user's password (ends the user's sessions)."""
    password = _read_password(
        password_stdin, command=f"keel auth set-password {shlex.quote(username)}"
    )

    async def main() -> None:
        async with _auth_session(tenant) as (auth, session, tenant_id):
            _, user_id = await _principal(session, username, None)
            await auth.set_password(session, tenant_id, user_id, password)
        typer.echo(f"user {username}: password set")

    _run(main)


@app.command("create-service-account")
def create_service_account(
    name: str,
    role: Annotated[list[str] | None, typer.Option(help="Role to assign (repeatable).")] = None,
    tenant: TenantOption = "default",
) -> None:
    """Create a service account and print its client credentials once."""

    async def main() -> None:
        async with _auth_session(tenant) as (auth, session, tenant_id):
            account, secret = await auth.create_service_account(session, tenant_id, name=name)
            for role_name in role or []:
                await auth.assign_role(
                    session, tenant_id, role_name, PrincipalType.service_account, account.id
                )
        typer.echo(f"service account {name}: created ({account.id})")
        typer.echo(f"client_id: {secret.id}")
        typer.echo(f"client_secret (shown once, store it now): {secret.secret}")

    _run(main)


@app.command("create-client")
def create_client(
    name: str,
    redirect_uri: Annotated[
        list[str], typer.Option(help="Exact redirect URI the client may use (repeatable).")
    ],
    public: Annotated[
        bool, typer.Option(help="A public client (no secret; PKCE only), e.g. an SPA or CLI.")
    ] = False,
    tenant: TenantOption = "default",
) -> None:
    """Register an application for the authorization code flow and print its credentials."""

    async def main() -> None:
        async with _auth_session(tenant) as (auth, session, tenant_id):
            issued = await auth.create_application_client(
                session, tenant_id, name=name, redirect_uris=redirect_uri, is_public=public
            )
        typer.echo(f"client {name}: created ({'public' if public else 'confidential'})")
        typer.echo(f"client_id: {issued.id}")
        if issued.secret:
            typer.echo(f"client_secret (shown once, store it now): {issued.secret}")

    _run(main)


@app.command("create-api-key")
def create_api_key(
    name: Annotated[str, typer.Option(help="What the key is for.")],
    user: Annotated[str | None, typer.Option()] = None,
    service_account: Annotated[str | None, typer.Option()] = None,
    scope: Annotated[list[str] | None, typer.Option(help="Limit to a permission.")] = None,
    expires_days: Annotated[int | None, typer.Option(min=1)] = None,
    tenant: TenantOption = "default",
) -> None:
    """Create an API key for a user or service account and print it once."""

    async def main() -> None:
        async with _auth_session(tenant) as (auth, session, tenant_id):
            kind, principal_id = await _principal(session, user, service_account)
            expires = utcnow() + timedelta(days=expires_days) if expires_days else None
            key, token = await auth.create_api_key(
                session,
                tenant_id,
                name=name,
                principal_type=kind,
                principal_id=principal_id,
                scopes=scope or [],
                expires_at=expires,
            )
        typer.echo(f"api key {key.id}: created")
        typer.echo(f"key (shown once, store it now): {token}")

    _run(main)


@app.command("create-role")
def create_role(
    name: str,
    permission: Annotated[list[str], typer.Option(help="service:resource:action (repeatable).")],
    tenant: TenantOption = "default",
) -> None:
    """Create a role holding permissions (wildcards allowed: secrets:*:read)."""

    async def main() -> None:
        async with _auth_session(tenant) as (auth, session, tenant_id):
            await auth.create_role(session, tenant_id, name=name, permissions=permission)
        typer.echo(f"role {name}: created")

    _run(main)


@app.command("assign-role")
def assign_role(
    role: str,
    user: Annotated[str | None, typer.Option()] = None,
    service_account: Annotated[str | None, typer.Option()] = None,
    tenant: TenantOption = "default",
) -> None:
    """Give a user or service account a role."""

    async def main() -> None:
        async with _auth_session(tenant) as (auth, session, tenant_id):
            kind, principal_id = await _principal(session, user, service_account)
            await auth.assign_role(session, tenant_id, role, kind, principal_id)
        typer.echo(f"role {role}: assigned")

    _run(main)


@app.command("restore-admin")
def restore_admin(
    user: Annotated[str, typer.Option(help="Username who will hold the admin role.")] = "admin",
    tenant: TenantOption = "default",
) -> None:
    """Break glass: give the built-in admin role every permission again and assign it to a
    user (run on the host; needs database access, not an API key)."""

    async def main() -> None:
        from keel.auth.service import ADMIN_ROLE
        from keel.auth.service.bootstrap import restore_admin as restore

        async with _auth_session(tenant) as (auth, session, tenant_id):
            await restore(auth, session, tenant_id, user)
        typer.echo(f"role {ADMIN_ROLE}: restored to '*', held by {user}")

    _run(main)


@app.command("rotate-signing-key")
def rotate_signing_key() -> None:
    """Promote the published next signing key and publish a new next key."""

    async def main() -> None:
        async with _auth_session("default") as (auth, session, _tenant_id):
            kid = await auth.rotate_signing_key(session)
        typer.echo(f"signing key {kid}: active")

    _run(main)


@app.command("list-users")
def list_users(tenant: TenantOption = "default") -> None:
    """List a tenant's users."""

    async def main() -> None:
        async with _auth_session(tenant) as (auth, session, tenant_id):
            users = await auth.list_users(session, tenant_id)
            for user in users:
                typer.echo(f"{user.id}  {user.username:<24} {user.status:<9} {user.email or ''}")

    _run(main)
