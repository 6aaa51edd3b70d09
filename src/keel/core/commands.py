"""What the services' CLI commands share: one unit of work in a tenant, a usage failure,
JSON output.

A command does its work through the service layer, as the API does::

    async def work(session: AsyncSession, tenant_id: str) -> None:
        for flag in await service.list_flags(session, tenant_id):
            typer.echo(flag.key)

    run_in_tenant(tenant, work, describe=describe)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, NoReturn

import typer
from pydantic_core import to_jsonable_python
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.errors import KeelError
from keel.core.tenancy import bind_tenant, get_tenant_by_slug

#: A command's work: ``work(session, tenant_id)``.
TenantWork = Callable[[AsyncSession, str], Awaitable[None]]


def run_in_tenant(
    tenant: str, work: TenantWork, *, describe: Callable[[KeelError], str] = str
) -> None:
    """Run ``work`` in one unit of work of the server's database, bound to the tenant whose
    slug is ``tenant``; a Keel error is one line (``describe(error)``) and exit code 2."""
    # keel.cli imports every service's commands: imported when a command runs.
    from keel.cli import EXIT_USAGE, _run_database_command, fail, settings_or_exit, started_context

    settings = settings_or_exit()

    async def main() -> None:
        try:
            async with (
                started_context(settings) as context,
                context.database.session() as session,
            ):
                tenant_id = (await get_tenant_by_slug(session, tenant)).id
                bind_tenant(session, tenant_id)
                await work(session, tenant_id)
        except KeelError as error:
            fail(describe(error), EXIT_USAGE)

    _run_database_command(main)


def fail_usage(message: str) -> NoReturn:
    """``keel: <message>`` on stderr and exit code 2."""
    from keel.cli import EXIT_USAGE, fail

    fail(message, EXIT_USAGE)


def print_json(value: Any) -> None:
    """``value`` as indented JSON with sorted keys; what JSON cannot hold as the API writes
    it (a datetime in RFC 3339 with ``Z``, as :func:`format_datetime`)."""
    typer.echo(
        json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=to_jsonable_python)
    )


def format_datetime(moment: datetime) -> str:
    """``moment`` as the API writes it (pydantic's JSON): RFC 3339, UTC as ``Z``, e.g.
    ``2026-12-06T03:33:50.686426Z``."""
    return str(to_jsonable_python(moment))
