"""A gateway replica whose database is unreachable at start (issue 20): ``keel serve
--services gateway`` starts from its last known good copy, says so in its readiness, and
follows the live policy once the database answers; without a copy, or serving anything
more than the gateway, it refuses to start with one line and exit code 1, as before.

(``test_proxy_e2e.py`` checks that such a replica serves the kept routes on SQLite.)
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from keel.gateway.service import PolicySnapshot, save_last_known_good
from keel_client.edge._model import EdgePolicy
from tests.gateway.e2e_support import (
    GatewayDeployment,
    answers,
    echo_app,
    policy,
    pool,
    route,
    start_process,
    wait_until,
)
from tests.gateway.proxy.servers import serve
from tests.support.keel_process import free_port, keel_env, run_keel
from tests.support.tcpproxy import threaded_tcp_proxy

#: Nothing listens on port 1: every connection is refused at once.
UNREACHABLE_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:1/keel"
REFUSAL = "keel: database error: DatabaseUnavailable: The database is unavailable"


def _keep_a_copy(cwd: Path) -> None:
    """A last known good copy of tenant ``default``'s policy where ``keel serve`` in ``cwd``
    looks for it, written as a replica writes it."""
    document = policy([pool("echo", "http://127.0.0.1:9")], route("kept", "/kept", "echo"))
    snapshot = PolicySnapshot(1, EdgePolicy.model_validate(document), None)
    save_last_known_good(cwd / ".keel" / "gateway-policy.json", "default", snapshot)


@pytest.mark.parametrize(
    ("services", "has_copy", "tenant"),
    [
        pytest.param("gateway", False, "default", id="gateway-without-a-copy"),
        pytest.param("gateway", True, "edge", id="gateway-with-another-tenants-copy"),
        pytest.param("auth,gateway", True, "default", id="auth-and-gateway"),
        pytest.param("flags", True, "default", id="another-service"),
    ],
)
def test_a_process_that_cannot_serve_without_its_database_refuses_to_start(
    tmp_path: Path, services: str, has_copy: bool, tenant: str
) -> None:
    if has_copy:
        _keep_a_copy(tmp_path)
    env = keel_env(KEEL_DATABASE_URL=UNREACHABLE_DATABASE, KEEL_GATEWAY__TENANT=tenant)
    env["KEEL_GATEWAY__PROXY_LISTEN"] = f"127.0.0.1:{free_port()}"
    started = run_keel(
        "serve", "--services", services, "--port", str(free_port()), cwd=tmp_path, env=env
    )
    assert started.returncode == 1, started.stderr
    # The refusal's one line, after the warnings logged on the way (another tenant's copy).
    assert started.stderr.splitlines()[-1].startswith(REFUSAL), started.stderr
    assert "Traceback" not in started.stderr


async def test_a_gateway_started_from_its_copy_follows_the_database_once_it_answers(
    shared_deployment: GatewayDeployment, tmp_path: Path
) -> None:
    database = make_url(shared_deployment.env["KEEL_DATABASE_URL"])
    admin_dir = tmp_path / "admin"
    admin_dir.mkdir()
    copy_path = tmp_path / ".keel" / "gateway-policy.json"
    kept = route("kept", "/kept", "echo")
    private = route("private", "/private", "echo", auth={"mode": "api_key"})
    async with serve(echo_app("echo")) as upstream:
        echo = pool("echo", upstream)
        with shared_deployment.serve() as first:
            await shared_deployment.put_policy(first, policy([echo], kept, private))

            async def copy_kept() -> bool:
                return copy_path.exists() and json.loads(copy_path.read_text())["revision"] == 1

            await wait_until(copy_kept)
        with threaded_tcp_proxy(database.host or "127.0.0.1", database.port or 5432) as line:
            line.cut()  # the replica's database refuses connections
            proxy_port, admin_port = free_port(), free_port()
            away = {
                **shared_deployment.env,
                "KEEL_DATABASE_URL": database.set(port=line.port).render_as_string(
                    hide_password=False
                ),
                "KEEL_GATEWAY__PROXY_LISTEN": f"127.0.0.1:{proxy_port}",
            }
            command = ("serve", "--services", "gateway", "--port", str(admin_port))
            with start_process(*command, cwd=tmp_path, env=away) as (process, log_path):
                proxy_url, admin_url = (
                    f"http://127.0.0.1:{proxy_port}",
                    f"http://127.0.0.1:{admin_port}",
                )

                async def serves(path: str) -> bool:
                    if process.poll() is not None:
                        raise AssertionError(f"keel serve exited:\n{log_path.read_text()}")
                    async with httpx.AsyncClient(timeout=2) as http:
                        return await answers(http, f"{proxy_url}{path}")

                await wait_until(lambda: serves("/kept"), timeout=30, interval=0.1)
                async with httpx.AsyncClient(timeout=10) as http:
                    started = await http.get(f"{admin_url}/health/startup")
                    away_ready = await http.get(f"{admin_url}/health/ready")
                    fresh_while_away = await http.get(f"{proxy_url}/fresh")
                    private_while_away = await http.get(
                        f"{proxy_url}/private", headers=shared_deployment.headers
                    )

                # The policy changes while the replica is away from its database.
                with shared_deployment.serve(cwd=admin_dir) as admin:
                    fresh = route("fresh", "/fresh", "echo")
                    await shared_deployment.put_policy(admin, policy([echo], kept, private, fresh))

                line.restore()
                await wait_until(lambda: serves("/fresh"), timeout=30, interval=0.1)
                async with httpx.AsyncClient(timeout=10) as http:
                    await wait_until(lambda: answers(http, f"{admin_url}/health/ready"), timeout=30)
                    private_once_back = await http.get(
                        f"{proxy_url}/private", headers=shared_deployment.headers
                    )
                log = log_path.read_text()

    assert started.status_code == 200
    assert away_ready.status_code == 503
    checks = away_ready.json()["checks"]
    assert checks["database"]["status"] == "fail"
    assert checks["gateway"]["status"] == "fail"
    assert "serving the last known good copy (revision 1)" in checks["gateway"]["error"]
    assert fresh_while_away.status_code == 404
    # Credentials are checked against the database: none is refused for its absence.
    assert private_while_away.status_code == 503
    assert private_once_back.status_code == 200

    assert "keel.database.unavailable_at_start" in log
    assert "gateway.policy.local_copy" in log
    assert "keel.database.ready" in log
    copy = json.loads(copy_path.read_text())
    assert copy["revision"] == 2  # the replica kept the live policy once it read it
