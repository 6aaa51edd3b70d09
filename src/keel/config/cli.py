"""``keel config ...``: read and change applications' configuration from a shell.

The CLI talks to the database directly with the server's settings, so whoever runs it is the
platform operator; its changes are audited as actor ``system``/``keel`` with the
operating-system account as display name, and published on the change stream like the API's.

A value on the command line is read as JSON when it parses (``3``, ``true``,
``{"a": 1}``, ``"quoted text"``) and as a plain string otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from keel.config import service
from keel.config.service.validation import Diff
from keel.core.commands import (
    fail_usage,
    format_datetime,
    operator_actor,
    print_json,
    run_in_tenant,
)
from keel.core.errors import KeelError
from keel.core.http import PageRequest, etag_for
from keel.core.tenancy import DEFAULT_TENANT

app = typer.Typer(
    help="Read, change, compare, roll back and promote applications' configuration.",
    no_args_is_help=True,
)
apps_app = typer.Typer(help="Config applications.", no_args_is_help=True)
envs_app = typer.Typer(help="Environments of a config application.", no_args_is_help=True)
app.add_typer(apps_app, name="apps")
app.add_typer(envs_app, name="envs")

TenantOption = Annotated[str, typer.Option(help="Tenant slug.")]
AppArgument = Annotated[str, typer.Argument(help="Application, e.g. billing.", show_default=False)]
EnvArgument = Annotated[
    str, typer.Argument(help="Environment, e.g. production.", show_default=False)
]
MessageOption = Annotated[str, typer.Option("--message", "-m", help="Why (kept in history).")]


def parse_value(text: str) -> Any:
    """JSON when ``text`` parses as JSON, the text itself otherwise."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` arguments as a change set's ``set``; ``ValueError`` names a bad one."""
    values: dict[str, Any] = {}
    for assignment in assignments:
        key, equals, raw = assignment.partition("=")
        if not equals or not key:
            raise ValueError(f"{assignment.split('=')[0]!r} is not KEY=VALUE")
        if key in values:
            raise ValueError(f"{key} is set twice")
        values[key] = parse_value(raw)
    return values


def describe(error: KeelError) -> str:
    """One line: the error and, for schema refusals, each failing path and rule."""
    text = str(error.detail or error)
    errors = error.extensions.get("errors")
    if isinstance(errors, list) and errors:
        parts = []
        for entry in errors:
            if isinstance(entry, dict) and "path" in entry:
                parts.append(f"{entry['path']} ({entry.get('rule')}: {entry.get('message')})")
            elif isinstance(entry, dict) and "message" in entry:
                parts.append(str(entry["message"]))
        text = f"{text} {'; '.join(parts)}"
    environments = error.extensions.get("environments")
    if isinstance(environments, list) and environments:
        names = ", ".join(str(entry.get("environment")) for entry in environments)
        text = f"{text} (failing: {names})"
    return text


def print_diff(diff: Diff) -> None:
    if diff.is_empty:
        typer.echo("no differences")
        return
    for key, value in diff.added.items():
        typer.echo(f"+ {key} = {json.dumps(value, ensure_ascii=False)}")
    for key, value in diff.removed.items():
        typer.echo(f"- {key} = {json.dumps(value, ensure_ascii=False)}")
    for key, change in diff.changed.items():
        before = json.dumps(change["before"], ensure_ascii=False)
        after = json.dumps(change["after"], ensure_ascii=False)
        typer.echo(f"~ {key}: {before} -> {after}")


# -- applications and environments ------------------------------------------------------------


