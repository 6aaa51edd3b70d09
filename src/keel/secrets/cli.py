"""``keel secrets ...``: master key rotation, and moving secrets in and out of ``.env`` files.

The CLI talks to the database directly with the server's settings, so whoever runs it is the
platform operator. Its changes and reads are audited as every CLI verb's are, as actor
``system``/``keel``, with the operating-system account as the actor's display name.

Values never reach the output of ``import`` (each key is listed with stars and a length) nor
any error message: a line of a ``.env`` file that does not parse is named by its number.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from dotenv.parser import Binding, parse_stream

from keel.core.audit import record_event, record_event_now
from keel.core.commands import operator_actor
from keel.core.crypto import MasterKey
from keel.core.errors import KeelError, NotFound
from keel.core.sealed import (
    DEFAULT_BATCH_SIZE,
    ColumnCount,
    count_sealed_values,
    count_unregistered_values,
    rewrap_sealed_values,
)
from keel.core.tenancy import DEFAULT_TENANT, bind_tenant, ensure_tenant, get_tenant_by_slug
from keel.secrets.engines.kv import (
    DEFAULT_MOUNT,
    KvEngine,
    SecretUnreadable,
    check_mount_path,
    check_secret_path,
)

app = typer.Typer(
    help="Rotate the master key; import secrets from .env files and export them.",
    no_args_is_help=True,
)

TenantOption = Annotated[str, typer.Option(help="Tenant slug.")]
MountOption = Annotated[str, typer.Option(help="KV version 2 mount.")]
PathOption = Annotated[
    str, typer.Option("--path", help="Secret path in the mount, e.g. apps/billing.")
]


class EnvFileError(ValueError):
    """A ``.env`` file (or data to write as one) that cannot be used; names no value."""


class ExportFormat(StrEnum):
    env = "env"
    json = "json"


# -- .env files ------------------------------------------------------------------------------

#: Keys written unquoted to a ``.env`` file (python-dotenv reads any of them back).
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def parse_env(text: str, source: str) -> dict[str, str]:
    """The variables of a ``.env`` file, as python-dotenv reads it, taken literally.

    ``${VAR}`` is not expanded: a secret is stored as written, and the operator's own
    environment never leaks into it. A line that does not parse, a key without ``=`` and a key
    set twice are refused, naming the line, never its content.
    """
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = _line_of(binding)
        if binding.error:
            raise EnvFileError(f"{source} line {line}: not KEY=VALUE")
        if binding.key is None:
            continue  # a blank line or a comment
        if binding.value is None:
            # A line without ``=`` may be a pasted value (``sk_live_…``), not a name: not shown.
            raise EnvFileError(
                f"{source} line {line}: no '=' (write NAME=VALUE, or NAME= for an empty value)"
            )
        if binding.key in values:
            raise EnvFileError(f"{source} line {line}: {binding.key} is set twice")
        values[binding.key] = binding.value
    if not values:
        raise EnvFileError(f"{source}: no KEY=VALUE line")
    return values


def _line_of(binding: Binding) -> int:
    """The line a binding starts on (its original text begins with the blank lines before)."""
    text = binding.original.string
    skipped = text[: len(text) - len(text.lstrip())]
    return binding.original.line + skipped.count("\n") + skipped.count("\r") - skipped.count("\r\n")


def render_env(data: dict[str, Any]) -> str:
    """``data`` as a ``.env`` file that :func:`parse_env` (and python-dotenv without
    interpolation) reads back exactly: every value double-quoted, ``\\``, ``"``, newlines and
    carriage returns escaped."""
    lines = []
    for key, value in data.items():
        if not _ENV_KEY.fullmatch(key):
            raise EnvFileError(f"key {key!r} is not a .env variable name; use --format json")
        if not isinstance(value, str):
            raise EnvFileError(f"{key} holds a {type(value).__name__}, not text; use --format json")
        lines.append(f"{key}={_quote(value)}\n")
    return "".join(lines)


def _quote(value: str) -> str:
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    )
    return f'"{escaped}"'


def masked(key: str, value: str) -> str:
    """How ``import`` shows a variable: its name and length, no character of its value."""
    unit = "char" if len(value) == 1 else "chars"
    return f"  {key} = ********  ({len(value)} {unit})"


def _read_env_file(path: Path) -> dict[str, str]:
    from keel.core.commands import EXIT_USAGE, fail

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"{path}: no such file", EXIT_USAGE)
    except UnicodeDecodeError:
        fail(f"{path}: not UTF-8 text", EXIT_USAGE)
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}", EXIT_USAGE)
    try:
        return parse_env(text, str(path))
    except EnvFileError as error:
        fail(str(error), EXIT_USAGE)


def _location(mount: str, path: str) -> tuple[str, str]:
    from keel.core.commands import EXIT_USAGE, fail

    try:
        return check_mount_path(mount), check_secret_path(path)
    except KeelError as error:
        fail(str(error), EXIT_USAGE)


def _run(main: Callable[[], Awaitable[None]]) -> None:
    from keel.core.commands import EXIT_USAGE, fail, run_database_command

    async def guarded() -> None:
        try:
            await main()
        except KeelError as error:
            fail(str(error), EXIT_USAGE)

    run_database_command(guarded)


def _write_new_file(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (mode 0600); never overwrite."""
    from keel.core.commands import EXIT_USAGE, fail

    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(f"{path} exists; not overwriting it", EXIT_USAGE)
    except OSError as error:
        fail(f"cannot create {path}: {error.strerror}", EXIT_USAGE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


class _DryRun(Exception):
    def __init__(self, version: int) -> None:
        self.version = version


@app.command("import")
def import_env(
    env_file: Annotated[Path, typer.Argument(help="The .env file to import.", show_default=False)],
    path: PathOption,
    mount: MountOption = DEFAULT_MOUNT,
    tenant: TenantOption = DEFAULT_TENANT,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and show what would be written; write nothing.")
    ] = False,
) -> None:
    """Write the variables of a .env file as one secret: a new version of PATH holding each
    variable as a key (read one as SecretRef("PATH#KEY")). Values are shown masked.
    """
    from keel.core.commands import settings_or_exit, started_context

    values = _read_env_file(env_file)
    mount_path, secret_path = _location(mount, path)
    settings = settings_or_exit()
    full = f"{mount_path}/{secret_path}"

    async def main() -> None:
        async with started_context(settings) as context:
            engine = KvEngine(context.keyring)
            try:
                async with context.database.session() as session:
                    tenant_id = (await get_tenant_by_slug(session, tenant)).id
                    bind_tenant(session, tenant_id)
                    kv_mount = await engine.mount(session, tenant_id, mount_path)
                    try:
                        current = (
                            await engine.metadata(session, kv_mount, secret_path)
                        ).current_version
                    except NotFound:
                        current = 0
                    # Check-and-set on the version seen: a write racing the import fails it.
                    row, _ = await engine.write(session, kv_mount, secret_path, values, cas=current)
                    if dry_run:
                        raise _DryRun(row.version)  # rolls the unit of work back
                    record_event(
                        session,
                        tenant_id=tenant_id,
                        action="secrets.kv.write",
                        actor=operator_actor(),
                        target_type="secret_path",
                        target_id=f"{mount_path}/data/{secret_path}",
                        data={"version": row.version, "operation": "import", "keys": len(values)},
                    )
                    version = row.version
            except _DryRun as outcome:
                typer.echo(
                    f"dry run: would import {len(values)} keys into {full} (tenant {tenant}) "
                    f"as version {outcome.version}; nothing written"
                )
            else:
                typer.echo(
                    f"imported {len(values)} keys into {full} (tenant {tenant}), version {version}"
                )
        for key, value in values.items():
            typer.echo(masked(key, value))

    _run(main)


