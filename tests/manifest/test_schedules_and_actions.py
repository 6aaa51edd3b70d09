"""``keel apply`` of job schedules (``[schedules.NAME]``) and audit actions
(``[audit.actions."service.resource.verb"]``), on SQLite and PostgreSQL: created and then held
as the manifest says, a second run ``no changes`` with no audit event, a dry run writing
nothing, a changed field one ``~`` line, nothing unnamed deleted, an operator's pause kept,
and every problem refused with its file, line and field before anything is applied."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.manifest.conftest import read_keel, write
from tests.manifest.test_apply import audit_count
from tests.support.keel_cli import Deployment

MANIFEST = """\
[service]
name = "orders"

[queues.orders-default]
concurrency_limit = 5

[schedules.orders-nightly-report]
cron = "0  2 * * *"
timezone = "Europe/Paris"
queue = "orders-default"
task = "orders.build_report"
args = { day = "yesterday" }
priority = 5

[schedules.orders-cleanup]
cron = "@hourly"
queue = "orders-default"
task = "orders.cleanup"
args = [30, "days"]

[audit.actions."orders.order.create"]
description = "An order was placed"

[audit.actions."orders.card.update"]
description = "A customer's card changed"
category = "security"
sensitivity = "confidential"
sensitive_fields = ["card_last4", "holder"]
"""


async def _held(session: AsyncSession, tenant_id: str) -> dict[str, Any]:
    """The tenant's schedules and audit actions, read through the services' own layers."""
    from keel.audit.service.catalogue import tenant_actions
    from keel.jobs import service as jobs

    schedules = {
        schedule.name: {
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "queue": schedule.queue,
            "task": schedule.task,
            "args": schedule.args,
            "priority": schedule.priority,
            "max_attempts": schedule.max_attempts,
            "enabled": schedule.enabled,
            "next_run_at": schedule.next_run_at,
        }
        for schedule in await jobs.list_schedules(session, tenant_id)
    }
    actions = {
        spec.name: (
            spec.description,
            spec.category,
            str(spec.sensitivity),
            sorted(spec.sensitive_fields),
        )
        for spec in await tenant_actions(session, tenant_id)
    }
    return {"schedules": schedules, "actions": actions}


def held(deployment: Deployment) -> dict[str, Any]:
    return read_keel(deployment, _held)


def test_apply_creates_the_schedules_and_actions_as_the_manifest_says(
    deployment: Deployment,
) -> None:
    write(deployment.cwd, "keel.toml", MANIFEST)
    output = deployment.ok("apply").splitlines()
    assert output == [
        "+ service-account orders",
        "+ queue orders-default: concurrency_limit null -> 5",
        "+ schedule orders-nightly-report: 0 2 * * * (Europe/Paris), "
        "orders.build_report on orders-default",
        "+ schedule orders-cleanup: @hourly (UTC), orders.cleanup on orders-default",
        "+ audit-action orders.order.create: change, internal",
        "+ audit-action orders.card.update: security, confidential",
        "applied: 6 to create, 0 to change",
    ]
    state = held(deployment)
    nightly = state["schedules"]["orders-nightly-report"]
    assert {key: value for key, value in nightly.items() if key != "next_run_at"} == {
        "cron": "0 2 * * *",  # normalised as the jobs service stores it
        "timezone": "Europe/Paris",
        "queue": "orders-default",
        "task": "orders.build_report",
        "args": {"day": "yesterday"},
        "priority": 5,
        "max_attempts": 20,  # the API's default
        "enabled": True,
    }
    assert nightly["next_run_at"] is not None
    cleanup = state["schedules"]["orders-cleanup"]
    assert (cleanup["cron"], cleanup["timezone"], cleanup["args"]) == (
        "@hourly",
        "UTC",
        [30, "days"],
    )
    assert state["actions"] == {
        "orders.order.create": ("An order was placed", "change", "internal", []),
        "orders.card.update": (
            "A customer's card changed",
            "security",
            "confidential",
            ["card_last4", "holder"],
        ),
    }


async def _documents(session: AsyncSession, tenant_id: str) -> list[dict[str, Any]]:
    """Every audit event's document: those in the log and those waiting to go in."""
    from keel.audit.models import AuditPayload
    from keel.core.audit import AuditOutbox

    logged = await session.scalars(select(AuditPayload.document))
    waiting = await session.scalars(
        select(AuditOutbox.document).where(AuditOutbox.tenant_id == tenant_id)
    )
    return [json.loads(document) for document in [*logged, *waiting]]


