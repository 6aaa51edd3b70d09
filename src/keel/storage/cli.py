"""``keel storage ...``: list, show and create a tenant's buckets from a shell.

The CLI talks to the database directly with the server's settings, so whoever runs it is the
platform operator; its changes are audited as actor ``system``/``keel`` with the
operating-system account as display name, as the API's are. A policy file is the JSON the API
takes (``PUT /storage/v1/buckets/{bucket}``). Bad input and refused policies are one line on
stderr and exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.commands import (
    fail_usage,
    operator_actor,
    print_json,
    run_in_tenant,
    settings_or_exit,
)
from keel.core.tenancy import DEFAULT_TENANT
from keel.storage.models import StorageBucket
from keel.storage.schemas import BucketPolicy
from keel.storage.service import buckets

app = typer.Typer(help="Storage: list, show and create buckets.", no_args_is_help=True)
buckets_app = typer.Typer(help="Buckets and their policies.", no_args_is_help=True)
app.add_typer(buckets_app, name="buckets")

TenantOption = Annotated[str, typer.Option(help="Tenant slug.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NameArgument = Annotated[str, typer.Argument(help="Bucket name, e.g. photos.", show_default=False)]


def _document(bucket: StorageBucket) -> dict[str, Any]:
    return {
        "name": bucket.name,
        "revision": bucket.revision,
        "policy": buckets.bucket_policy(bucket).model_dump(mode="json"),
        "used_bytes": bucket.used_bytes,
        "used_objects": bucket.used_objects,
        "created_at": bucket.created_at,
        "updated_at": bucket.updated_at,
    }


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


@buckets_app.command("list")
def list_buckets(as_json: JsonOption = False, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """Each bucket: name, revision, bytes and objects used, and their quotas."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        found = await buckets.list_buckets(session, tenant_id)
        if as_json:
            print_json([_document(bucket) for bucket in found])
            return
        rows = [("NAME", "REVISION", "BYTES", "QUOTA BYTES", "OBJECTS", "QUOTA OBJECTS")]
        rows += [
            (
                bucket.name,
                str(bucket.revision),
                str(bucket.used_bytes),
                _limit(bucket.quota_bytes),
                str(bucket.used_objects),
                _limit(bucket.quota_objects),
            )
            for bucket in found
        ]
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        for row in rows:
            typer.echo(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )

    run_in_tenant(tenant, work)


@buckets_app.command("show")
def show(name: NameArgument, tenant: TenantOption = DEFAULT_TENANT) -> None:
    """One bucket as JSON: its policy, revision and usage."""

    async def work(session: AsyncSession, tenant_id: str) -> None:
        print_json(_document(await buckets.get_bucket(session, tenant_id, name)))

    run_in_tenant(tenant, work)


@buckets_app.command("create")
def create(
    name: NameArgument,
    policy: Annotated[
        Path | None,
        typer.Option(help="A JSON file holding the bucket's policy (default: the defaults)."),
    ] = None,
    tenant: TenantOption = DEFAULT_TENANT,
) -> None:
    """Create a bucket (refused when it exists); prints it as JSON."""
    document: Any = {}
    if policy is not None:
        try:
            document = json.loads(policy.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            fail_usage(f"cannot read {policy}: {getattr(error, 'strerror', None) or error}")
        except ValueError as error:
            fail_usage(f"{policy} is not JSON: {error}")
    try:
        checked = BucketPolicy.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, entry['loc'])) or '(policy)'}: {entry['msg']}"
            for entry in error.errors()
        )
        fail_usage(f"invalid policy: {problems}")
    storage_settings = settings_or_exit().storage

    async def work(session: AsyncSession, tenant_id: str) -> None:
        outcome = await buckets.put_bucket(
            session,
            tenant_id,
            name,
            checked,
            actor=operator_actor(),
            platform_max_object_bytes=storage_settings.max_object_bytes,
            scanner=storage_settings.clamd_address is not None,
            if_none_match="*",
        )
        print_json(_document(outcome.bucket))

    run_in_tenant(tenant, work)
