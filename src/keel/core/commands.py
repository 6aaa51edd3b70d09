"""What the ``keel`` command and every service's CLI verbs share: exit codes, the one-line
failure, settings, a started context, one unit of work in a tenant, JSON output.

A command does its work through the service layer, as the API does::

    async def work(session: AsyncSession, tenant_id: str) -> None:
        for flag in await service.list_flags(session, tenant_id):
            typer.echo(flag.key)

    run_in_tenant(tenant, work, describe=describe)

Importing this module is cheap (typer and the standard library): ``keel version`` and
``keel --help`` import it and must not load the server (issue 15's start-up targets).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from keel.core.audit import Actor
    from keel.core.context import AppContext
    from keel.core.errors import KeelError
    from keel.settings import Settings

T = TypeVar("T")
#: A check or an operation failed.
EXIT_FAILURE = 1
#: Bad usage or invalid settings.
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """``keel: <message>`` on stderr, and exit with ``code``."""
    typer.echo(f"keel: {message}", err=True)
    raise typer.Exit(code)


def settings_or_exit(**overrides: Any) -> Settings:
    """The settings, with logging set up from them: logs go to stderr, so a command's own
    output (an API key, an export) is all that reaches stdout. A one-off command logs
    warnings and worse unless ``KEEL_LOG_LEVEL`` says otherwise (``serve`` and ``worker``
    log at the settings' level)."""
    from keel.core.logging import configure_logging
    from keel.settings import SettingsError, load_settings

    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)
    explicit = "log_level" in settings.model_fields_set
    configure_logging(settings.log_level if explicit else "warning", settings.log_format)
    return settings


def run(coroutine_factory: Callable[[], Awaitable[T]]) -> T:
    """Run ``coroutine_factory()`` to completion in a new event loop."""
    import asyncio

    async def main() -> T:
        return await coroutine_factory()

    return asyncio.run(main())


@asynccontextmanager
async def started_context(
    settings: Settings, *, serving: bool = False
) -> AsyncIterator[AppContext]:
    """An :class:`AppContext` with its services started, disposed of on exit. ``serving``:
    as ``keel serve`` starts them (a process of services that can serve without the database
    starts without it: ``keel.core.lifecycle.start_services``)."""
    from keel.core.lifecycle import build_context, start_services, stop_services

    context = build_context(settings)
    try:
        await start_services(context, serving=serving)
        yield context
    finally:
        await stop_services(context)
        await context.broadcast.disconnect()
        await context.database.dispose()


def run_database_command(main: Callable[[], Awaitable[None]]) -> None:
    """Run a command's ``main``; an outage, an out-of-date schema or a missing master key is
    its one line on stderr and exit code 1, never a traceback."""
    from keel.core.crypto import MasterKeyError
    from keel.core.health import describe_failure
    from keel.core.outages import reported_by_caller
    from keel.core.schema import SchemaOutOfDate

    try:
        with reported_by_caller():  # an outage is this command's one line, not a log line too
            run(main)
    except (typer.Exit, typer.Abort):
        raise
    except (SchemaOutOfDate, MasterKeyError) as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"database error: {describe_failure(exc)}")


def operator_actor() -> Actor:
    """The audit actor of CLI verbs: Keel itself, run by this operating-system account."""
    import getpass
    from dataclasses import replace

    from keel.core.audit import SYSTEM

    try:
        account = getpass.getuser()
    except (OSError, KeyError):
        account = "unknown"
    return replace(SYSTEM, display=f"keel cli ({account})")


#: A command's work: ``work(session, tenant_id)``.
TenantWork = Callable[["AsyncSession", str], Awaitable[None]]


def run_in_tenant(
    tenant: str, work: TenantWork, *, describe: Callable[[KeelError], str] = str
) -> None:
    """Run ``work`` in one unit of work of the server's database, bound to the tenant whose
    slug is ``tenant``; a Keel error is one line (``describe(error)``) and exit code 2."""
    from keel.core.errors import KeelError
    from keel.core.tenancy import bind_tenant, get_tenant_by_slug

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

    run_database_command(main)


def fail_usage(message: str) -> NoReturn:
    """``keel: <message>`` on stderr and exit code 2."""
    fail(message, EXIT_USAGE)


def print_json(value: Any) -> None:
    """``value`` as indented JSON with sorted keys; what JSON cannot hold as the API writes
    it (a datetime in RFC 3339 with ``Z``, as :func:`format_datetime`)."""
    from pydantic_core import to_jsonable_python

    typer.echo(
        json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=to_jsonable_python)
    )


def format_datetime(moment: datetime) -> str:
    """``moment`` as the API writes it (pydantic's JSON): RFC 3339, UTC as ``Z``, e.g.
    ``2026-12-06T03:33:50.686426Z``."""
    from pydantic_core import to_jsonable_python

    return str(to_jsonable_python(moment))
