"""``keel audit ...``: check the tamper-evident log from a shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import select

from keel.core.tenancy import Tenant

app = typer.Typer(help="Check the tamper-evident audit log.", no_args_is_help=True)


@app.command()
def verify(
    tenant: Annotated[str | None, typer.Option(help="Tenant slug (default: every tenant).")] = None,
    keys: Annotated[
        Path | None,
        typer.Option(
            help="A JWK set of trusted signing keys (saved from /audit/v1/keys); "
            "default: the keys stored in the database."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON report per tenant.")] = False,
) -> None:
    """Recompute each tenant's log from its stored rows and check every signed tree head.

    Exits 0 when every log verifies, 1 when any was changed, naming the first divergent
    event.
    """
    from keel.audit.verify import verify_tenant
    from keel.cli import (
        EXIT_FAILURE,
        EXIT_USAGE,
        _run_database_command,
        fail,
        settings_or_exit,
        started_context,
    )
    from keel_client.audit import public_keys_from_jwks

    trusted = None
    if keys is not None:
        try:
            trusted = public_keys_from_jwks(json.loads(keys.read_text()))
        except (OSError, ValueError, KeyError) as error:
            fail(f"cannot read trusted keys from {keys}: {error}", EXIT_USAGE)
        if not trusted:
            fail(f"{keys} holds no Ed25519 key", EXIT_USAGE)
    settings = settings_or_exit()

    async def main() -> None:
        async with started_context(settings) as context:
            async with context.database.session() as session:
                statement = select(Tenant).order_by(Tenant.slug)
                if tenant is not None:
                    statement = statement.where(Tenant.slug == tenant)
                tenants = list(await session.scalars(statement))
            if not tenants:
                fail(f"no tenant {tenant!r}", EXIT_USAGE)
            failed = False
            for row in tenants:
                async with context.database.session() as session:
                    report = await verify_tenant(session, row.id, trusted)
                failed = failed or not report.ok
                if as_json:
                    typer.echo(json.dumps({"slug": row.slug, **report.to_json()}))
                    continue
                status = "ok" if report.ok else "TAMPERED"
                typer.echo(
                    f"{row.slug}: {status} ({report.tree_size} events, "
                    f"{report.heads_checked} signed heads)"
                )
                if not report.ok:
                    typer.echo(f"  first divergent event: {report.first_divergent_event}")
                    for problem in report.problems:
                        typer.echo(f"  - {problem}")
            if failed:
                raise typer.Exit(EXIT_FAILURE)

    _run_database_command(main)
