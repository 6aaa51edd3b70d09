"""``keel flags ...`` as an operator runs it, on SQLite and PostgreSQL: environments, create,
list, show, toggle (the kill switch) and stale; bad input is one line with exit code 2. The
commands run in-process through the ``keel`` script's entry point (:mod:`tests.support.keel_cli`);
``tests/test_cli.py`` runs the script itself."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.flags.cli import parse_variation
from tests.support.keel_cli import Deployment, initialised_deployment


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    name = f"keel_flags_{uuid.uuid4().hex[:12]}"
    with initialised_deployment(request, tmp_path, name) as found:
        yield found


def test_an_operator_defines_shows_toggles_and_lists_stale_flags(deployment: Deployment) -> None:
    deployment.ok("flags", "envs", "create", "production", "--description", "live")
    assert "production\tversion 1\tlive" in deployment.ok("flags", "envs", "list")
    assert "off in every environment" in deployment.ok(
        "flags", "create", "checkout-v2", "--tag", "web", "--owner", "payments"
    )
    deployment.ok(
        "flags",
        "create",
        "banner",
        "--type",
        "string",
        "--variation",
        "blue=blue",
        "--variation",
        'red="red"',
        "--experiment",
    )
    listed = deployment.ok("flags", "list").splitlines()
    assert listed == [
        "banner\tstring\tblue,red\t\t",
        "checkout-v2\tboolean\ton,off\tweb\tpayments",
    ]
    assert deployment.ok("flags", "list", "--tag", "web").startswith("checkout-v2")

    toggled = deployment.ok("flags", "toggle", "production", "checkout-v2", "on", "-m", "launch")
    assert "checkout-v2 is on in production (state version 2, snapshot version 4)" in toggled
    shown = json.loads(deployment.ok("flags", "show", "checkout-v2"))
    assert shown["type"] == "boolean"
    assert shown["environments"]["production"]["on"] is True
    assert shown["environments"]["production"]["fallthrough"] == {"variation": "on"}
    updated = shown["environments"]["production"]["updated_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", updated)  # as the API
    one = json.loads(deployment.ok("flags", "show", "banner", "--env", "production"))
    assert one["experiment"] is True
    assert one["environments"]["production"]["on"] is False

    # On with its first variation for everybody: fully rolled out.
    stale = deployment.ok("flags", "stale", "production", "--days", "30").splitlines()
    assert stale == ["checkout-v2\tfully-rolled-out\tlast evaluated never\tserving on"]
    deployment.ok("flags", "toggle", "production", "checkout-v2", "off")
    assert deployment.ok("flags", "stale", "production").strip() == "no stale flags in production"
    assert "production\tversion 5\tlive" in deployment.ok("flags", "envs", "list")


def test_bad_input_is_one_line_and_exit_code_2(deployment: Deployment) -> None:
    deployment.ok("flags", "envs", "create", "staging")
    assert "exists already" in deployment.refused("flags", "envs", "create", "staging")
    assert "reserved" in deployment.refused("flags", "envs", "create", "flags")
    assert "--type" in deployment.refused("flags", "create", "x", "--type", "float")
    assert "ID=VALUE" in deployment.refused("flags", "create", "x", "--variation", "novalue")
    refused = deployment.refused(
        "flags", "create", "x", "--type", "number", "--variation", "a=text"
    )
    assert "variations[0].value" in refused
    assert "needs its variations" in deployment.refused("flags", "create", "x", "--type", "string")
    assert "No flag 'ghost'" in deployment.refused("flags", "toggle", "staging", "ghost", "on")
    deployment.ok("flags", "create", "beta")
    assert "on or off" in deployment.refused("flags", "toggle", "staging", "beta", "maybe")
    assert "No flags environment" in deployment.refused("flags", "stale", "nowhere")
    assert "no tenant" in deployment.refused("flags", "list", "--tenant", "nope").lower()


def test_variations_on_the_command_line_are_json_when_they_parse() -> None:
    assert parse_variation("on=true") == {"id": "on", "value": True}
    assert parse_variation("price=9.5") == {"id": "price", "value": 9.5}
    assert parse_variation("label=plain text") == {"id": "label", "value": "plain text"}
    assert parse_variation('cfg={"a": [1]}') == {"id": "cfg", "value": {"a": [1]}}
    with pytest.raises(ValueError, match="ID=VALUE"):
        parse_variation("=1")