@app.command("export")
def export_env(
    path: PathOption,
    mount: MountOption = DEFAULT_MOUNT,
    tenant: TenantOption = DEFAULT_TENANT,
    version: Annotated[
        int | None, typer.Option(min=1, help="Version to export (default: the current one).")
    ] = None,
    output_format: Annotated[
        ExportFormat, typer.Option("--format", help="env (a .env file) or json.")
    ] = ExportFormat.env,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write a new file (mode 0600) instead of stdout.")
    ] = None,
    yes_print_values: Annotated[
        bool,
        typer.Option("--yes-print-values", help="Print the values even to a terminal."),
    ] = False,
) -> None:
    """Print a secret's values as a .env file (or JSON), as import reads them back.

    Values are printed to a terminal only with --yes-print-values; redirected output and
    --out need no confirmation. The read is audited (secrets.kv.read, operation export).
    """
    from keel.core.commands import EXIT_FAILURE, EXIT_USAGE, fail, settings_or_exit, started_context

    mount_path, secret_path = _location(mount, path)
    if out is None and sys.stdout.isatty() and not yes_print_values:
        fail(
            "refusing to print secret values to a terminal: redirect the output, "
            "use --out FILE, or pass --yes-print-values",
            EXIT_USAGE,
        )
    settings = settings_or_exit()
    full = f"{mount_path}/{secret_path}"
    rendered: list[str] = []

    async def main() -> None:
        async with started_context(settings) as context:
            engine = KvEngine(context.keyring)
            async with context.database.session() as session:
                tenant_id = (await get_tenant_by_slug(session, tenant)).id
                bind_tenant(session, tenant_id)
                try:
                    result = await engine.read(session, tenant_id, mount_path, secret_path, version)
                except NotFound:
                    fail(f"no secret at {full} in tenant {tenant}", EXIT_USAGE)
                except SecretUnreadable:
                    fail(
                        f"the stored value of {full} does not open: it was altered, or sealed "
                        "under a master key this process does not hold",
                        EXIT_FAILURE,
                    )
                if result.data is None:
                    number = result.metadata["version"]
                    fail(f"version {number} of {full} is deleted or destroyed", EXIT_USAGE)
                try:
                    if output_format is ExportFormat.env:
                        text = render_env(result.data)
                    else:
                        text = json.dumps(result.data, indent=2, ensure_ascii=False) + "\n"
                except EnvFileError as error:
                    fail(str(error), EXIT_USAGE)
                # In the log before any value leaves the process.
                await record_event_now(
                    session,
                    tenant_id=tenant_id,
                    action="secrets.kv.read",
                    actor=operator_actor(),
                    target_type="secret_path",
                    target_id=f"{mount_path}/data/{secret_path}",
                    data={
                        "version": result.metadata["version"],
                        "operation": "export",
                        "format": str(output_format),
                    },
                )
            rendered.append(text)

    _run(main)
    if out is not None:
        _write_new_file(out, rendered[0])
        typer.echo(f"exported {full} to {out} (mode 0600)", err=True)
    else:
        sys.stdout.write(rendered[0])
        sys.stdout.flush()


