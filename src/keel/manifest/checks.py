"""The checks of the tables that are another service's API body: the gateway's pool and
routes, storage's bucket policies, notify's templates, job schedules and audit actions. Each
is validated by that service's own model and rules, its problems placed at their fields."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from keel.core.errors import KeelError
from keel.manifest.loaded import describe_error

if TYPE_CHECKING:
    from keel.manifest.loaded import LoadedManifest, Problem

#: How an action's name is written in TOML: a dotted name must be quoted.
_QUOTE_ACTION = 'quote the name: [audit.actions."orders.order.create"]'


def _model_problems(
    loaded: LoadedManifest, prefix: tuple[str | int, ...], error: ValidationError
) -> Iterator[Problem]:
    for entry in error.errors():
        message = "unknown key" if entry["type"] == "extra_forbidden" else entry["msg"]
        yield loaded.problem((*prefix, *entry["loc"]), message)


def check_routes(loaded: LoadedManifest, directory: Path) -> Iterator[Problem]:
    from keel_client.edge._model import Route
    from keel_client.edge._upstreams import UpstreamPool

    manifest = loaded.manifest
    pool_name = manifest.service.name
    if manifest.upstream is not None:
        if manifest.upstream.get("name", pool_name) != pool_name:
            yield loaded.problem(
                ("upstream", "name"), f"the service's pool is named {pool_name!r} (its name)"
            )
        else:
            try:
                pool = UpstreamPool.model_validate({**manifest.upstream, "name": pool_name})
            except ValidationError as error:
                yield from _model_problems(loaded, ("upstream",), error)
            else:
                loaded.upstream = pool.model_dump(mode="json")
    names: set[str] = set()
    for index, document in enumerate(manifest.routes):
        upstream = document.get("upstream", pool_name)
        if upstream != pool_name:
            yield loaded.problem(
                ("routes", index, "upstream"),
                f"a route of this manifest goes to the service's pool {pool_name!r}",
            )
            continue
        try:
            route = Route.model_validate({**document, "upstream": pool_name})
        except ValidationError as error:
            yield from _model_problems(loaded, ("routes", index), error)
            continue
        if route.name in names:
            yield loaded.problem(("routes", index, "name"), f"route {route.name!r} named twice")
        names.add(route.name)
        loaded.routes.append(route.model_dump(mode="json"))


def check_buckets(loaded: LoadedManifest, directory: Path) -> Iterator[Problem]:
    from keel.storage.schemas import BucketPolicy
    from keel.storage.service.buckets import check_bucket_name

    for name, document in loaded.manifest.buckets.items():
        try:
            check_bucket_name(name)
        except KeelError as error:
            yield loaded.problem(("buckets", name), str(error.detail or error))
            continue
        try:
            loaded.buckets[name] = BucketPolicy.model_validate(document)
        except ValidationError as error:
            yield from _model_problems(loaded, ("buckets", name), error)


def check_templates(loaded: LoadedManifest, directory: Path) -> Iterator[Problem]:
    from keel.notify.service.templates import TemplateKind, parse_content, validate_template_name

    for name, template in loaded.manifest.templates.items():
        try:
            validate_template_name(name)
            loaded.templates[name] = parse_content(TemplateKind(template.kind), template.content)
        except KeelError as error:
            yield loaded.problem(("templates", name), str(error.detail or error))


def check_schedules(loaded: LoadedManifest, directory: Path) -> Iterator[Problem]:
    """Each schedule as ``PUT /jobs/v1/schedules/{name}`` takes it, its cron and time zone
    as the jobs service reads them, its ``args`` JSON."""
    from keel.jobs.schemas import ScheduleWrite
    from keel.jobs.service.enqueue import validate_name
    from keel.jobs.service.schedules import validate_cron, validate_timezone

    for name, document in loaded.manifest.schedules.items():
        path = ("schedules", name)
        try:
            validate_name("Schedule", name)
        except KeelError as error:
            yield loaded.problem(path, describe_error(error))
            continue
        try:
            schedule = ScheduleWrite.model_validate(document)
        except ValidationError as error:
            yield from _model_problems(loaded, path, error)
            continue
        problems = []
        try:
            schedule = schedule.model_copy(update={"cron": validate_cron(schedule.cron)})
        except KeelError as error:
            problems.append(loaded.problem((*path, "cron"), describe_error(error)))
        try:
            validate_timezone(schedule.timezone)
        except KeelError as error:
            problems.append(loaded.problem((*path, "timezone"), describe_error(error)))
        try:
            json.dumps(schedule.args, allow_nan=False)
        except (TypeError, ValueError):
            problems.append(
                loaded.problem(
                    (*path, "args"),
                    "not JSON: a TOML date or time, nan or inf has no JSON form"
                    " (write a date as a string)",
                )
            )
        yield from problems
        if not problems:
            loaded.schedules[name] = schedule


def check_audit_actions(loaded: LoadedManifest, directory: Path) -> Iterator[Problem]:
    """Each action as ``PUT /audit/v1/actions/{name}`` takes it; its name
    ``service.resource.verb`` and none of Keel's own namespaces."""
    from keel.audit.schemas import ActionIn
    from keel.audit.service.catalogue import is_reserved
    from keel_client.audit import ACTION_PATTERN

    audit = loaded.manifest.audit
    if audit is None:
        return
    for name, document in audit.actions.items():
        path = ("audit", "actions", name)
        if not ACTION_PATTERN.fullmatch(name):
            yield loaded.problem(
                path,
                "an action is service.resource.verb (lowercase, dot-separated); " + _QUOTE_ACTION,
            )
            continue
        if is_reserved(name):
            yield loaded.problem(
                path, f"{name!r} is in one of Keel's own namespaces: only Keel records it"
            )
            continue
        try:
            loaded.audit_actions[name] = ActionIn.model_validate(document)
        except ValidationError as error:
            yield from _model_problems(loaded, path, error)