def test_the_changes_are_audited_as_the_operator(deployment: Deployment) -> None:
    write(deployment.cwd, "keel.toml", MANIFEST)
    deployment.ok("apply")
    documents = read_keel(deployment, _documents)
    recorded = {
        (document["action"], document["target"]["id"]): document
        for document in documents
        if document["action"] in ("jobs.schedule.put", "audit.action.register")
    }
    assert set(recorded) == {
        ("jobs.schedule.put", "orders-nightly-report"),
        ("jobs.schedule.put", "orders-cleanup"),
        ("audit.action.register", "orders.order.create"),
        ("audit.action.register", "orders.card.update"),
    }
    for document in recorded.values():
        assert document["actor"]["display"].startswith("keel cli ("), document["actor"]
    nightly = recorded[("jobs.schedule.put", "orders-nightly-report")]["data"]
    assert nightly == {
        "cron": "0 2 * * *",
        "timezone": "Europe/Paris",
        "queue": "orders-default",
        "task": "orders.build_report",
    }
    card = recorded[("audit.action.register", "orders.card.update")]["data"]
    assert card["sensitive_fields"] == ["card_last4", "holder"]


def test_a_second_apply_is_no_changes_and_writes_nothing(deployment: Deployment) -> None:
    write(deployment.cwd, "keel.toml", MANIFEST)
    deployment.ok("apply")
    events, before = audit_count(deployment), held(deployment)
    assert events > 0
    assert deployment.ok("apply").strip() == "no changes"
    assert deployment.ok("apply", "--dry-run").strip() == "no changes"
    assert audit_count(deployment) == events
    assert held(deployment) == before  # next_run_at included: nothing was replaced


def test_a_dry_run_prints_the_diff_and_writes_nothing(deployment: Deployment) -> None:
    write(deployment.cwd, "keel.toml", MANIFEST)
    events = audit_count(deployment)
    output = deployment.ok("apply", "--dry-run").splitlines()
    assert output[-1] == "6 to create, 0 to change (dry run: nothing applied)"
    assert held(deployment) == {"schedules": {}, "actions": {}}
    assert audit_count(deployment) == events


def test_a_changed_field_is_one_tilde_line_and_changes_just_that(deployment: Deployment) -> None:
    write(deployment.cwd, "keel.toml", MANIFEST)
    deployment.ok("apply")
    before = held(deployment)
    changed = MANIFEST.replace('cron = "0  2 * * *"', 'cron = "0 3 * * *"').replace(
        'description = "An order was placed"', 'description = "An order placed"'
    )
    write(deployment.cwd, "keel.toml", changed)
    output = deployment.ok("apply").splitlines()
    assert output == [
        '~ schedule orders-nightly-report: cron "0 2 * * *" -> "0 3 * * *"',
        '~ audit-action orders.order.create: description "An order was placed" -> '
        '"An order placed"',
        "applied: 0 to create, 2 to change",
    ]
    after = held(deployment)
    nightly = after["schedules"]["orders-nightly-report"]
    assert nightly["cron"] == "0 3 * * *"
    assert nightly["next_run_at"] != before["schedules"]["orders-nightly-report"]["next_run_at"]
    assert after["schedules"]["orders-cleanup"] == before["schedules"]["orders-cleanup"]
    assert after["actions"]["orders.order.create"][0] == "An order placed"
    assert after["actions"]["orders.card.update"] == before["actions"]["orders.card.update"]


def test_an_operators_pause_holds_unless_the_manifest_says_enabled(
    deployment: Deployment,
) -> None:
    write(deployment.cwd, "keel.toml", MANIFEST)
    deployment.ok("apply")
    deployment.ok(
        "jobs", "schedules", "set", "orders-cleanup", "--cron", "@hourly",
        "--queue", "orders-default", "--task", "orders.cleanup", "--args", '[30, "days"]',
        "--disabled",
    )  # fmt: skip
    assert held(deployment)["schedules"]["orders-cleanup"]["enabled"] is False
    assert deployment.ok("apply").strip() == "no changes"
    assert held(deployment)["schedules"]["orders-cleanup"]["enabled"] is False

    write(
        deployment.cwd,
        "keel.toml",
        MANIFEST.replace('task = "orders.cleanup"', 'task = "orders.cleanup"\nenabled = true'),
    )
    output = deployment.ok("apply").splitlines()
    assert output[0] == "~ schedule orders-cleanup: enabled false -> true"
    assert held(deployment)["schedules"]["orders-cleanup"]["enabled"] is True


