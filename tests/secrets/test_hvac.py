"""The real ``hvac`` client, unchanged, against a running ``keel serve``: every call of the KV
version 2 API, check-and-set conflicts, mounts, policies, health and token lookup."""

from __future__ import annotations

from collections.abc import Iterator

import hvac
import pytest
from hvac.exceptions import Forbidden, InvalidPath, InvalidRequest

from tests.support.databases import database_for
from tests.support.keel_cli import initialise
from tests.support.keel_process import KeelServer, keel_env, keel_server


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KeelServer, str]]:
    """``keel init`` then ``keel serve``, on SQLite and on a fresh PostgreSQL database, shared
    by this module's tests (each writes under paths of its own): the server and the
    administrator's API key."""
    tmp_path = tmp_path_factory.mktemp("hvac")
    with database_for(request, "keel_hvac") as url:
        env = keel_env() if url is None else keel_env(KEEL_DATABASE_URL=url)
        admin_key = initialise(tmp_path, env)
        with keel_server(tmp_path, env) as server:
            yield server, admin_key


def vault(server: KeelServer, token: str) -> hvac.Client:
    return hvac.Client(url=f"{server.base_url}/secrets", token=token)


def billing_secrets_and_policy(server: KeelServer, admin_key: str) -> hvac.Client:
    """Two secrets and a policy reading only the first, written with hvac; the admin client."""
    admin = vault(server, admin_key)
    admin.secrets.kv.v2.create_or_update_secret(path="apps/billing/db", secret={"p": "1"})
    admin.secrets.kv.v2.create_or_update_secret(path="apps/web/db", secret={"p": "2"})
    admin.sys.create_or_update_policy(
        name="billing-read",
        policy='path "secret/data/apps/billing/*" {\n  capabilities = ["read"]\n}\n',
    )
    return admin


@pytest.mark.filterwarnings("ignore:The raise_on_deleted_version:DeprecationWarning")
def test_every_kv_v2_call_works_from_hvac(served: tuple[KeelServer, str]) -> None:
    server, admin_key = served
    client = vault(server, admin_key)
    kv = client.secrets.kv.v2
    assert client.is_authenticated()
    assert client.lookup_token()["data"]["policies"] == ["root"]
    assert client.sys.read_health_status(method="GET")["sealed"] is False

    path = "kv1/billing/db"
    first = kv.create_or_update_secret(path=path, secret={"password": "hunter2-first"})
    assert first["data"]["version"] == 1
    assert kv.read_secret_version(path=path, raise_on_deleted_version=True)["data"]["data"] == {
        "password": "hunter2-first"
    }
    # Check-and-set: 0 writes only a new secret, n only over version n.
    with pytest.raises(InvalidRequest, match="check-and-set"):
        kv.create_or_update_secret(path=path, secret={"password": "x"}, cas=0)
    assert (
        kv.create_or_update_secret(path=path, secret={"password": "p2"}, cas=1)["data"]["version"]
        == 2
    )
    with pytest.raises(InvalidRequest, match="did not match"):
        kv.create_or_update_secret(path=path, secret={"password": "p3"}, cas=1)
    assert kv.patch(path=path, secret={"user": "bill"})["data"]["version"] == 3
    current = kv.read_secret_version(path=path, raise_on_deleted_version=True)["data"]
    assert current["data"] == {"password": "p2", "user": "bill"}
    assert current["metadata"]["version"] == 3
    older = kv.read_secret_version(path=path, version=1, raise_on_deleted_version=True)
    assert older["data"]["data"] == {"password": "hunter2-first"}

    kv.create_or_update_secret(path="kv1/billing/api", secret={"key": "k"})
    kv.create_or_update_secret(path="kv1/web", secret={"key": "w"})
    assert kv.list_secrets(path="kv1")["data"]["keys"] == ["billing/", "web"]
    assert kv.list_secrets(path="kv1/billing")["data"]["keys"] == ["api", "db"]
    with pytest.raises(InvalidPath):
        kv.list_secrets(path="nothing/here")

    kv.update_metadata(
        path=path, max_versions=5, cas_required=True, custom_metadata={"owner": "billing"}
    )
    metadata = kv.read_secret_metadata(path=path)["data"]
    assert metadata["current_version"] == 3
    assert metadata["max_versions"] == 5
    assert metadata["cas_required"] is True
    assert metadata["custom_metadata"] == {"owner": "billing"}
    with pytest.raises(InvalidRequest, match="required"):
        kv.create_or_update_secret(path=path, secret={"password": "no cas"})

    kv.delete_latest_version_of_secret(path=path)
    with pytest.raises(InvalidPath):
        kv.read_secret_version(path=path, raise_on_deleted_version=True)
    kv.undelete_secret_versions(path=path, versions=[3])
    assert (
        kv.read_secret_version(path=path, raise_on_deleted_version=True)["data"]["data"]["user"]
        == "bill"
    )
    kv.delete_secret_versions(path=path, versions=[1])
    kv.destroy_secret_versions(path=path, versions=[2])
    versions = kv.read_secret_metadata(path=path)["data"]["versions"]
    assert versions["1"]["deletion_time"] != ""
    assert versions["2"]["destroyed"] is True
    kv.undelete_secret_versions(path=path, versions=[2])  # a destroyed version stays so
    with pytest.raises(InvalidPath):
        kv.read_secret_version(path=path, version=2, raise_on_deleted_version=True)

    kv.delete_metadata_and_all_versions(path=path)
    with pytest.raises(InvalidPath):
        kv.read_secret_metadata(path=path)

    client.sys.enable_secrets_engine(backend_type="kv", path="team", options={"version": "2"})
    assert {"secret/", "team/"} <= set(client.sys.list_mounted_secrets_engines()["data"])
    kv.configure(max_versions=2, mount_point="team")
    assert kv.read_configuration(mount_point="team")["data"]["max_versions"] == 2
    for number in range(3):
        kv.create_or_update_secret(path="rotating", secret={"n": number}, mount_point="team")
    kept = kv.read_secret_metadata(path="rotating", mount_point="team")["data"]
    assert (kept["oldest_version"], sorted(kept["versions"])) == (2, ["2", "3"])