# -- master key ------------------------------------------------------------------------------


@app.command("generate-master-key")
def generate_master_key(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write a new key file (mode 0600) instead.")
    ] = None,
) -> None:
    """Print a new random master key (base64 of 32 bytes), or write it to a new file."""
    key = MasterKey.generate().to_base64()
    if out is None:
        typer.echo(key)
        return
    _write_new_file(out, key + "\n")
    typer.echo(f"master key written to {out} (mode 0600)")


def _load_every_owner() -> None:
    """Import every service of this build and every model, so that each owner of a sealed
    column has registered it, enabled (KEEL_SERVICES) or not."""
    from keel.core.schema import load_all_models
    from keel.core.services import available_services
    from keel.settings import KNOWN_SERVICES

    available_services(KNOWN_SERVICES)
    load_all_models()


def _describe(count: ColumnCount, *, check: bool) -> str:
    if check:
        line = (
            f"{count.name}: {count.values} values, {count.current} under the current key, "
            f"{count.previous} under previous keys"
        )
    else:
        line = f"{count.name}: {count.rewrapped} re-wrapped, {count.current} already current"
        changed = count.previous - count.rewrapped
        if changed:
            line += f", {changed} changed meanwhile (left as they are)"
    if count.unknown:
        line += f", {count.unknown} under keys not held (cannot be re-wrapped)"
    return line


@app.command("rotate-master-key")
def rotate_master_key(
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Only count the values not under the current key (exit 1 if any)."
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Rows re-wrapped per transaction.")
    ] = DEFAULT_BATCH_SIZE,
) -> None:
    """Re-wrap every sealed value's data key with the current master key (KEEL_MASTER_KEY).

    Values under a previous key (KEEL_MASTER_KEY_PREVIOUS) are re-wrapped a batch a
    transaction while Keel serves; their ciphertext is unchanged. Safe to stop and run again.
    Exits 0 when every value is under the current key, 1 when some could not be re-wrapped.
    """
    from keel.core.commands import EXIT_FAILURE, settings_or_exit, started_context

    settings = settings_or_exit()
    _load_every_owner()

    async def main() -> None:
        async with started_context(settings) as context:
            database, keyring = context.database, context.keyring
            if check:
                counts = await count_sealed_values(database, keyring, batch_size=batch_size)
            else:
                counts = await rewrap_sealed_values(database, keyring, batch_size=batch_size)
            unregistered = await count_unregistered_values(database)
            for count in counts:
                typer.echo(_describe(count, check=check))
            for name, values in unregistered.items():
                typer.echo(f"{name}: {values} values no owner registered (cannot be re-wrapped)")
            stuck = sum(count.unknown for count in counts) + sum(unregistered.values())
            if not check:
                async with database.session() as session:
                    tenant, _ = await ensure_tenant(session, DEFAULT_TENANT)
                    record_event(
                        session,
                        tenant_id=tenant.id,
                        action="secrets.master_key.rotate",
                        actor=operator_actor(),
                        target_type="master_key",
                        data={
                            "rewrapped": sum(count.rewrapped for count in counts),
                            "not_rewrapped": stuck,
                            # A list: keys naming secrets or keys would be redacted.
                            "columns": [
                                {"column": count.name, "rewrapped": count.rewrapped}
                                for count in counts
                            ],
                        },
                    )
        remaining = sum(count.remaining for count in counts) + sum(unregistered.values())
        if check:
            if remaining:
                typer.echo(f"{remaining} values are not under the current master key")
                raise typer.Exit(EXIT_FAILURE)
            typer.echo("every sealed value is under the current master key")
            return
        if stuck:
            typer.echo(f"{stuck} values could not be re-wrapped: they stay under other keys")
            raise typer.Exit(EXIT_FAILURE)
        typer.echo(
            f"re-wrapped {sum(count.rewrapped for count in counts)} values; "
            "every sealed value is under the current master key"
        )

    _run(main)
