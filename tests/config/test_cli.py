"""``keel config ...`` as an operator runs it, on SQLite and PostgreSQL: applications and
environments, set/get, history, diff, rollback, promotion with its preview, and bad input as
one line with exit code 2. The commands run in-process through the ``keel`` script's entry
point (:mod:`tests.support.keel_cli`); ``tests/test_cli.py`` runs the script itself."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.config.cli import parse_assignments, parse_value
from tests.support.config_api import SERVICES
from tests.support.keel_cli import Deployment, initialised_deployment


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    name = f"keel_cfg_{uuid.uuid4().hex[:12]}"
    with initialised_deployment(request, tmp_path, name, KEEL_SERVICES=SERVICES) as found:
        yield found


def test_an_operator_sets_compares_rolls_back_and_promotes(
    deployment: Deployment, tmp_path: Path
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"properties": {"workers": {"type": "integer", "minimum": 1}}}))
    deployment.ok("config", "apps", "create", "billing", "--schema", str(schema))
    deployment.ok("config", "envs", "create", "billing", "staging")
    deployment.ok("config", "envs", "create", "billing", "production")

    assert "revision 2" in deployment.ok(
        "config", "set", "billing", "staging", "workers=4", "name=billing api", "-m", "first"
    )
    assert "revision 3" in deployment.ok(
        "config", "set", "billing", "staging", 'limits={"rps": 50}', "--unset", "name"
    )
    assert json.loads(deployment.ok("config", "get", "billing", "staging")) == {
        "limits": {"rps": 50},
        "workers": 4,
    }
    assert json.loads(deployment.ok("config", "get", "billing", "staging", "workers")) == 4
    old = json.loads(deployment.ok("config", "get", "billing", "staging", "--revision", "2"))
    assert old == {"name": "billing api", "workers": 4}

    refused = deployment.refused("config", "set", "billing", "staging", "workers=0")
    assert "$.workers (minimum" in refused
    stale = deployment.refused(
        "config", "set", "billing", "staging", "workers=5", "--if-revision", "2"
    )
    assert "changed since it was read" in stale

    history = deployment.ok("config", "history", "billing", "staging").splitlines()
    assert [line.split("\t")[0] for line in history] == ["3", "2", "1"]
    for line in history:  # when, as the API writes it (RFC 3339, UTC as Z)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", line.split("\t")[1]), line
    assert history[1].endswith("\tfirst")
    assert "system:keel" in history[0]

    diff = deployment.ok("config", "diff", "billing", "staging", "2", "3").splitlines()
    assert sorted(diff) == ['+ limits = {"rps": 50}', '- name = "billing api"']

    assert "revision 4" in deployment.ok("config", "rollback", "billing", "staging", "2")
    assert json.loads(deployment.ok("config", "get", "billing", "staging"))["name"] == "billing api"

    preview = deployment.ok("config", "promote", "billing", "staging", "production")
    assert "staging@4 -> production@1" in preview
    assert "+ workers = 4" in preview
    assert "not applied" in preview
    assert json.loads(deployment.ok("config", "get", "billing", "production")) == {}
    applied = deployment.ok(
        "config", "promote", "billing", "staging", "production", "--key", "workers", "--yes"
    )
    assert "applied: billing/production revision 2" in applied
    assert json.loads(deployment.ok("config", "get", "billing", "production")) == {"workers": 4}


def test_bad_input_is_one_line_and_exit_code_2(deployment: Deployment) -> None:
    assert "config application 'nope'" in deployment.refused("config", "get", "nope", "prod")
    deployment.ok("config", "apps", "create", "shop")
    assert "exists already" in deployment.refused("config", "apps", "create", "shop")
    assert "name" in deployment.refused("config", "apps", "create", "Not Valid")
    deployment.ok("config", "envs", "create", "shop", "dev")
    assert "KEY=VALUE" in deployment.refused("config", "set", "shop", "dev", "novalue")
    assert "nothing to change" in deployment.refused("config", "set", "shop", "dev")
    assert "key" in deployment.refused("config", "set", "shop", "dev", "bad key=1").lower()
    assert "no revision 9" in deployment.refused("config", "rollback", "shop", "dev", "9").lower()
    assert "No tenant" in deployment.refused("config", "get", "shop", "dev", "--tenant", "nope")
    missing = deployment.refused("config", "apps", "create", "x", "--schema", "/no/such.json")
    assert "cannot read" in missing


def test_values_on_the_command_line_are_json_when_they_parse() -> None:
    assert parse_value("3") == 3
    assert parse_value("true") is True
    assert parse_value('{"a": [1]}') == {"a": [1]}
    assert parse_value('"7"') == "7"
    assert parse_value("plain text") == "plain text"
    assert parse_assignments(["a=1", "b=x=y"]) == {"a": 1, "b": "x=y"}
    with pytest.raises(ValueError, match="set twice"):
        parse_assignments(["a=1", "a=2"])
