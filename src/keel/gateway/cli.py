"""``keel gateway ...``: read, check, apply and roll back a tenant's edge policy from a shell.

The CLI talks to the database directly with the server's settings, so whoever runs it is the
platform operator; its changes are audited as actor ``system``/``keel`` with the
operating-system account as display name, and published on the change stream like the API's.
The tenant is ``--tenant``, by default the one a gateway process serves
(``KEEL_GATEWAY__TENANT``).

A policy file is JSON, or YAML when its name ends in ``.yaml``/``.yml`` (PyYAML is not a
declared dependency of Keel: without it, YAML files are refused with a one-line message).
Bad input and refused policies print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.commands import (
    fail_usage,
    format_datetime,
    operator_actor,
    print_json,
    run_in_tenant,
    settings_or_exit,
)
from keel.core.errors import KeelError
from keel.gateway import service
from keel_client.edge._model import Route

app = typer.Typer(
    help="Edge policy: show, validate, apply, list routes and revisions, roll back.",
    no_args_is_help=True,
)
#: ``keel gateway export <format>``: the policy as another proxy's configuration. Each format
#: is a command of this group (``export nginx`` below, rendered by ``keel.gateway.nginx``).
export_app = typer.Typer(
    help="Export the policy as another proxy's configuration.", no_args_is_help=True
)

TenantOption = Annotated[
    str | None,
    typer.Option(help="Tenant slug (default: KEEL_GATEWAY__TENANT, the gateway's tenant)."),
]
CommentOption = Annotated[str, typer.Option("--comment", "-m", help="Why (kept in history).")]
IfRevisionOption = Annotated[
    int | None,
    typer.Option(min=0, help="Refuse unless the policy is still at this revision."),
]
PolicyFile = Annotated[
    Path, typer.Argument(help="A policy file: JSON, or YAML (.yaml/.yml).", show_default=False)
]


def _tenant(tenant: str | None) -> str:
    return tenant or settings_or_exit().gateway.tenant


def _rules() -> service.UpstreamAddressRules:
    return service.UpstreamAddressRules.from_settings(settings_or_exit().gateway)


def describe(error: KeelError) -> str:
    """One line: the error and, for a refused policy, each problem at its field."""
    text = str(error.detail or error)
    errors = error.extensions.get("errors")
    if isinstance(errors, list) and errors:
        parts = [
            f"{'.'.join(entry.get('location', [])) or '(policy)'}: {entry.get('message')}"
            for entry in errors
            if isinstance(entry, dict)
        ]
        text = f"{text} {'; '.join(parts)}"
    routes = error.extensions.get("routes")
    if isinstance(routes, list) and routes:
        text = f"{text} (routes: {', '.join(map(str, routes))})"
    return text.replace("\n", " ")


def read_policy_file(path: Path) -> dict[str, Any]:
    """The document in ``path``; a one-line usage error (exit 2) when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        fail_usage(f"cannot read {path}: {getattr(error, 'strerror', None) or error}")
    if path.suffix.lower() in (".yaml", ".yml"):
        document = _parse_yaml(path, text)
    else:
        try:
            document = json.loads(text)
        except ValueError as error:
            fail_usage(f"{path} is not JSON: {error}")
    if not isinstance(document, dict):
        fail_usage(f'{path} does not hold a policy object ({{"upstreams": ..., "routes": ...}})')
    return document


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        fail_usage(f"{path}: YAML needs PyYAML, which is not installed; write the policy as JSON")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        fail_usage(f"{path} is not YAML: {str(error).splitlines()[0]}")


def _warn(warnings: list[dict[str, Any]]) -> None:
    for warning in warnings:
        location = ".".join(warning["location"])
        typer.echo(f"warning: {location}: {warning['message']}", err=True)


@app.command("show")
def show(
    revision: Annotated[
        int | None, typer.Option(min=1, help="An earlier revision (default: current).")
    ] = None,
    tenant: TenantOption = None,
) -> None:
    """Print the policy as JSON: {"revision", "updated_at", "policy"}."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        if revision is not None:
            row = await service.read_revision(session, tenant_id, revision)
            print_json(
                {"revision": row.revision, "updated_at": row.created_at, "policy": row.document}
            )
            return
        snapshot = await service.read_policy(session, tenant_id)
        print_json(
            {
                "revision": snapshot.revision,
                "updated_at": snapshot.updated_at,
                "policy": snapshot.policy.model_dump(mode="json"),
            }
        )

    run_in_tenant(_tenant(tenant), work, describe=describe)


@app.command("validate")
def validate(path: PolicyFile) -> None:
    """Check a policy file as a write would (no database needed): "valid", or the problems."""
    document = read_policy_file(path)
    rules = _rules()
    try:
        checked = asyncio.run(service.check_policy(document, rules))
    except KeelError as error:
        fail_usage(describe(error))
    _warn(checked.warnings)
    policy = checked.policy
    typer.echo(f"valid ({len(policy.routes)} routes, {len(policy.upstreams)} upstreams)")


@app.command("apply")
def apply(
    path: PolicyFile,
    comment: CommentOption = "",
    if_revision: IfRevisionOption = None,
    tenant: TenantOption = None,
) -> None:
    """Replace the policy with a file's: a new revision (none when nothing changed)."""
    document = read_policy_file(path)
    rules = _rules()

    async def work(session: AsyncSession, tenant_id: str) -> None:
        outcome = await service.write_policy(
            session,
            tenant_id,
            document,
            actor=operator_actor(),
            if_match=if_revision,
            comment=comment,
            rules=rules,
        )
        _warn(outcome.warnings)
        _report(outcome, "applied")

    run_in_tenant(_tenant(tenant), work, describe=describe)


