"""``keel gateway ...`` as an operator runs it, on SQLite and PostgreSQL: validate, apply (JSON
and YAML), show, routes, revisions, rollback, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.keel_cli import Deployment, initialised_deployment

SERVICES = "auth,audit,gateway"

POLICY = {
    "upstreams": [{"name": "orders", "targets": [{"url": "http://192.0.2.10:8080"}]}],
    "routes": [
        {"name": "orders", "path": "/orders", "upstream": "orders", "methods": ["GET", "POST"]},
        {"name": "health", "path": "/health", "match": "exact", "auth": {"mode": "none"}},
    ],
}

POLICY_YAML = """\
upstreams:
  - name: orders
    targets:
      - url: http://192.0.2.10:8080
routes:
  - name: orders
    path: /v2/orders
    upstream: orders
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    name = f"keel_gw_{uuid.uuid4().hex[:12]}"
    with initialised_deployment(request, tmp_path, name, KEEL_SERVICES=SERVICES) as found:
        yield found


def test_an_operator_validates_applies_lists_and_rolls_back(
    deployment: Deployment, tmp_path: Path
) -> None:
    first = tmp_path / "policy.json"
    first.write_text(json.dumps(POLICY))
    assert deployment.ok("gateway", "validate", str(first)).startswith("valid (2 routes")
    assert "policy revision 1 applied" in deployment.ok(
        "gateway", "apply", str(first), "-m", "launch"
    )
    assert "unchanged at revision 1" in deployment.ok("gateway", "apply", str(first))

    shown = json.loads(deployment.ok("gateway", "show"))
    assert shown["revision"] == 1
    assert [route["name"] for route in shown["policy"]["routes"]] == ["orders", "health"]

    table = deployment.ok("gateway", "routes").splitlines()
    assert table[0].split() == ["NAME", "HOSTS", "METHODS", "PATH", "UPSTREAM", "AUTH"]
    assert table[1].split() == ["orders", "*", "GET,POST", "/orders", "orders", "jwt_or_api_key"]
    assert table[2].split() == ["health", "*", "*", "/health", "(exact)", "-", "none"]

    second = tmp_path / "policy.yaml"
    second.write_text(POLICY_YAML)
    assert "policy revision 2 applied" in deployment.ok(
        "gateway", "apply", str(second), "--if-revision", "1"
    )
    stale = deployment.refused("gateway", "apply", str(first), "--if-revision", "1")
    assert "changed since it was read" in stale

    history = deployment.ok("gateway", "revisions").splitlines()
    assert [line.split("\t")[0] for line in history] == ["2", "1"]
    assert history[1].split("\t")[2] == "system:keel"
    assert history[1].split("\t")[3] == "launch"

    assert "rolled back to revision 1" in deployment.ok("gateway", "rollback", "1")
    assert json.loads(deployment.ok("gateway", "show"))["policy"]["routes"][0]["path"] == "/orders"
    old = json.loads(deployment.ok("gateway", "show", "--revision", "2"))
    assert old["policy"]["routes"][0]["path"] == "/v2/orders"


def test_bad_input_is_one_line_and_exit_code_2(deployment: Deployment, tmp_path: Path) -> None:
    missing = deployment.refused("gateway", "apply", str(tmp_path / "nope.json"))
    assert "cannot read" in missing
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert "is not JSON" in deployment.refused("gateway", "validate", str(broken))

    blocked = tmp_path / "blocked.json"
    blocked.write_text(
        json.dumps(
            {
                "upstreams": [{"name": "meta", "targets": [{"url": "http://0251.0376.0251.0376"}]}],
                "routes": [{"name": "a", "path": "/a", "upstream": "missing"}],
            }
        )
    )
    line = deployment.refused("gateway", "apply", str(blocked))
    assert "upstreams.0.targets.0.url" in line
    assert "routes.0.upstream" in line
    assert "1 routes" not in deployment.ok("gateway", "routes")  # nothing was written
    assert "No revision 7" in deployment.refused("gateway", "rollback", "7")
