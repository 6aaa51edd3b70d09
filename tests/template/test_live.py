"""A generated service started against a running Keel, as two replicas (uvicorn processes):
its requests become its audit events in Keel, a flag flipped in Keel changes its answer
without a restart, and its rate limit (a gateway route of its keel.toml, counted in Keel)
holds across both replicas."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel_client.testing import EmbeddedKeel
from tests.support.databases import database_for
from tests.template.generation import PACKAGE, SLUG, generate

DEADLINE = 30.0
ENV_PREFIX = f"{PACKAGE.upper()}_"


def eventually(check: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def replica(project: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """One replica of the service: ``uvicorn --factory <package>.app:create_app``, as
    ``make serve`` runs it, until its readiness (Keel included) answers 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", f"{PACKAGE}.app:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
            cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:

            def ready() -> bool:
                assert process.poll() is None, log.read_text()[-4000:]
                try:
                    return httpx.get(f"{url}/health/ready", timeout=5.0).status_code == 200
                except httpx.HTTPError:
                    return False

            eventually(ready, f"the replica on {port} ready", timeout=60.0)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    with database_for(request, "keel_template_live") as url:
        yield url


def test_two_replicas_of_a_generated_service_against_a_running_keel(
    tmp_path: Path, database_url: str | None
) -> None:
    project = generate(tmp_path / "generated")
    with (
        EmbeddedKeel(manifest=project / "keel.toml", database_url=database_url) as keel,
        httpx.Client(
            base_url=keel.url,
            headers={"Authorization": f"Bearer {keel.admin_token}"},
            timeout=30.0,
        ) as admin,
    ):
        # What an operator does once, as the generated README says: the service's secret.
        secret = f"apps/{SLUG}/payments"
        policy = f'path "secret/data/{secret}" {{ capabilities = ["read"] }}'
        admin.put(f"/secrets/v1/sys/policies/acl/{SLUG}", json={"policy": policy})
        admin.post(f"/secrets/v1/secret/data/{secret}", json={"data": {"api_key": "pk_live_1"}})

        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("KEEL_", ENV_PREFIX))}
        replicas = []
        with contextlib.ExitStack() as stack:
            for name in ("a", "b"):
                env = {
                    **base_env,
                    **keel.env,  # KEEL_URL and the service account's own key
                    "PYTHONPATH": str(project / "src"),
                    f"{ENV_PREFIX}AUDIT_SPOOL_DIR": str(tmp_path / name / "audit"),
                    f"{ENV_PREFIX}FLAGS_CACHE_DIR": str(tmp_path / name / "flags"),
                }
                replicas.append(
                    stack.enter_context(replica(project, env, tmp_path / f"replica-{name}.log"))
                )
            caller = {"Authorization": f"Bearer {keel.admin_token}"}
            with httpx.Client(timeout=30.0, headers=caller) as service:
                audit_trail(service, admin, replicas)
                flag_flip(service, admin, replicas)
                shared_rate_limit(service, replicas)


def audit_trail(service: httpx.Client, admin: httpx.Client, replicas: list[str]) -> None:
    """Each replica's order is an event of the service's own action in Keel's audit log,
    with the request's id."""
    placed = {}
    for number, url in enumerate(replicas):
        request_id = f"live-order-{number}"
        answer = service.post(
            f"{url}/orders",
            json={"customer": f"c-{number}", "amount": "99.90", "currency": "EUR"},
            headers={"X-Request-ID": request_id},
        )
        assert answer.status_code == 201, answer.text
        placed[answer.json()["id"]] = request_id

    def recorded() -> dict[str, str] | None:
        page = admin.get("/audit/v1/events", params={"action": f"{PACKAGE}.order.create"})
        page.raise_for_status()
        found = {e["target"]["id"]: e["request_id"] for e in page.json()["items"]}
        return found if all(order in found for order in placed) else None

    found = eventually(recorded, "both replicas' orders in Keel's audit log")
    assert {order: found[order] for order in placed} == placed


def flag_flip(service: httpx.Client, admin: httpx.Client, replicas: list[str]) -> None:
    """The flag flipped in Keel reaches both running replicas."""

    def flows() -> set[str]:
        return {service.get(f"{url}/checkout").json()["flow"] for url in replicas}

    assert flows() == {"classic"}
    toggled = admin.post(
        f"/flags/v1/envs/development/flags/{SLUG}-new-checkout/toggle",
        json={"on": True, "comment": "live test"},
    )
    assert toggled.status_code == 200, toggled.text
    eventually(lambda: flows() == {"new"}, "both replicas serving the new checkout")


def shared_rate_limit(service: httpx.Client, replicas: list[str]) -> None:
    """5 quotes in all across the two replicas (keel.toml's token bucket), then 429 from
    either."""
    statuses = [
        service.get(f"{replicas[n % 2]}/quotes", params={"amount": "10.00"}).status_code
        for n in range(5)
    ]
    assert statuses == [200] * 5
    for url in replicas:
        refused = service.get(f"{url}/quotes", params={"amount": "10.00"})
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