@app.command("routes")
def routes(tenant: TenantOption = None) -> None:
    """List the routes: name, hosts, methods, path, upstream, auth."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        snapshot = await service.read_policy(session, tenant_id)
        rows = [_route_row(route) for route in snapshot.policy.routes]
        header = ("NAME", "HOSTS", "METHODS", "PATH", "UPSTREAM", "AUTH")
        _print_table([header, *rows])
        typer.echo(f"revision {snapshot.revision}: {len(rows)} routes")

    run_in_tenant(_tenant(tenant), work, describe=describe)


@app.command("revisions")
def revisions(
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 20,
    tenant: TenantOption = None,
) -> None:
    """List the revisions, newest first: number, when, by whom, comment."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        for row in await service.list_revisions(session, tenant_id, limit):
            when = format_datetime(row.created_at)
            typer.echo(f"{row.revision}\t{when}\t{row.created_by}\t{row.comment}")

    run_in_tenant(_tenant(tenant), work, describe=describe)


@app.command("rollback")
def rollback(
    revision: Annotated[int, typer.Argument(min=1, help="The revision to go back to.")],
    comment: CommentOption = "",
    if_revision: IfRevisionOption = None,
    tenant: TenantOption = None,
) -> None:
    """A new revision holding an earlier revision's policy (checked against today's rules)."""
    rules = _rules()

    async def work(session: AsyncSession, tenant_id: str) -> None:
        outcome = await service.rollback(
            session,
            tenant_id,
            revision,
            actor=operator_actor(),
            if_match=if_revision,
            comment=comment,
            rules=rules,
        )
        _warn(outcome.warnings)
        _report(outcome, f"rolled back to revision {revision}")

    run_in_tenant(_tenant(tenant), work, describe=describe)


def _report(outcome: service.WriteOutcome, done: str) -> None:
    snapshot = outcome.snapshot
    if not outcome.created:
        typer.echo(f"policy unchanged at revision {snapshot.revision}")
        return
    counts = f"{len(snapshot.policy.routes)} routes, {len(snapshot.policy.upstreams)} upstreams"
    typer.echo(f"policy revision {snapshot.revision} {done} ({counts})")


def _route_row(route: Route) -> tuple[str, ...]:
    path = route.path if route.match == "prefix" else f"{route.path} ({route.match})"
    return (
        route.name,
        ",".join(route.hosts) or "*",
        ",".join(route.methods) or "*",
        path,
        route.upstream or "-",
        route.auth.mode,
    )


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        typer.echo("  ".join(cells).rstrip())


@export_app.command("nginx")
def export_nginx(
    keel_url: Annotated[
        str | None,
        typer.Option(
            "--keel-url",
            help="Keel as nginx reaches it (default: KEEL_PUBLIC_URL, else host and port).",
        ),
    ] = None,
    listen: Annotated[
        str, typer.Option(help="nginx's listen parameter: 8080, 127.0.0.1:8080, ...")
    ] = "8080",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default: stdout).")
    ] = None,
    tenant: TenantOption = None,
) -> None:
    """Print the policy as an nginx configuration (http context) deciding through Keel's
    /gateway/v1/authz/nginx; what nginx cannot express is named in comments."""
    from keel.gateway.nginx import render_nginx

    settings = settings_or_exit()
    url = keel_url or settings.public_url or f"http://{settings.host}:{settings.port}"

    async def work(session: AsyncSession, tenant_id: str) -> None:
        snapshot = await service.read_policy(session, tenant_id)
        text = render_nginx(snapshot.policy, keel_url=str(url), listen=listen)
        if output is None:
            typer.echo(text, nl=False)
            return
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as error:
            fail_usage(f"cannot write {output}: {error.strerror or error}")
        routes = len(snapshot.policy.routes)
        typer.echo(f"wrote {output} (revision {snapshot.revision}, {routes} routes)", err=True)

    run_in_tenant(_tenant(tenant), work, describe=describe)


app.add_typer(export_app, name="export")
