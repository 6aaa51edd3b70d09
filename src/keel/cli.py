"""The ``keel`` command: serve, worker, migrate, init, doctor, version, and each service's
admin verbs (``keel auth``, ``keel flags`` ...).

Errors are one line on stderr. Exit codes: 0 success, 1 a check or operation failed,
2 bad usage or invalid settings.

Starting is cheap (issue 15): this module imports typer and the standard library only, each
command imports what it needs when it runs, and a service's command group is imported only
when it is invoked (:class:`KeelGroup`), so ``keel version`` and ``keel --help`` load nothing
of the server. ``tests/test_cli.py`` holds them to that.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperGroup

try:  # typer >= 0.20 ships its own copy of click
    from typer._click import Command, Context
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import Command, Context  # type: ignore[assignment]
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from keel import __version__
from keel.core.commands import (
    EXIT_FAILURE,
    EXIT_USAGE,
    fail,
    run,
    run_database_command,
    settings_or_exit,
    started_context,
)


@dataclass(frozen=True)
class ServiceCommands:
    """A service's command group as ``keel --help`` lists it, before it is imported."""

    #: The module whose ``app`` (a ``typer.Typer``) holds the group's commands.
    module: str
    #: The group's one-line help: the same text as its ``typer.Typer(help=...)`` (a test
    #: holds the two equal), repeated here so that listing it imports nothing.
    help: str


SERVICE_COMMANDS: dict[str, ServiceCommands] = {
    "auth": ServiceCommands(
        "keel.auth.cli", "Administer users, service accounts, API keys, roles and signing keys."
    ),
    "audit": ServiceCommands(
        "keel.audit.cli", "Check the tamper-evident audit log; erase expired documents."
    ),
    "secrets": ServiceCommands(
        "keel.secrets.cli", "Rotate the master key; import secrets from .env files and export them."
    ),
    "config": ServiceCommands(
        "keel.config.cli",
        "Read, change, compare, roll back and promote applications' configuration.",
    ),
    "flags": ServiceCommands(
        "keel.flags.cli", "Feature flags: list, define, show, toggle (kill switch), stale flags."
    ),
    "jobs": ServiceCommands(
        "keel.jobs.cli",
        "Jobs: queues, the dead letter queue, requeue, cancel, pause/resume, schedules.",
    ),
    "gateway": ServiceCommands(
        "keel.gateway.cli",
        "Edge policy: show, validate, apply, list routes and revisions, roll back.",
    ),
    "storage": ServiceCommands("keel.storage.cli", "Storage: list, show and create buckets."),
}


