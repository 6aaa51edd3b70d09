"""``keel flags ...``: list, define, show and toggle flags, manage environments and list
stale flags from a shell.

The CLI talks to the database directly with the server's settings, so whoever runs it is the
platform operator; its changes are audited as actor ``system``/``keel`` with the
operating-system account as display name, and published on the change stream like the API's
(watchers reload). Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.commands import (
    fail_usage,
    format_datetime,
    operator_actor,
    print_json,
    run_in_tenant,
)
from keel.core.errors import KeelError
from keel.core.tenancy import DEFAULT_TENANT
from keel.flags import service

app = typer.Typer(
    help="Feature flags: list, define, show, toggle (kill switch), stale flags.",
    no_args_is_help=True,
)
envs_app = typer.Typer(help="Flags environments.", no_args_is_help=True)
app.add_typer(envs_app, name="envs")

TenantOption = Annotated[str, typer.Option(help="Tenant slug.")]
KeyArgument = Annotated[str, typer.Argument(help="Flag key, e.g. checkout-v2.", show_default=False)]
EnvArgument = Annotated[
    str, typer.Argument(help="Environment, e.g. production.", show_default=False)
]


def parse_variation(text: str) -> dict[str, Any]:
    """``ID=VALUE`` (the value as JSON when it parses, else a string) as a variation."""
    variation_id, equals, raw = text.partition("=")
    if not equals or not variation_id:
        raise ValueError(f"{text!r} is not ID=VALUE")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return {"id": variation_id, "value": value}


def describe(error: KeelError) -> str:
    """One line: the error and the engine's problems, if any."""
    text = str(error.detail or error)
    problems = error.extensions.get("problems")
    if isinstance(problems, list) and problems and not text.endswith(str(problems[0])):
        text = f"{text} ({'; '.join(str(problem) for problem in problems[:5])})"
    return text


# -- environments ---------------------------------------------------------------------------


@envs_app.command("create")
def create_environment(
    key: EnvArgument,
    description: Annotated[str, typer.Option(help="What the environment is.")] = "",
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Create an environment (every flag starts off there)."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        await service.create_environment(
            session, tenant_id, key, description=description, actor=operator_actor()
        )
        typer.echo(f"environment {key} created (tenant {tenant})")

    run_in_tenant(tenant, work, describe=describe)


@envs_app.command("list")
def list_environments(tenant: TenantOption = DEFAULT_TENANT) -> None:
    """List the environments and their snapshot versions."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        for environment in await service.list_environments(session, tenant_id):
            typer.echo(
                f"{environment.key}\tversion {environment.version}\t{environment.description}"
            )

    run_in_tenant(tenant, work, describe=describe)


# -- flags ----------------------------------------------------------------------------------


@app.command("list")
def list_flags(
    tag: Annotated[str | None, typer.Option(help="Only flags with this tag.")] = None,
    archived: Annotated[bool, typer.Option(help="Include archived flags.")] = False,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """List flags: key, type, variations, tags, owner."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        for flag in await service.list_flags(
            session, tenant_id, include_archived=archived, tag=tag
        ):
            variations = ",".join(str(entry.get("id")) for entry in flag.variations)
            marks = " (archived)" if flag.archived else ""
            typer.echo(
                f"{flag.key}{marks}\t{flag.type}\t{variations}\t{','.join(flag.tags)}\t{flag.owner}"
            )

    run_in_tenant(tenant, work, describe=describe)


@app.command("create")
def create_flag(
    key: KeyArgument,
    flag_type: Annotated[
        str, typer.Option("--type", help="boolean, string, number or json.")
    ] = "boolean",
    variation: Annotated[
        list[str] | None,
        typer.Option(help="ID=VALUE, repeated, in order (default for boolean: on, off)."),
    ] = None,
    description: Annotated[str, typer.Option(help="What the flag is for.")] = "",
    tag: Annotated[list[str] | None, typer.Option(help="A tag, repeated.")] = None,
    owner: Annotated[str, typer.Option(help="Who owns it.")] = "",
    experiment: Annotated[bool, typer.Option(help="Send exposure events (A/B).")] = False,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Define a flag; it starts off in every environment."""
    if flag_type not in ("boolean", "string", "number", "json"):
        fail_usage(f"--type is boolean, string, number or json, not {flag_type!r}")
    try:
        variations = [parse_variation(text) for text in variation or []] or None
    except ValueError as error:
        fail_usage(f"--variation: {error}")

    async def work(session: AsyncSession, tenant_id: str) -> None:
        flag = await service.create_flag(
            session,
            tenant_id,
            key,
            flag_type=flag_type,
            variations=variations,
            description=description,
            tags=tag or [],
            owner=owner,
            experiment=experiment,
            actor=operator_actor(),
        )
        ids = ", ".join(str(entry["id"]) for entry in flag.variations)
        typer.echo(f"flag {key} created ({flag_type}: {ids}), off in every environment")

    run_in_tenant(tenant, work, describe=describe)


@app.command("show")
def show_flag(
    key: KeyArgument,
    env: Annotated[str | None, typer.Option("--env", help="Only this environment's state.")] = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """The flag's definition and its state in each environment, as JSON."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        flag = await service.get_flag(session, tenant_id, key)
        environments = (
            [env]
            if env is not None
            else [item.key for item in await service.list_environments(session, tenant_id)]
        )
        states = {}
        for environment in environments:
            view = await service.get_state(session, tenant_id, environment, key)
            document = view.document()
            document.pop("environment")
            document.pop("key")
            states[environment] = document
        print_json(
            {**service.definition_document(flag), "version": flag.version, "environments": states}
        )

    run_in_tenant(tenant, work, describe=describe)


@app.command("toggle")
def toggle(
    env: EnvArgument,
    key: KeyArgument,
    state: Annotated[str, typer.Argument(help="on or off.", show_default=False)],
    comment: Annotated[str, typer.Option("--comment", "-m", help="Why (audited).")] = "",
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Turn a flag on or off in one environment: the kill switch."""
    if state not in ("on", "off"):
        fail_usage(f"the state is on or off, not {state!r}")

    async def work(session: AsyncSession, tenant_id: str) -> None:
        view = await service.toggle(
            session, tenant_id, env, key, on=state == "on", comment=comment, actor=operator_actor()
        )
        typer.echo(
            f"{key} is {state} in {env} (state version {view.state.version}, "
            f"snapshot version {view.environment.version})"
        )

    run_in_tenant(tenant, work, describe=describe)


@app.command("stale")
def stale(
    env: EnvArgument,
    days: Annotated[int, typer.Option(help="Not evaluated for this many days.", min=1)] = 30,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Flags not evaluated for DAYS days, and flags fully rolled out."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        found = await service.stale_flags(session, tenant_id, env, days=days)
        if not found:
            typer.echo(f"no stale flags in {env}")
        for flag in found:
            last = format_datetime(flag.last_evaluated_at) if flag.last_evaluated_at else "never"
            serving = f"\tserving {flag.serving}" if flag.serving else ""
            typer.echo(f"{flag.key}\t{','.join(flag.reasons)}\tlast evaluated {last}{serving}")

    run_in_tenant(tenant, work, describe=describe)