@apps_app.command("create")
def create_application(
    name: AppArgument,
    schema: Annotated[
        Path | None, typer.Option(help="A JSON Schema file for every environment's values.")
    ] = None,
    description: Annotated[str, typer.Option(help="What the application is.")] = "",
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Create an application, optionally with a JSON Schema."""
    json_schema = None
    if schema is not None:
        try:
            json_schema = json.loads(schema.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            fail_usage(f"cannot read {schema}: {getattr(error, 'strerror', None) or error}")
        except ValueError as error:
            fail_usage(f"{schema} is not JSON: {error}")

    async def work(session: AsyncSession, tenant_id: str) -> None:
        await service.create_application(
            session,
            tenant_id,
            name,
            description=description,
            json_schema=json_schema,
            actor=operator_actor(),
        )
        typer.echo(f"application {name} created (tenant {tenant})")

    run_in_tenant(tenant, work, describe=describe)


@apps_app.command("list")
def list_applications(tenant: TenantOption = DEFAULT_TENANT) -> None:
    """List the tenant's applications."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        for application in await service.list_applications(session, tenant_id):
            schema = "schema" if application.json_schema is not None else "no schema"
            typer.echo(f"{application.name}\t{schema}\t{application.description}")

    run_in_tenant(tenant, work, describe=describe)


@envs_app.command("create")
def create_environment(
    application: AppArgument, name: EnvArgument, tenant: TenantOption = DEFAULT_TENANT
) -> None:
    """Create an environment (revision 1, no values)."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        await service.create_environment(
            session, tenant_id, application, name, actor=operator_actor()
        )
        typer.echo(f"environment {application}/{name} created at revision 1")

    run_in_tenant(tenant, work, describe=describe)


@envs_app.command("list")
def list_environments(application: AppArgument, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """List an application's environments and their revisions."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        for environment in await service.list_environments(session, tenant_id, application):
            typer.echo(f"{environment.name}\trevision {environment.revision}")

    run_in_tenant(tenant, work, describe=describe)


# -- values -----------------------------------------------------------------------------------


@app.command("get")
def get(
    application: AppArgument,
    environment: EnvArgument,
    key: Annotated[str | None, typer.Argument(help="One key (default: all).")] = None,
    revision: Annotated[
        int | None, typer.Option(min=1, help="An earlier revision (default: current).")
    ] = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Print the values (or one key's value) as JSON. Secret references stay references."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        snapshot = await service.read_snapshot(
            session, tenant_id, application, environment, revision
        )
        if key is None:
            print_json(snapshot.values)
            return
        if key not in snapshot.values:
            fail_usage(f"no key {key!r} in {application}/{environment}")
        print_json(snapshot.values[key])

    run_in_tenant(tenant, work, describe=describe)


@app.command("set")
def set_values(
    application: AppArgument,
    environment: EnvArgument,
    assignments: Annotated[
        list[str] | None, typer.Argument(help="KEY=VALUE (VALUE read as JSON when it parses).")
    ] = None,
    unset: Annotated[list[str] | None, typer.Option("--unset", help="A key to remove.")] = None,
    message: MessageOption = "",
    if_revision: Annotated[
        int | None,
        typer.Option(min=1, help="Refuse unless the environment is still at this revision."),
    ] = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Set and unset keys in one new revision (all or none)."""
    try:
        values = parse_assignments(assignments or [])
    except ValueError as error:
        fail_usage(str(error))
    if not values and not unset:
        fail_usage("nothing to change: give KEY=VALUE arguments or --unset KEY")

    async def work(session: AsyncSession, tenant_id: str) -> None:
        outcome = await service.write_values(
            session,
            tenant_id,
            application,
            environment,
            set_values=values,
            unset=unset or [],
            message=message,
            if_match=etag_for(if_revision) if if_revision is not None else None,
            actor=operator_actor(),
        )
        if outcome.created:
            typer.echo(f"{application}/{environment}: revision {outcome.revision.number}")
        else:
            typer.echo(
                f"{application}/{environment}: unchanged at revision {outcome.revision.number}"
            )

    run_in_tenant(tenant, work, describe=describe)


# -- history ----------------------------------------------------------------------------------


@app.command("history")
def history(
    application: AppArgument,
    environment: EnvArgument,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Newest revisions shown.")] = 20,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """The newest revisions: number, time, author, operation, keys changed and message."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        _, current = await service.environment_revision(
            session, tenant_id, application, environment
        )
        cursor = None
        if current > limit:
            from keel.core.http import encode_cursor

            cursor = encode_cursor([current - limit])
        rows, _ = await service.history(
            session, tenant_id, application, environment, PageRequest(cursor, limit)
        )
        for row in reversed(rows):
            author = f"{row.author_type}:{row.author_id}" if row.author_type else "-"
            changed = [
                *row.changes.get("set", []),
                *(f"-{k}" for k in row.changes.get("unset", [])),
            ]
            source = f" ({row.source})" if row.source else ""
            typer.echo(
                f"{row.number}\t{format_datetime(row.created_at)}\t{author}\t"
                f"{row.operation}{source}\t{','.join(changed) or '-'}\t{row.message}"
            )

    run_in_tenant(tenant, work, describe=describe)


@app.command("diff")
def diff(
    application: AppArgument,
    environment: EnvArgument,
    from_revision: Annotated[int, typer.Argument(min=1, help="From this revision.")],
    to_revision: Annotated[
        int | None, typer.Argument(min=1, help="To this revision (default: current).")
    ] = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Key-level differences between two revisions (+ added, - removed, ~ changed)."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        target = to_revision
        if target is None:
            _, target = await service.environment_revision(
                session, tenant_id, application, environment
            )
        print_diff(
            await service.diff_revisions(
                session, tenant_id, application, environment, from_revision, target
            )
        )

    run_in_tenant(tenant, work, describe=describe)


@app.command("rollback")
def rollback(
    application: AppArgument,
    environment: EnvArgument,
    revision: Annotated[int, typer.Argument(min=1, help="The revision whose values return.")],
    message: MessageOption = "",
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """A new revision holding the values of an earlier one."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        outcome = await service.rollback(
            session,
            tenant_id,
            application,
            environment,
            revision,
            message=message,
            actor=operator_actor(),
        )
        state = "revision" if outcome.created else "unchanged at revision"
        typer.echo(f"{application}/{environment}: {state} {outcome.revision.number}")

    run_in_tenant(tenant, work, describe=describe)


@app.command("promote")
def promote(
    application: AppArgument,
    source: Annotated[str, typer.Argument(help="From this environment.", show_default=False)],
    target: Annotated[str, typer.Argument(help="To this environment.", show_default=False)],
    key: Annotated[list[str] | None, typer.Option("--key", help="Only this key.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Apply the previewed diff.")] = False,
    message: MessageOption = "",
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Show what promoting SOURCE to TARGET would change; apply it with --yes."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        keys = key or None
        preview = await service.promote(
            session, tenant_id, application, source, target, keys=keys, actor=operator_actor()
        )
        typer.echo(
            f"{application}: {source}@{preview.source_revision} -> "
            f"{target}@{preview.target_revision}"
        )
        print_diff(preview.diff)
        if preview.diff.is_empty:
            return
        if not yes:
            typer.echo("not applied: run again with --yes to apply")
            return
        applied = await service.promote(
            session,
            tenant_id,
            application,
            source,
            target,
            keys=keys,
            confirm=True,
            if_match=etag_for(preview.target_revision),
            source_revision=preview.source_revision,
            message=message,
            actor=operator_actor(),
        )
        typer.echo(f"applied: {application}/{target} revision {applied.target_revision}")

    run_in_tenant(tenant, work, describe=describe)