def test_an_approle_less_service_reads_what_its_policy_grants_and_nothing_else(
    served: tuple[KeelServer, str],
) -> None:
    """A policy written with hvac, held by a role, limits a service account's token."""
    server, admin_key = served
    admin = billing_secrets_and_policy(server, admin_key)
    assert "billing-read" in admin.sys.list_policies()["data"]["policies"]
    headers = {"Authorization": f"Bearer {admin_key}"}
    with server.client() as http:
        role = http.post(
            "/auth/v1/roles",
            json={"name": "billing", "permissions": ["secrets:policy:billing-read"]},
            headers=headers,
        )
        assert role.status_code == 201, role.text
        account = http.post(
            "/auth/v1/service-accounts",
            json={"name": "billing", "roles": ["billing"]},
            headers=headers,
        ).json()
        token = http.post(
            "/auth/v1/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(account["client_id"], account["client_secret"]),
        ).json()["access_token"]

    service = vault(server, token)
    assert service.lookup_token()["data"]["policies"] == ["billing-read"]
    read = service.secrets.kv.v2.read_secret_version(
        path="apps/billing/db", raise_on_deleted_version=True
    )
    assert read["data"]["data"] == {"p": "1"}
    with pytest.raises(Forbidden):
        service.secrets.kv.v2.read_secret_version(path="apps/web/db", raise_on_deleted_version=True)
    with pytest.raises(Forbidden):
        service.secrets.kv.v2.create_or_update_secret(path="apps/billing/db", secret={"p": "x"})
    with pytest.raises(Forbidden):
        vault(server, "not-a-token").secrets.kv.v2.read_secret_version(
            path="apps/billing/db", raise_on_deleted_version=True
        )


def test_approle_login_gives_a_token_limited_to_its_policies(
    served: tuple[KeelServer, str],
) -> None:
    server, admin_key = served
    admin = billing_secrets_and_policy(server, admin_key)
    admin.auth.approle.create_or_update_approle("billing", token_policies=["billing-read"])
    assert admin.auth.approle.read_role("billing")["data"]["token_policies"] == ["billing-read"]
    role_id = admin.auth.approle.read_role_id("billing")["data"]["role_id"]
    secret_id = admin.auth.approle.generate_secret_id("billing")["data"]["secret_id"]

    service = hvac.Client(url=f"{server.base_url}/secrets")
    login = service.auth.approle.login(role_id=role_id, secret_id=secret_id)
    assert login["auth"]["policies"] == ["billing-read"]
    assert service.is_authenticated()
    kv = service.secrets.kv.v2
    assert kv.read_secret_version(path="apps/billing/db", raise_on_deleted_version=True)["data"][
        "data"
    ] == {"p": "1"}
    with pytest.raises(Forbidden):
        kv.read_secret_version(path="apps/web/db", raise_on_deleted_version=True)

    stranger = hvac.Client(url=f"{server.base_url}/secrets")
    for wrong_role, wrong_secret in ((role_id, "not-the-secret"), ("no-such-role", secret_id)):
        with pytest.raises(InvalidRequest, match="invalid role or secret ID"):
            stranger.auth.approle.login(role_id=wrong_role, secret_id=wrong_secret)
