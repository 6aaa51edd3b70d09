"""``keel_client.testing`` as a service uses it: a service project's own pytest run (a child
process) with ``pytest_plugins = ["keel_client.testing"]``, its tests calling a real Keel —
flags read, audit events written — on SQLite and on PostgreSQL, and no server left behind."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.testing.service_project import MANIFEST, run_service_tests, write_service
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


def test_the_manifest_at_the_rootdir_is_applied_and_the_tests_call_as_its_service_account(
    tmp_path: Path, database_url: str | None
) -> None:
    project = write_service(tmp_path, manifest=MANIFEST)
    variables = {"ORDERS_KEEL_DATABASE_URL": database_url} if database_url else {}

    run = run_service_tests(project, **variables)

    assert run.returncode == 0, run.output
    assert "3 passed" in run.output, run.output
    assert run.record["manifest"] == str((project / "keel.toml").resolve())
    assert run.record["is_service_token_admin"] is False
    assert run.principal == {"type": "service_account", "roles": ["orders-service"]}
    assert not is_alive(run.record["pid"])


@pytest.mark.parametrize("named_by", ["ini", "env"])
def test_a_manifest_elsewhere_is_named_by_the_ini_option_or_the_environment(
    tmp_path: Path, named_by: str
) -> None:
    project = write_service(tmp_path, manifest=MANIFEST, manifest_path="deploy/keel.toml")
    variables = {}
    if named_by == "ini":
        with (project / "pyproject.toml").open("a") as pyproject:
            pyproject.write('keel_manifest = "deploy/keel.toml"\n')
    else:
        variables["KEEL_MANIFEST"] = str(project / "deploy" / "keel.toml")

    run = run_service_tests(project, **variables)

    assert run.returncode == 0, run.output
    assert run.record["manifest"] == str((project / "deploy" / "keel.toml").resolve())
    assert run.principal == {"type": "service_account", "roles": ["orders-service"]}


def test_a_manifest_keel_apply_refuses_fails_the_tests_with_its_problems(tmp_path: Path) -> None:
    project = write_service(tmp_path, manifest=MANIFEST + "\n[queues.orders-default]\nspeed = 1\n")

    run = run_service_tests(project)

    assert run.returncode == 1, run.output
    assert "EmbeddedKeelError: `keel apply" in run.output
    assert "failed with exit code 2" in run.output
    assert "keel.toml:15: queues.orders-default.speed: unknown key" in run.output, run.output


def test_a_manifest_named_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    project = write_service(tmp_path)

    run = run_service_tests(project, KEEL_MANIFEST="missing.toml")

    assert run.returncode == 1, run.output
    assert "KEEL_MANIFEST names" in run.output
    assert "missing.toml, which is not a file" in run.output
