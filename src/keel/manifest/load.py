"""Read a ``keel.toml`` and check everything that can be checked without Keel's database:
its TOML, its keys and types, permissions, names, the config schema file, flag definitions,
job schedules, routes, the upstream pool, bucket policies, template contents and audit
actions.

Every problem is found (not only the first) and reported as ``file:line: field: message``;
nothing is applied while one remains.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from keel.core.errors import KeelError
from keel.manifest.checks import (
    check_audit_actions,
    check_buckets,
    check_routes,
    check_schedules,
    check_templates,
)
from keel.manifest.loaded import LoadedManifest, ManifestError, Problem, describe_error
from keel.manifest.locate import field_lines, line_of
from keel.manifest.schemas import Manifest

#: First segments of permissions that Keel's services check (besides ``*`` and the
#: service's own name).
KEEL_SERVICES = (
    "auth",
    "audit",
    "secrets",
    "config",
    "flags",
    "jobs",
    "notify",
    "storage",
    "gateway",
)


_TOML_POSITION = re.compile(r"\(at line (\d+), column \d+\)")


def load_manifest(path: Path) -> LoadedManifest:
    """The checked manifest at ``path``; :class:`ManifestError` listing every problem."""
    file = path.name if path.parent == Path() else str(path)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ManifestError(file, [Problem((), f"cannot read the manifest: {reason}")]) from None
    try:
        document = tomllib.loads(source)
    except tomllib.TOMLDecodeError as error:
        found = _TOML_POSITION.search(str(error))
        message = _TOML_POSITION.sub("", str(error)).strip()
        line = int(found.group(1)) if found else None
        if line is None and "end of document" in str(error):
            line = max(len(source.splitlines()), 1)
        message = message.replace("(at end of document)", "").strip()
        raise ManifestError(file, [Problem((), f"not TOML: {message}", line)]) from None
    lines = field_lines(source)
    try:
        manifest = Manifest.model_validate(document)
    except ValidationError as error:
        problems = [
            Problem(
                tuple(entry["loc"]),
                "unknown key" if entry["type"] == "extra_forbidden" else entry["msg"],
                line_of(lines, entry["loc"]),
            )
            for entry in error.errors()
        ]
        raise ManifestError(file, problems) from None
    loaded = LoadedManifest(file, manifest, lines)
    problems = list(_check(loaded, path.parent))
    if problems:
        raise ManifestError(file, problems)
    return loaded


def _check(loaded: LoadedManifest, directory: Path) -> Iterator[Problem]:
    """Every check beyond types, each problem at its field; resolves what it reads."""
    for check in (_check_roles, _check_config, _check_flags, _check_queues):
        yield from check(loaded, directory)
    for check in (
        check_schedules,
        check_routes,
        check_buckets,
        check_templates,
        check_audit_actions,
    ):
        yield from check(loaded, directory)


def permission_problem(permission: str, own_service: str) -> str | None:
    """Why ``permission`` is refused, or None: well formed, and of a Keel service, ``*`` or
    the service itself."""
    from keel_client.auth import is_valid_permission

    if not is_valid_permission(permission):
        return f"{permission!r} is not service:resource:action (with * wildcards)"
    first = permission.split(":", 1)[0]
    if first != "*" and first not in KEEL_SERVICES and first != own_service:
        return (
            f"unknown permission {permission!r}: its service {first!r} is neither a Keel "
            f"service ({', '.join(KEEL_SERVICES)}) nor this service ({own_service!r})"
        )
    return None


def _check_roles(loaded: LoadedManifest, directory: Path) -> Iterator[Problem]:
    from keel.auth.service.policy import NAME

    manifest = loaded.manifest
    for name, role in manifest.roles.items():
        if not NAME.fullmatch(name):
            yield loaded.problem(
                ("roles", name), "a role name is 1-100 lowercase letters, digits and . _ -"
            )
        for index, permission in enumerate(role.permissions):
            problem = permission_problem(permission, manifest.service.name)
            if problem:
                yield loaded.problem(("roles", name, "permissions", index), problem)


def _check_config(loaded: LoadedManifest, directory: Path) -> Iterator[Problem]:
    from keel.config.service.validation import check_json_schema, check_name

    config = loaded.manifest.config
    if config is None:
        return
    app = loaded.config_app or ""
    try:
        check_name("application", app)
    except KeelError as error:
        yield loaded.problem(("config", "app"), describe_error(error))
    for environment in config.values:
        try:
            check_name("environment", environment)
        except KeelError as error:
            yield loaded.problem(("config", "values", environment), describe_error(error))
    schema: Any = config.json_schema
    if isinstance(schema, str):
        schema_path = directory / schema
        try:
            schema = json.loads(schema_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            yield loaded.problem(("config", "schema"), f"no schema file {schema!r}")
            return
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            yield loaded.problem(("config", "schema"), f"cannot read {schema!r}: {reason}")
            return
        except ValueError as error:
            yield loaded.problem(
                ("config", "schema"), f"{config.json_schema!r} is not JSON: {error}"
            )
            return
    if schema is not None:
        try:
            loaded.json_schema = check_json_schema(schema)
        except KeelError as error:
            yield loaded.problem(("config", "schema"), describe_error(error))
            return
        yield from _check_values(loaded, loaded.json_schema, config.values)


def _check_values(
    loaded: LoadedManifest, schema: dict[str, Any], environments: dict[str, dict[str, Any]]
) -> Iterator[Problem]:
    """Each value the manifest sets, against the manifest's schema, placed at its line: the
    rules of a key it names, and a key the schema forbids. A required key it leaves out is
    not its problem (Keel may hold it); the write checks the whole snapshot again."""
    from keel.config.service.validation import schema_violations

    for environment, values in environments.items():
        for violation in schema_violations(schema, values):
            key = violation.path.removeprefix("$.").split(".", 1)[0].split("[", 1)[0]
            if violation.path.startswith("$.") and key in values:
                where: tuple[str | int, ...] = ("config", "values", environment, key)
                yield loaded.problem(where, violation.message)
            elif violation.rule in ("additionalProperties", "unevaluatedProperties"):
                # At the top, each key the schema's properties do not name, at its own line.
                allowed = schema.get("properties", {})
                top = violation.path == "$" and "patternProperties" not in schema
                unexpected = [name for name in values if top and name not in allowed]
                for name in unexpected:
                    where = ("config", "values", environment, name)
                    yield loaded.problem(where, "a key the schema does not allow")
                if not unexpected:
                    yield loaded.problem(("config", "values", environment), violation.message)


def _check_flags(loaded: LoadedManifest, directory: Path) -> Iterator[Problem]:
    from keel.flags.service.documents import (
        check_environment_key,
        check_key,
        default_state,
        default_variations,
        merged_flag,
        validate_flag_document,
    )

    manifest = loaded.manifest
    for index, environment in enumerate(manifest.flag_environments):
        try:
            check_environment_key(environment)
        except KeelError as error:
            yield loaded.problem(("flag_environments", index), describe_error(error))
    for key, flag in manifest.flags.items():
        try:
            check_key("flag", key)
            variations = flag.variations or default_variations(flag.type)
            definition = {**flag_definition(key, flag.model_dump()), "variations": variations}
            validate_flag_document(merged_flag(definition, 2, default_state(variations)))
        except KeelError as error:
            yield loaded.problem(("flags", key), describe_error(error))


def flag_definition(key: str, flag: dict[str, Any]) -> dict[str, Any]:
    """A flag table as the flags service's definition document."""
    return {
        "key": key,
        "description": flag["description"],
        "tags": list(flag["tags"]),
        "owner": flag["owner"],
        "type": flag["type"],
        "variations": flag["variations"],
        "salt": flag["salt"] or key,
        "experiment": flag["experiment"],
    }


def _check_queues(loaded: LoadedManifest, directory: Path) -> Iterator[Problem]:
    from keel.jobs.schemas import NAME_PATTERN

    for name in loaded.manifest.queues:
        if not re.fullmatch(NAME_PATTERN, name):
            yield loaded.problem(
                ("queues", name),
                "a queue name is 1-128 of A-Z a-z 0-9 _ . : - (not starting . : -)",
            )
