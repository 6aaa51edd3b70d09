"""``EmbeddedKeel`` used directly (no pytest plugin): a real ``keel serve`` started, used
through the SDK, and stopped; its data directory kept or removed; its refusals and errors."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keel_client.testing import EmbeddedKeel, EmbeddedKeelError
from keel_client.testing._commands import find_keel_executable
from tests.client.testing.test_plugin import accepts_connections, is_alive
from tests.support.databases import database_for


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    with database_for(request, "keel_embedded") as url:
        yield url


def me(keel: EmbeddedKeel, token: str) -> httpx.Response:
    return httpx.get(
        f"{keel.url}/auth/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def test_the_exported_names_are_the_curated_list() -> None:
    import keel_client.testing

    assert set(keel_client.testing.__all__) == {
        "EmbeddedKeel", "EmbeddedKeelError",
        "keel_env", "keel_server", "keel_server_options", "pytest_addoption",
    }  # fmt: skip


def test_importing_it_imports_neither_the_server_nor_the_http_stack() -> None:
    code = (
        "import sys, keel_client.testing; "
        "print(sorted({'keel', 'httpx', 'keel_client._keel'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


async def test_a_started_keel_serves_the_sdk_and_stops_with_its_temporary_data(
    database_url: str | None,
) -> None:
    async with EmbeddedKeel(database_url=database_url) as keel:
        assert me(keel, keel.admin_token).json()["roles"] == ["admin"]
        assert keel.env == {"KEEL_URL": keel.url, "KEEL_TOKEN": keel.admin_token}
        async with keel.client() as client:
            await client.audit.register_action("orders.order.place", description="Placed")
            page = await client.audit.list_events(action="orders.")
        assert page.items == []
        assert (keel.data_dir / "keel.db").exists() is (database_url is None)
        pid, url, data_dir = keel.pid, keel.url, keel.data_dir
    assert not is_alive(pid)
    assert not accepts_connections(url)
    assert not data_dir.exists()
    assert not keel.is_running


def test_a_data_directory_of_ones_own_is_kept_and_used_again(tmp_path: Path) -> None:
    with EmbeddedKeel(data_dir=tmp_path) as first:
        first.keel("flags", "envs", "create", "test")
        first_token = first.admin_token
    assert (tmp_path / "keel.db").exists()
    assert (tmp_path / "keel.log").exists()

    with EmbeddedKeel(data_dir=tmp_path) as second:
        # The admin exists already: a new key of it, the first one still valid.
        assert second.admin_token != first_token
        assert me(second, second.admin_token).status_code == 200
        assert me(second, first_token).status_code == 200
        with second.sync_client() as client, client.flags.client("test") as flags:
            assert flags.is_enabled("anything", {"key": "u"}) is False


def test_only_the_services_asked_for_are_served() -> None:
    with EmbeddedKeel(services=["auth", "flags"]) as keel:
        headers = {"Authorization": f"Bearer {keel.admin_token}"}
        assert httpx.get(f"{keel.url}/flags/v1/envs", headers=headers).status_code == 200
        assert httpx.get(f"{keel.url}/audit/v1/events", headers=headers).status_code == 404


def test_refusals_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="'auth'"):
        EmbeddedKeel(services=["flags"])
    with pytest.raises(ValueError, match="KEEL_\\* settings only, not 'PATH'"):
        EmbeddedKeel(env={"PATH": "/"})
    keel = EmbeddedKeel()
    with pytest.raises(RuntimeError, match="not started"):
        _ = keel.url


def test_a_missing_server_distribution_is_named_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedKeelError, match=r"not installed.*\(pip install keel"):
        find_keel_executable()
    with pytest.raises(EmbeddedKeelError, match="no keel executable at"):
        EmbeddedKeel(executable=tmp_path / "keel").start()


def test_a_failing_command_is_reported_with_its_output(tmp_path: Path) -> None:
    keel = EmbeddedKeel(data_dir=tmp_path, env={"KEEL_DATABASE_URL": "mysql://nowhere/keel"})
    with pytest.raises(EmbeddedKeelError, match="`keel migrate` failed with exit code 2") as error:
        keel.start()
    assert "KEEL_DATABASE_URL: must be a sqlite or postgresql URL" in str(error.value)
    assert not keel.is_running


@pytest.mark.postgres
def test_a_database_that_does_not_exist_is_reported(postgres_admin_url: str) -> None:
    name = f"missing_{uuid.uuid4().hex[:8]}"
    url = postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"
    with pytest.raises(EmbeddedKeelError, match="`keel migrate` failed") as error:
        EmbeddedKeel(database_url=url).start()
    assert f'database "{name}" does not exist' in str(error.value)
