"""``keel apply [PATH] [--dry-run] [--tenant SLUG]``: make Keel match a ``keel.toml``."""

from __future__ import annotations

from pathlib import Path

import typer

from keel.core.commands import (
    EXIT_USAGE,
    fail,
    operator_actor,
    run_database_command,
    settings_or_exit,
)


def apply_manifest(path: Path, *, dry_run: bool, tenant: str) -> None:
    """Check the manifest, print the diff and (unless ``dry_run``) apply it in one unit of
    work; a problem is one line each on stderr and exit code 2, and nothing is applied."""
    from keel.core.errors import KeelError
    from keel.core.tenancy import bind_tenant, get_tenant_by_slug
    from keel.manifest.kinds import plan_changes
    from keel.manifest.load import load_manifest
    from keel.manifest.loaded import ManifestError, describe_error
    from keel.manifest.plan import Target, apply_changes, summary

    try:
        loaded = load_manifest(path)
    except ManifestError as error:
        _refuse(error.lines())
    settings = settings_or_exit()

    class _DryRun(Exception):
        """Leaves the unit of work by rolling it back."""

    async def main() -> None:
        from keel.core.commands import started_context

        try:
            async with started_context(settings) as context:
                try:
                    async with context.database.session() as session:
                        tenant_id = (await get_tenant_by_slug(session, tenant)).id
                        bind_tenant(session, tenant_id)
                        target = Target(
                            session,
                            tenant_id,
                            operator_actor(),
                            settings,
                            context.resources,
                            loaded,
                        )
                        changes = await plan_changes(target)
                        if target.problems:
                            _refuse([problem.describe(loaded.file) for problem in target.problems])
                        for change in changes:
                            typer.echo(change.line())
                        if dry_run or not changes:
                            typer.echo(
                                f"{summary(changes)} (dry run: nothing applied)"
                                if dry_run and changes
                                else summary(changes)
                            )
                            raise _DryRun
                        await apply_changes(changes)
                        typer.echo(f"applied: {summary(changes)}")
                except _DryRun:
                    pass
        except KeelError as error:
            fail(f"{loaded.file}: nothing applied: {describe_error(error)}", EXIT_USAGE)

    run_database_command(main)


def _refuse(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"keel: {line}", err=True)
    raise typer.Exit(EXIT_USAGE)