class KeelGroup(TyperGroup):
    """The ``keel`` group: its own commands, then one group per service in
    :data:`SERVICE_COMMANDS`, listed from its declaration and imported on first use.

    Importing a service's commands imports the service (its models, FastAPI, SQLAlchemy):
    most of a second, which ``keel version`` and ``keel --help`` should not pay.
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._unloaded = set(SERVICE_COMMANDS)
        for name, declared in SERVICE_COMMANDS.items():
            # Stands in for the group in the help listing until it is run.
            self.add_command(TyperGroup(name=name, help=declared.help), name)
        adjust_parameters(self)

    def resolve_command(
        self, ctx: Context, args: list[str]
    ) -> tuple[str | None, Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name in self._unloaded:
            command = self._load(name)
        return name, command, rest

    def _load(self, name: str) -> Command:
        module = importlib.import_module(SERVICE_COMMANDS[name].module)
        group = typer.main.get_group(module.app)
        group.name = name
        adjust_parameters(group)
        self.commands[name] = group
        self._unloaded.discard(name)
        return group


#: click's metavars for typer's type labels (``<str>`` is TEXT, as click shows it).
_METAVARS = {
    "str": "TEXT",
    "int": "INTEGER",
    "float": "FLOAT",
    "bool": "BOOLEAN",
    "datetime": "DATETIME",
    "uuid": "UUID",
    "path": "PATH",
    "file": "FILE",
    "dir": "DIRECTORY",
}


def conventional_metavar(typer_label: str) -> str:
    """The metavar ``--help`` shows for a value typer labels with its Python type:
    ``<str>`` is TEXT, ``<int range>`` INTEGER (the range is shown beside it), ``<list[str]>``
    TEXT (a repeatable option or a variadic argument), ``<env|json>`` ``[env|json]``."""
    label = typer_label.strip().removeprefix("<").removesuffix(">")
    if label.startswith("list[") and label.endswith("]"):
        label = label[len("list[") : -1]
    label = label.removesuffix(" range")
    if "|" in label:
        return f"[{label}]"
    return _METAVARS.get(label.lower(), label.upper())


class _ConventionalArgument(TyperArgument):
    """An argument whose help shows a conventional metavar, as an option with a ``metavar``
    does (typer shows an argument's Python type whatever its ``metavar``)."""

    def display_type_rich(self, ctx: typer.Context) -> str:  # type: ignore[override]
        return conventional_metavar(self.display_type(ctx))


def adjust_parameters(command: Command) -> None:
    """Adjust the parameters of ``command`` and its sub-commands as typer 0.29 builds them:

    - the metavars click would show: TEXT, INTEGER, ``[env|json]``, nothing for a flag
      (typer shows ``<str>``, ``<list[str]>``, and ``<bool>`` beside every flag); a metavar
      a command declares itself (``SERVICES``) stays;
    - ``--help`` defaults to False, not None: typer coerces a None through a pydantic
      adapter, which imported pydantic (a tenth of a second) for every ``keel version``.
    """
    if not hasattr(TyperArgument, "display_type"):  # a typer on click's types: click's metavars
        return
    context = typer.Context(command)
    help_option = command.get_help_option(context)
    if help_option is not None and help_option.default is None:
        help_option.default = False
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        if isinstance(param, TyperArgument):
            param.__class__ = _ConventionalArgument
        elif param.metavar is None and isinstance(param, typer.core.TyperOption):
            shown = "" if param.is_flag else conventional_metavar(param.display_type(context))
            param.metavar = shown
    for sub_command in getattr(command, "commands", {}).values():
        adjust_parameters(sub_command)


app = typer.Typer(
    name="keel",
    cls=KeelGroup,
    help="Keel: central services for a fleet of Python web services.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _before_each_command(ctx: typer.Context) -> None:
    from keel.core.startup import resume_garbage_collection

    if ctx.invoked_subcommand != "serve":  # serve's app resumes it once started
        resume_garbage_collection()


def _services_option(value: str | None) -> list[str] | None:
    from keel.settings import KNOWN_SERVICES

    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in KNOWN_SERVICES]
    if unknown or not names:
        raise typer.BadParameter(
            f"unknown service {unknown[0]!r}; known: {', '.join(KNOWN_SERVICES)}"
            if unknown
            else "name at least one service",
            param_hint="'--services'",
        )
    return names


#: How long ``keel serve`` lets running requests finish after SIGTERM.
GRACEFUL_SHUTDOWN_SECONDS = 5

#: How long ``keel serve --workers N`` gives a worker to answer its supervisor.
WORKER_HEALTHCHECK_SECONDS = 30


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (KEEL_HOST).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (KEEL_PORT).")] = None,
    services: Annotated[
        str | None,
        typer.Option(
            metavar="SERVICES",
            help="Comma-separated services to run, e.g. auth,flags (default: all).",
        ),
    ] = None,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the Keel API (every enabled service in one ASGI app)."""
    # The garbage collector `keel` paused stays paused until the app has started
    # (keel.core.startup: a tenth to a fifth less time to ready).
    from keel.core.startup import import_structlog_without_rich, resume_garbage_collection

    import_structlog_without_rich()

    import uvicorn

    from keel.core.http_protocol import ListingHttpToolsProtocol
    from keel.core.logging import configure_logging, get_logger
    from keel.core.services import ServiceUnavailableInBuild, resolve_services

    service_names = _services_option(services)
    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if service_names is not None:
        overrides["services"] = service_names
    settings = settings_or_exit(**overrides)
    try:
        resolve_services(settings)
    except ServiceUnavailableInBuild as exc:
        fail(str(exc), EXIT_USAGE)

    async def check_start() -> None:
        # Start once here so that a missing master key, an old schema or an unreachable
        # database is one line from the CLI, not a traceback from inside uvicorn. Started as
        # the app starts: a gateway alone with its last known good copy passes without its
        # database (keel.core.lifecycle.start_services).
        async with started_context(settings, serving=True):
            pass

    run_database_command(check_start)

    # The app factory reads settings from the environment (also in reloaded children).
    if service_names is not None:
        os.environ["KEEL_SERVICES"] = ",".join(service_names)
    os.environ["KEEL_HOST"] = settings.host
    os.environ["KEEL_PORT"] = str(settings.port)
    configure_logging(settings.log_level, settings.log_format)
    get_logger("keel").info("keel.serving", url=f"http://{settings.host}:{settings.port}")
    if reload or workers > 1:
        # This process only supervises; each worker process starts (and pauses) its own.
        resume_garbage_collection()
    uvicorn.run(
        "keel.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        reload=reload,
        workers=None if reload else workers,
        log_config=None,
        # X-Forwarded-For is believed only from the proxies named: uvicorn's default believes
        # any process on the host, which could then pick a fresh address per request.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        # The request head's bound (h11's name for it); ListingHttpToolsProtocol applies it.
        h11_max_incomplete_event_size=settings.max_header_bytes,
        server_header=False,
        http=ListingHttpToolsProtocol,  # Vault's LIST method (keel.core.http_protocol)
        ws="none",  # no WebSocket route: the websockets library need not load (issue 15)
        # uvicorn kills a worker that does not answer its supervisor's ping within this many
        # seconds (default 5); a worker importing Keel on a busy machine can take longer, and
        # was killed and restarted over and over.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        # On SIGTERM, requests still running after this long are cancelled: a worker's fetch
        # long-polls for up to 30 s and a change stream never ends, and neither loses
        # anything by being cut (the worker fetches again elsewhere, the stream resumes).
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


@app.command()
def worker() -> None:
    """Run background work (sweepers, rotations, deliveries) of the enabled services."""
    import asyncio
    import signal

    from keel.core.startup import import_structlog_without_rich

    import_structlog_without_rich()

    from keel.core.lifecycle import background_work
    from keel.core.logging import configure_logging, get_logger

    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("keel.worker")

    async def main() -> None:
        async with started_context(settings) as context:
            await context.broadcast.connect()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            tasks = [
                asyncio.create_task(task(context), name=name)
                for name, task in background_work(context)
            ]
            log.info("worker.started", tasks=[task.get_name() for task in tasks])
            await stop.wait()
            log.info("worker.stopping")
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    run_database_command(main)


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    check: Annotated[bool, typer.Option(help="Only report whether migration is needed.")] = False,
) -> None:
    """Apply database migrations (one history for the whole platform)."""
    from keel.core.db import Database
    from keel.core.schema import current_revision, head_revision, is_known_revision, upgrade

    if not is_known_revision(revision):
        fail(f"no migration {revision!r}; the newest is {head_revision()} ('head')", EXIT_USAGE)
    settings = settings_or_exit()

    async def main() -> None:
        database = Database.from_settings(settings)
        try:
            if check:
                current, head = await current_revision(database), head_revision()
                typer.echo(f"schema at {current or 'nothing'}, head is {head}")
                if current != head:
                    raise typer.Exit(EXIT_FAILURE)
                return
            before, after = await upgrade(database, revision)
            if before == after:
                typer.echo(f"schema already at {after}")
            else:
                typer.echo(f"migrated {before or 'nothing'} -> {after}")
        finally:
            await database.dispose()
        if revision == "head":
            # Services' start-up data (the first signing keys) is part of a ready database.
            async with started_context(settings):
                pass

    run_database_command(main)


@app.command()
def init(
    tenant: Annotated[str, typer.Option(help="Slug of the first tenant.")] = "default",
    admin: Annotated[str, typer.Option(help="Username of the first administrator.")] = "admin",
) -> None:
    """Create the first tenant and its administrator (idempotent).

    On first run it prints one admin API key: it is shown once and never stored in clear.
    On the embedded default the database is migrated first.
    """
    from keel.auth.dependencies import AUTH_RESOURCE
    from keel.auth.service.bootstrap import ensure_admin
    from keel.core.errors import KeelError
    from keel.core.tenancy import ensure_tenant

    settings = settings_or_exit()

    async def main() -> None:
        async with started_context(settings) as context:
            try:
                async with context.database.session() as session:
                    created_tenant, created = await ensure_tenant(session, tenant)
                typer.echo(f"tenant {created_tenant.slug}: {'created' if created else 'exists'}")
                if AUTH_RESOURCE in context.resources:
                    async with context.database.session() as session:
                        outcome = await ensure_admin(
                            context.resources[AUTH_RESOURCE], session, created_tenant.id, admin
                        )
                    typer.echo(f"admin {admin}: {'created' if outcome.api_key else 'exists'}")
                    if outcome.api_key:
                        typer.echo(f"admin API key (shown once, store it now): {outcome.api_key}")
            except KeelError as exc:
                fail(str(exc), EXIT_USAGE)

    run_database_command(main)


@app.command("apply")
def apply_command(
    path: Annotated[
        str, typer.Argument(metavar="PATH", help="The manifest (default: ./keel.toml).")
    ] = "keel.toml",
    dry_run: Annotated[bool, typer.Option(help="Print the diff; change nothing.")] = False,
    tenant: Annotated[str, typer.Option(help="Tenant slug.")] = "default",
) -> None:
    """Make Keel match a service's keel.toml (provisioning as code; see docs/apply.md).

    Prints the diff (+ created, ~ changed), then applies it in one unit of work; a second run
    prints 'no changes'. Never deletes what the file does not name. A bad file: one line per
    problem (file:line: field: message), exit code 2, nothing applied.
    """
    from pathlib import Path

    from keel.manifest.cli import apply_manifest

    apply_manifest(Path(path), dry_run=dry_run, tenant=tenant)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
) -> None:
    """Check the database, Redis and each enabled service; print the effective settings."""
    from keel.core.doctor import run_doctor
    from keel.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        report: dict[str, Any] = {
            "ok": False,
            "checks": [{"name": "settings", "ok": False, "detail": str(exc)}],
        }
    else:
        report = run(lambda: run_doctor(settings))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for check in report["checks"]:
            mark = "ok  " if check["ok"] else "FAIL"
            typer.echo(f"[{mark}] {check['name']}: {check['detail']}")
        if "settings" in report:
            typer.echo("\neffective settings (secrets masked):")
            typer.echo(json.dumps(report["settings"], indent=2))
    if not report["ok"]:
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def version() -> None:
    """Print the versions of keel and keel-client."""
    from keel_client import __version__ as client_version

    python_version = sys.version.split()[0]
    typer.echo(f"keel {__version__} (keel-client {client_version}, Python {python_version})")


def main() -> None:
    """Entry point: a usage error is one line on stderr and exit code 2, as any other error."""
    from keel.core.startup import garbage_collection_paused

    # No cyclic garbage collection while the command line is parsed and the command's
    # modules load (keel.core.startup): `keel` resumes it as the command starts (serve: once
    # its app has started).
    with garbage_collection_paused():
        try:
            code = app(standalone_mode=False)
        except click_exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(EXIT_USAGE)
        except click_exceptions.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            typer.echo(f"keel: {exc.format_message()}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except click_exceptions.ClickException as exc:
            typer.echo(f"keel: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("keel: aborted", err=True)
            sys.exit(EXIT_FAILURE)
    sys.exit(code if isinstance(code, int) else 0)