def test_apply_never_deletes_schedules_or_actions_it_does_not_name(
    deployment: Deployment,
) -> None:
    write(deployment.cwd, "keel.toml", MANIFEST)
    deployment.ok("apply")
    deployment.ok(
        "jobs", "schedules", "set", "someone-elses", "--cron", "0 4 * * *",
        "--task", "other.task",
    )  # fmt: skip
    before = held(deployment)
    write(deployment.cwd, "keel.toml", '[service]\nname = "orders"\n')
    assert deployment.ok("apply").strip() == "no changes"
    assert held(deployment) == before
    assert set(before["schedules"]) == {"orders-nightly-report", "orders-cleanup", "someone-elses"}
    assert set(before["actions"]) == {"orders.order.create", "orders.card.update"}


START = '[service]\nname = "orders"\n'


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (
            START + '\n[schedules.nightly]\ncron = "0 25 * * *"\ntask = "t"\n',
            ["keel: keel.toml:5: schedules.nightly.cron: Cron expression '0 25 * * *'"],
        ),
        (
            START + '\n[schedules.nightly]\ncron = "@daily"\ntask = "t"\ntimezone = "Mars/Base"\n',
            ["keel: keel.toml:7: schedules.nightly.timezone: Time zone 'Mars/Base'"],
        ),
        (
            START + '\n[schedules.nightly]\ncron = "@daily"\ntask = "t"\nkwargs = { a = 1 }\n',
            ["keel: keel.toml:7: schedules.nightly.kwargs: unknown key"],
        ),
        (
            START + '\n[schedules.nightly]\ncron = "@daily"\n',
            ["keel: keel.toml:4: schedules.nightly.task: Field required"],
        ),
        (
            START + '\n[schedules.nightly]\ncron = "@daily"\ntask = "t"\nargs = [2026-12-06]\n',
            ["keel: keel.toml:7: schedules.nightly.args: not JSON"],
        ),
        (
            START + '\n[schedules."-bad"]\ncron = "@daily"\ntask = "t"\n',
            ["keel: keel.toml:4: schedules.-bad: Schedule name '-bad'"],
        ),
        (
            START + '\n[audit.actions.orders.order.create]\ndescription = "x"\n',
            ["keel: keel.toml:4: audit.actions.orders: an action is service.resource.verb"],
        ),
        (
            START + '\n[audit.actions."auth.user.create"]\ndescription = "x"\n',
            ["keel: keel.toml:4: audit.actions.auth.user.create: 'auth.user.create' is in one"],
        ),
        (
            START + '\n[audit.actions."orders.order.create"]\nsensitivity = "secret"\n',
            [
                "keel: keel.toml:4: audit.actions.orders.order.create.description: Field required",
                "keel: keel.toml:5: audit.actions.orders.order.create.sensitivity: Input should be",
            ],
        ),
        (
            START + '\n[audit.actions."orders.order.create"]\ndescription = "x"\nfields = []\n',
            ["keel: keel.toml:6: audit.actions.orders.order.create.fields: unknown key"],
        ),
    ],
    ids=[
        "bad-cron",
        "bad-timezone",
        "unknown-key",
        "missing-task",
        "toml-date-args",
        "bad-schedule-name",
        "unquoted-action",
        "keels-own-action",
        "missing-description-and-bad-sensitivity",
        "unknown-action-key",
    ],
)
def test_each_problem_names_file_line_and_field(
    deployment: Deployment, manifest: str, expected: list[str]
) -> None:
    # A valid schedule and action beside the bad one: refused too, nothing is applied.
    good = (
        '\n[schedules.fine]\ncron = "@daily"\ntask = "t"\n'
        '\n[audit.actions."orders.thing.happen"]\ndescription = "fine"\n'
    )
    write(deployment.cwd, "keel.toml", manifest + good)
    events, before = audit_count(deployment), held(deployment)
    result = deployment.keel("apply")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(expected), lines
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), (line, start)
    assert held(deployment) == before == {"schedules": {}, "actions": {}}
    assert audit_count(deployment) == events


def test_args_over_keels_limit_are_refused_before_anything_is_applied(
    deployment: Deployment,
) -> None:
    big = "x" * 70_000  # over the default 64 KiB (KEEL_JOBS__MAX_ARGS_BYTES)
    write(
        deployment.cwd,
        "keel.toml",
        MANIFEST + f'\n[schedules.huge]\ncron = "@daily"\ntask = "t"\nargs = ["{big}"]\n',
    )
    result = deployment.keel("apply")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        f"keel: keel.toml:{len(MANIFEST.splitlines()) + 5}: schedules.huge.args: "
        "70004 bytes of JSON; Keel's limit is 65536"
    ]
    assert held(deployment) == {"schedules": {}, "actions": {}}
