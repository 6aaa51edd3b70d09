"""A bad manifest is refused with exit code 2, one line per problem naming the file, the line
and the field, and nothing is applied (every problem is found before any write)."""

from __future__ import annotations

import pytest

from tests.manifest.conftest import write
from tests.manifest.test_apply import audit_count, state
from tests.support.keel_cli import Deployment

GOOD_START = """\
[service]
name = "orders"
roles = ["orders-service"]

[roles.orders-service]
permissions = ["flags:flags:read"]
"""


def refused_lines(deployment: Deployment, manifest: str, *args: str) -> list[str]:
    write(deployment.cwd, "keel.toml", manifest)
    events, before = audit_count(deployment), state(deployment)
    result = deployment.keel("apply", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    assert audit_count(deployment) == events
    assert state(deployment) == before  # nothing applied, not even the valid parts
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("keel: keel.toml") for line in lines), lines
    return lines


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (
            GOOD_START + '\n[flags.new-checkout]\ntype = "boolean"\ndefault = false\n',
            ["keel: keel.toml:10: flags.new-checkout.default: unknown key"],
        ),
        (
            GOOD_START + '\n[queues.orders-default]\nconcurrency_limit = "ten"\n',
            [
                "keel: keel.toml:9: queues.orders-default.concurrency_limit: "
                "Input should be a valid integer"
            ],
        ),
        (
            GOOD_START.replace('"flags:flags:read"', '"flags:flags:read", "confg:orders:read"'),
            [
                "keel: keel.toml:6: roles.orders-service.permissions[1]: "
                "unknown permission 'confg:orders:read'"
            ],
        ),
        (
            GOOD_START + '\n[flags.page-layout]\ntype = "string"\n',
            ["keel: keel.toml:8: flags.page-layout: A string flag needs its variations."],
        ),
        (
            GOOD_START + '\n[config]\napp = "orders"\nschema = "missing.json"\n',
            ["keel: keel.toml:10: config.schema: no schema file 'missing.json'"],
        ),
        (
            GOOD_START + '\n[[routes]]\nname = "api"\nupstream = "billing"\n',
            [
                "keel: keel.toml:10: routes[0].upstream: "
                "a route of this manifest goes to the service's pool 'orders'"
            ],
        ),
        (
            '[service]\nname = "orders"\nroles = [\n',
            ["keel: keel.toml:3: (manifest): not TOML: Invalid value"],
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "unknown-permission",
        "invalid-flag",
        "missing-schema",
        "other-pool",
        "not-toml",
    ],
)
def test_each_problem_names_file_line_and_field(
    deployment: Deployment, manifest: str, expected: list[str]
) -> None:
    lines = refused_lines(deployment, manifest)
    assert len(lines) == len(expected), lines
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), (line, start)


def test_a_schema_that_is_not_json_and_every_other_problem_are_listed(
    deployment: Deployment,
) -> None:
    write(deployment.cwd, "config.schema.json", "{not json")
    manifest = (
        GOOD_START
        + '\n[config]\nschema = "config.schema.json"\n'
        + '\n[flags.x]\ntype = "boolean"\nowner = 3\n'
    )
    lines = refused_lines(deployment, manifest, "--dry-run")
    assert lines[0].startswith("keel: keel.toml:13: flags.x.owner: Input should be a valid string")
    # Types are checked first; with them right, the schema file is read and refused.
    lines = refused_lines(deployment, manifest.replace("owner = 3", 'owner = "me"'))
    assert lines == [
        "keel: keel.toml:9: config.schema: 'config.schema.json' is not JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    ]


def test_a_role_that_does_not_exist_is_refused_before_anything_is_applied(
    deployment: Deployment,
) -> None:
    manifest = (
        '[service]\nname = "orders"\nroles = ["nobody-defined-this"]\n'
        '\n[flags.f]\ntype = "boolean"\n'
    )
    lines = refused_lines(deployment, manifest)
    assert lines == [
        "keel: keel.toml:3: service.roles[0]: no role 'nobody-defined-this': define it under "
        "[roles.nobody-defined-this] or create it"
    ]


def test_a_missing_manifest_is_one_line(deployment: Deployment) -> None:
    result = deployment.keel("apply", "nowhere.toml")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("keel: nowhere.toml: (manifest): cannot read")


def test_config_values_that_fail_the_manifests_schema_are_refused_at_their_lines(
    deployment: Deployment,
) -> None:
    """Before anything is written, and in a dry run too: a value of the wrong type, and a key
    the schema forbids. A required key the file leaves out is not refused (Keel may hold it)."""
    write(
        deployment.cwd,
        "config.schema.json",
        '{"type": "object", "properties": {"page_size": {"type": "integer"}, '
        '"greeting": {"type": "string"}}, "required": ["greeting"], '
        '"additionalProperties": false}',
    )
    manifest = (
        GOOD_START
        + '\n[config]\napp = "orders"\nschema = "config.schema.json"\n'
        + '\n[config.values.development]\npage_size = "twenty"\n'
        + '\n[config.values.production]\npage_size = 50\ncolour = "red"\n'
    )
    expected = [
        'keel: keel.toml:13: config.values.development.page_size: fails type "integer"',
        "keel: keel.toml:17: config.values.production.colour: a key the schema does not allow",
    ]
    for args in ((), ("--dry-run",)):
        assert refused_lines(deployment, manifest, *args) == expected


def test_a_route_that_clashes_with_another_pools_is_refused_at_its_line_in_a_dry_run_too(
    deployment: Deployment,
) -> None:
    """The whole policy's checks (here: two routes taking the same requests) run before
    anything is written, and the problem is placed at the manifest's route."""
    other = (
        '{"upstreams": [{"name": "billing", "targets": [{"url": "http://127.0.0.1:9001"}]}],'
        ' "routes": [{"name": "billing-api", "path": "/orders", "upstream": "billing"}]}'
    )
    write(deployment.cwd, "policy.json", other)
    deployment.ok("gateway", "apply", "policy.json")
    manifest = (
        GOOD_START
        + '\n[upstream]\ntargets = [{ url = "http://127.0.0.1:9002" }]\n'
        + '\n[[routes]]\nname = "orders-api"\npath = "/orders"\n'
    )
    for args in (("--dry-run",), ()):
        lines = refused_lines(deployment, manifest, *args)
        assert len(lines) == 1, lines
        assert lines[0].startswith("keel: keel.toml:13: routes[0].path: "), lines
        assert "takes the same requests" in lines[0], lines
