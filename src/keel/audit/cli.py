"""``keel audit ...``: check the tamper-evident log and apply retention from a shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import select

from keel.core.tenancy import Tenant

app = typer.Typer(
    help="Check the tamper-evident audit log; erase expired documents.", no_args_is_help=True
)


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

    Exits 0 when every log verifies, 1 when any was changed, naming the first changed event
    (its leaf index and id).
    """
    from keel.audit.service.verify import verify_tenant
    from keel.core.commands import (
        EXIT_FAILURE,
        EXIT_USAGE,
        fail,
        run_database_command,
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
                typer.echo(f"{row.slug}: {report.summary()}")
                for problem in report.problems:
                    typer.echo(f"  - {problem}")
            if failed:
                raise typer.Exit(EXIT_FAILURE)

    run_database_command(main)


@app.command()
def retention(
    tenant: Annotated[str | None, typer.Option(help="Tenant slug (default: every tenant).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be erased; change nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per transaction.")] = False,
) -> None:
    """Erase the documents of events older than their category's retention period.

    Periods come from KEEL_AUDIT__RETENTION_DAYS (e.g. '{"access": 90}') and
    KEEL_AUDIT__DEFAULT_RETENTION_DAYS; 0 keeps forever. Leaves stay, so every proof still
    verifies; each erasure is recorded as an audit.retention.erase event. Exits 0, or 2 on
    bad input.
    """
    from keel.audit.service.retention import RetentionPolicy, run_retention
    from keel.core.commands import (
        EXIT_USAGE,
        fail,
        run_database_command,
        settings_or_exit,
        started_context,
    )

    settings = settings_or_exit()

    async def main() -> None:
        async with started_context(settings) as context:
            async with context.database.session() as session:
                statement = select(Tenant.id, Tenant.slug)
                if tenant is not None:
                    statement = statement.where(Tenant.slug == tenant)
                slugs = {tenant_id: slug for tenant_id, slug in await session.execute(statement)}
            if not slugs:
                fail(f"no tenant {tenant!r}", EXIT_USAGE)
            if RetentionPolicy.from_settings(settings.audit).keeps_everything:
                typer.echo(
                    "no retention period is set (KEEL_AUDIT__RETENTION_DAYS, "
                    "KEEL_AUDIT__DEFAULT_RETENTION_DAYS): every document is kept"
                )
                return
            tenant_id = next(iter(slugs)) if tenant is not None else None
            runs = await run_retention(context, tenant_id=tenant_id, dry_run=dry_run)
        for run in runs:
            slug = slugs.get(run.tenant_id, run.tenant_id)
            if as_json:
                typer.echo(json.dumps({"slug": slug, **run.to_json()}))
                continue
            verb = "would erase" if dry_run else "erased"
            details = ", ".join(
                f"{erasure.category or 'uncatalogued'}: {erasure.count} before "
                f"{erasure.cutoff:%Y-%m-%d %H:%M}Z"
                for erasure in run.erasures
            )
            more = "; more remain" if run.has_more else ""
            typer.echo(
                f"{slug}: {verb} {run.erased} documents"
                + (f" ({details})" if details else "")
                + more
            )

    run_database_command(main)
