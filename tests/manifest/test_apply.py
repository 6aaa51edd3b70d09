"""``keel apply`` on SQLite and PostgreSQL: it creates what a manifest names, a second run is
``no changes`` and writes nothing (no audit event), ``--dry-run`` writes nothing, a changed
field is one ``~`` line and changes just that, it never deletes what the manifest does not
name, and after it what Keel holds equals the manifest for every named field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.manifest.conftest import read_keel, write
from tests.support.keel_cli import Deployment

SCHEMA = {
    "type": "object",
    "properties": {"greeting": {"type": "string"}, "page_size": {"type": "integer"}},
}

MANIFEST = """\
flag_environments = ["development"]

[service]
name = "orders"
roles = ["orders-service"]

[roles.orders-service]
permissions = ["config:orders:read", "flags:flags:read", "jobs:orders-default:enqueue"]

[config]
app = "orders"
schema = "config.schema.json"

[config.values.development]
greeting = "hello"
page_size = 20

[flags.new-checkout]
type = "boolean"
owner = "orders-team"

[flags.layout]
type = "string"
variations = [{ id = "list", value = "list" }, { id = "grid", value = "grid" }]

[queues.orders-default]
concurrency_limit = 5

[upstream]
targets = [{ url = "http://127.0.0.1:8001" }]

[[routes]]
name = "orders-api"
path = "/orders"
rate_limits = [{ name = "per-ip", key = "ip", limit = 100, period_seconds = 60 }]

[buckets.orders-invoices]
allowed_types = ["application/pdf"]
scan = false

