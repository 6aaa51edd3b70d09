"""``keel_client.testing`` as a service uses it: a service project's own pytest run (a child
process) with ``pytest_plugins = ["keel_client.testing"]``, its tests calling a real Keel —
flags read, audit events written — on SQLite and on PostgreSQL, and no server left behind."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.testing.service_project import run_service_tests, write_service
from tests.support.databases import database_for


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    with database_for(request, "keel_testing") as url:
        yield url


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def accepts_connections(url: str) -> bool:
    host, _, port = url.removeprefix("http://").partition(":")
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, int(port))) == 0


def test_the_service_tests_run_against_an_embedded_keel_that_stops_after(
    tmp_path: Path, database_url: str | None
) -> None:
    project = write_service(tmp_path)
    variables = {"ORDERS_KEEL_DATABASE_URL": database_url} if database_url else {}

    run = run_service_tests(project, **variables)

    assert run.returncode == 0, run.output
    assert "3 passed" in run.output, run.output
    record = run.record
    assert record["is_service_token_admin"] is True  # no manifest: the admin's key
    assert run.principal == {"type": "user", "roles": ["admin"]}
    # The session's server is gone with the session, and so is nothing else of it.
    assert not is_alive(record["pid"])
    assert not accepts_connections(record["url"])
    # Its data stayed in pytest's temporary directory: SQLite there, or none on PostgreSQL.
    assert (Path(record["data_dir"]) / "keel.db").exists() is (database_url is None)


def test_a_server_that_cannot_start_fails_the_tests_with_its_log(tmp_path: Path) -> None:
    project = write_service(tmp_path)
    (project / "conftest.py").write_text(
        'pytest_plugins = ["keel_client.testing"]\n\n'
        "import pytest\n\n\n"
        '@pytest.fixture(scope="session")\n'
        "def keel_server_options():\n"
        '    return {"env": {"KEEL_HOST": "192.0.2.1"}}  # an address of no interface here\n'
    )

    run = run_service_tests(project)

    assert run.returncode == 1, run.output
    assert "EmbeddedKeelError: keel serve exited with code" in run.output
    assert "error while attempting to bind on address ('192.0.2.1'" in run.output
    assert "3 errors" in run.output, run.output
