"""A tiny service project, written to a directory, whose own tests use
``keel_client.testing`` as a service of the fleet would; and a run of its pytest in a child
process, as the service's ``make test`` runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The service's code: where the new checkout is on, a placed order is audited as such.
ORDERS = '''
from keel_client import Keel
from keel_client.audit import EventTarget, build_event

ENVIRONMENT = "test"


async def place_order(order_id: str, customer: str) -> str:
    """Place an order; the checkout it went through ("new" or "classic")."""
    async with Keel.from_env() as keel:
        async with keel.flags.client(ENVIRONMENT) as flags:
            is_new = flags.is_enabled("new-checkout", {"key": customer})
        checkout = "new" if is_new else "classic"
        event = build_event(
            "orders.order.place",
            target=EventTarget("order", order_id),
            data={"checkout": checkout},
        )
        await keel.audit.send_events([event])
    return checkout
'''

CONFTEST = """
import os

import pytest

pytest_plugins = ["keel_client.testing"]


@pytest.fixture(scope="session")
def keel_server_options():
    url = os.environ.get("ORDERS_KEEL_DATABASE_URL")
    return {"database_url": url} if url else {}
"""

#: The service's tests. The first records the server it got for the outer test to check.
TESTS = """
import json
import os
from pathlib import Path

import httpx

from orders import place_order


def test_the_server_is_ready(keel_server):
    Path(os.environ["ORDERS_RECORD"]).write_text(json.dumps({
        "pid": keel_server.pid,
        "url": keel_server.url,
        "data_dir": str(keel_server.data_dir),
        "is_service_token_admin": keel_server.service_token == keel_server.admin_token,
        "manifest": str(keel_server.manifest),
    }))
    assert httpx.get(keel_server.url + "/health/ready").status_code == 200


async def test_an_order_goes_through_the_flagged_checkout_and_is_audited(keel_server, keel_env):
    assert os.environ["KEEL_URL"] == keel_server.url == keel_env["KEEL_URL"]
    if keel_server.manifest is None:  # else the manifest made them
        keel_server.keel("flags", "envs", "create", "test")
        keel_server.keel("flags", "create", "new-checkout")
    async with keel_server.client(keel_server.admin_token) as admin:
        await admin.audit.register_action("orders.order.place", description="An order placed")
    assert await place_order("o-1", "ana") == "classic"
    keel_server.keel("flags", "toggle", "test", "new-checkout", "on", "-m", "launch")
    assert await place_order("o-2", "ana") == "new"

    async with keel_server.client(keel_server.admin_token) as admin:
        page = await admin.audit.list_events(action="orders.order.")
    checkouts = {event["target"]["id"]: event["data"]["checkout"] for event in page.items}
    assert checkouts == {"o-1": "classic", "o-2": "new"}


def test_the_blocking_client_reads_as_the_service(keel_server):
    with keel_server.sync_client() as keel:
        principal = keel.auth.me(keel_server.service_token)
    Path(os.environ["ORDERS_RECORD"] + ".me").write_text(json.dumps({
        "type": principal.principal_type, "roles": sorted(principal.roles),
    }))
"""

PYPROJECT = """
[tool.pytest.ini_options]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
"""

#: The manifest of the service: its account, a role to read its flags and write its events,
#: the flag environment and the flag.
MANIFEST = """
flag_environments = ["test"]

[service]
name = "orders"
roles = ["orders-service"]

[roles.orders-service]
permissions = ["flags:flags:read", "flags:test:read", "audit:event:write"]

[flags.new-checkout]
type = "boolean"
"""


@dataclass
class ServiceRun:
    """One run of the service's tests: pytest's output and what the tests recorded."""

    returncode: int
    output: str
    record_path: Path

    @property
    def record(self) -> dict[str, Any]:
        return dict(json.loads(self.record_path.read_text()))

    @property
    def principal(self) -> dict[str, Any]:
        return dict(json.loads(Path(f"{self.record_path}.me").read_text()))


def write_service(
    root: Path, *, manifest: str | None = None, manifest_path: str = "keel.toml"
) -> Path:
    """The project under ``root / "orders"``; with ``manifest`` at ``manifest_path``."""
    project = root / "orders"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "conftest.py").write_text(CONFTEST)
    (project / "orders.py").write_text(ORDERS)
    (project / "test_orders.py").write_text(TESTS)
    if manifest is not None:
        (project / manifest_path).parent.mkdir(parents=True, exist_ok=True)
        (project / manifest_path).write_text(manifest)
    return project


def run_service_tests(project: Path, **variables: str) -> ServiceRun:
    """``python -m pytest`` in the project, with this process's environment but nothing of
    pytest's own run nor any ``KEEL_*`` setting of the developer's shell."""
    record = project.parent / "record.json"
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTEST_", "KEEL_")) and name != "PYTHONPATH"
    }
    env.update(variables, ORDERS_RECORD=str(record))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return ServiceRun(done.returncode, done.stdout + done.stderr, record)