[templates.order-confirmation.content]
default_locale = "en"
sample_data = { id = "A-1" }
locales = { en = { subject = "Order {{ id }}", text = "Thanks {{ id }}" } }
"""

EXPECTED_CREATES = [
    "+ service-account orders",
    "+ role orders-service",
    "+ grant orders-service -> orders",
    "+ config-app orders",
    "+ config orders/development",
    "+ flag-environment development",
    "+ flag new-checkout",
    "+ flag layout",
    "+ queue orders-default",
    "+ upstream orders",
    "+ route orders-api",
    "+ bucket orders-invoices",
    "+ template order-confirmation",
]


def prepare(deployment: Deployment, manifest: str = MANIFEST) -> None:
    write(deployment.cwd, "config.schema.json", json.dumps(SCHEMA))
    write(deployment.cwd, "keel.toml", manifest)


async def _audit_count(session: AsyncSession, tenant_id: str) -> int:
    """Events in the log and committed events waiting to go in (the outbox)."""
    from keel.audit.models import AuditEvent
    from keel.core.audit import AuditOutbox

    logged = await session.scalar(select(func.count()).select_from(AuditEvent))
    waiting = await session.scalar(select(func.count()).select_from(AuditOutbox))
    return int(logged or 0) + int(waiting or 0)


async def _state(session: AsyncSession, tenant_id: str) -> dict[str, Any]:
    """What Keel holds of every field the manifest names, read through the service layers."""
    from keel.auth.models import PrincipalType, ServiceAccount
    from keel.auth.service.roles import Roles, roles_and_permissions
    from keel.config import service as config
    from keel.flags import service as flags
    from keel.gateway import service as gateway
    from keel.jobs import service as jobs
    from keel.notify.service import templates
    from keel.storage.service import buckets

    account = await session.scalar(select(ServiceAccount).where(ServiceAccount.name == "orders"))
    held: list[str] = []
    if account is not None:
        held, _ = await roles_and_permissions(session, PrincipalType.service_account, account.id)
    roles = {
        role.name: sorted(role.permissions) for role in await Roles().list_roles(session, tenant_id)
    }
    apps = {app.name: app.json_schema for app in await config.list_applications(session, tenant_id)}
    values = (
        (await config.read_snapshot(session, tenant_id, "orders", "development")).values
        if "orders" in apps
        else None
    )
    flag_docs = {
        flag.key: (flag.type, flag.owner, flag.variations)
        for flag in await flags.list_flags(session, tenant_id)
    }
    queue = await jobs.get_queue_config(session, tenant_id, "orders-default")
    policy = (await gateway.read_policy(session, tenant_id)).policy
    bucket_list = {bucket.name: bucket for bucket in await buckets.list_buckets(session, tenant_id)}
    template_list = {
        t.name: t.published_version for t in await templates.list_templates(session, tenant_id)
    }
    return {
        "account": account is not None,
        "held": held,
        "roles": roles,
        "apps": apps,
        "values": values,
        "flag_environments": [e.key for e in await flags.list_environments(session, tenant_id)],
        "flags": flag_docs,
        "queue": None if queue is None else (queue.concurrency_limit, queue.rate_limit_per_second),
        "pools": [pool.name for pool in policy.upstreams],
        "routes": {route.name: route.model_dump(mode="json") for route in policy.routes},
        "buckets": {
            name: buckets.bucket_policy(bucket).allowed_types
            for name, bucket in bucket_list.items()
        },
        "templates": template_list,
    }


def state(deployment: Deployment) -> dict[str, Any]:
    return read_keel(deployment, _state)


def audit_count(deployment: Deployment) -> int:
    return read_keel(deployment, _audit_count)


def test_apply_creates_everything_and_keel_then_holds_what_the_manifest_says(
    deployment: Deployment,
) -> None:
    prepare(deployment)
    output = deployment.ok("apply").splitlines()
    assert [line.split(":")[0] for line in output[:-1]] == EXPECTED_CREATES
    assert output[-1] == "applied: 13 to create, 0 to change"

    held = state(deployment)
    assert held["account"] is True
    assert held["held"] == ["orders-service"]
    assert held["roles"]["orders-service"] == sorted(
        ["config:orders:read", "flags:flags:read", "jobs:orders-default:enqueue"]
    )
    assert held["apps"]["orders"] == SCHEMA
    assert held["values"] == {"greeting": "hello", "page_size": 20}
    assert "development" in held["flag_environments"]
    assert held["flags"]["new-checkout"] == (
        "boolean",
        "orders-team",
        [{"id": "on", "value": True}, {"id": "off", "value": False}],
    )
    assert held["flags"]["layout"][2] == [
        {"id": "list", "value": "list"},
        {"id": "grid", "value": "grid"},
    ]
    assert held["queue"] == (5, None)
    assert held["pools"] == ["orders"]
    route = held["routes"]["orders-api"]
    assert (route["path"], route["upstream"]) == ("/orders", "orders")
    assert route["rate_limits"][0]["limit"] == 100
    assert held["buckets"] == {"orders-invoices": ["application/pdf"]}
    assert held["templates"] == {"order-confirmation": 1}


def test_a_second_apply_is_no_changes_and_writes_nothing(deployment: Deployment) -> None:
    prepare(deployment)
    deployment.ok("apply")
    events, before = audit_count(deployment), state(deployment)
    assert events > 0  # the first apply was audited: the count below can see a write
    assert deployment.ok("apply").strip() == "no changes"
    assert deployment.ok("apply", "--dry-run").strip() == "no changes"
    assert audit_count(deployment) == events
    assert state(deployment) == before


def test_a_dry_run_prints_the_diff_and_writes_nothing(deployment: Deployment) -> None:
    prepare(deployment)
    events, before = audit_count(deployment), state(deployment)
    output = deployment.ok("apply", "--dry-run").splitlines()
    assert [line.split(":")[0] for line in output[:-1]] == EXPECTED_CREATES
    assert output[-1] == "13 to create, 0 to change (dry run: nothing applied)"
    assert audit_count(deployment) == events
    assert state(deployment) == before
    assert before["account"] is False
    assert before["flags"] == {}


def test_a_changed_field_is_one_tilde_line_and_changes_just_that(deployment: Deployment) -> None:
    prepare(deployment)
    deployment.ok("apply")
    before = state(deployment)
    prepare(deployment, MANIFEST.replace("concurrency_limit = 5", "concurrency_limit = 10"))
    output = deployment.ok("apply").splitlines()
    assert output == [
        "~ queue orders-default: concurrency_limit 5 -> 10",
        "applied: 0 to create, 1 to change",
    ]
    after = state(deployment)
    assert after["queue"] == (10, None)
    assert {**after, "queue": before["queue"]} == before

    changed = MANIFEST.replace("concurrency_limit = 5", "concurrency_limit = 10")
    prepare(deployment, changed.replace('greeting = "hello"', 'greeting = "hi"'))
    output = deployment.ok("apply").splitlines()
    assert output == ["~ config orders/development: greeting", "applied: 0 to create, 1 to change"]
    assert state(deployment)["values"] == {"greeting": "hi", "page_size": 20}


def test_apply_never_deletes_or_changes_what_the_manifest_does_not_name(
    deployment: Deployment,
) -> None:
    prepare(deployment)
    deployment.ok("apply")
    # What others made beside it: a config key, a flag, a role held, another service's route.
    deployment.ok("config", "set", "orders", "development", "extra=1")
    deployment.ok("flags", "create", "someone-elses")
    deployment.ok("auth", "create-role", "reader", "--permission", "flags:flags:read")
    deployment.ok("auth", "assign-role", "reader", "--service-account", "orders")
    before = state(deployment)
    slim = MANIFEST.split("[config]")[0]  # the service and its role only
    prepare(deployment, slim)
    assert deployment.ok("apply").strip() == "no changes"
    assert state(deployment) == before
    assert before["values"]["extra"] == 1
    assert "someone-elses" in before["flags"]
    assert before["held"] == ["orders-service", "reader"]


def test_routes_of_other_pools_stay_in_place(deployment: Deployment, tmp_path: Path) -> None:
    other = {
        "upstreams": [{"name": "billing", "targets": [{"url": "http://127.0.0.1:9001"}]}],
        "routes": [{"name": "billing-api", "path": "/billing", "upstream": "billing"}],
    }
    write(deployment.cwd, "policy.json", json.dumps(other))
    deployment.ok("gateway", "apply", "policy.json")
    prepare(deployment)
    deployment.ok("apply")
    held = state(deployment)
    assert list(held["routes"]) == ["billing-api", "orders-api"]
    assert held["pools"] == ["billing", "orders"]
    assert held["routes"]["billing-api"]["upstream"] == "billing"
