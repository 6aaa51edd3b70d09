"""``keel auth ...`` verbs against the embedded default, run in-process through the ``keel``
script's entry point (:mod:`tests.support.keel_cli`; ``tests/test_cli.py`` runs the script
itself)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import jwt

from keel.settings import Settings
from tests.support.apps import running
from tests.support.keel_cli import invoke_keel_async
from tests.support.keel_process import TEST_MASTER_KEY
from tests.support.tenants import PASSWORD, bearer

EXIT_USAGE = 2


async def _each(
    commands: list[tuple[list[str], str | None]], cwd: Path
) -> list[subprocess.CompletedProcess[str]]:
    """The commands one after another, each with its stdin."""
    return [await invoke_keel_async(*args, cwd=cwd, stdin=stdin or "") for args, stdin in commands]


def _value(output: str, label: str) -> str:
    match = re.search(rf"^{re.escape(label)}.*?: (\S+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


async def test_auth_verbs_administer_identities(tmp_path: Path) -> None:
    init = await invoke_keel_async("init", cwd=tmp_path)
    assert init.returncode == 0, init.stderr

    user, role, account, rotation, both = await _each(
        [
            (["auth", "create-user", "alice", "--password-stdin"], PASSWORD + "\n"),
            (["auth", "create-role", "reader", "--permission", "auth:user:read"], None),
            (["auth", "create-service-account", "billing"], None),
            (["auth", "rotate-signing-key"], None),
            (
                ["auth", "create-api-key", "--name", "x", "--user", "a", "--service-account", "b"],
                None,
            ),
        ],
        tmp_path,
    )
    assert user.returncode == 0, user.stderr
    assert re.fullmatch(r"user alice: created \(\S+\)\n", user.stdout)
    assert PASSWORD not in user.stdout + user.stderr
    assert role.returncode == 0, role.stderr
    assert role.stdout == "role reader: created\n"
    assert account.returncode == 0, account.stderr
    client_id = _value(account.stdout, "client_id")
    client_secret = _value(account.stdout, "client_secret")
    assert account.stdout.count(client_secret) == 1
    assert rotation.returncode == 0, rotation.stderr
    rotated = re.fullmatch(r"signing key (\S+): active\n", rotation.stdout)
    assert rotated
    assert both.returncode == EXIT_USAGE
    assert both.stderr.strip().count("\n") == 0
    assert "exactly one of --user or --service-account" in both.stderr

    key, assigned, unknown_role, users = await _each(
        [
            (["auth", "create-api-key", "--name", "ci", "--user", "alice"], None),
            (["auth", "assign-role", "reader", "--user", "alice"], None),
            (["auth", "assign-role", "no-such-role", "--user", "alice"], None),
            (["auth", "list-users"], None),
        ],
        tmp_path,
    )
    assert key.returncode == 0, key.stderr
    api_key = _value(key.stdout, "key")
    assert re.fullmatch(r"keel_[0-9A-Za-z]{46}", api_key)
    assert key.stdout.count(api_key) == 1
    assert assigned.returncode == 0, assigned.stderr
    assert unknown_role.returncode == EXIT_USAGE
    assert unknown_role.stderr.strip().count("\n") == 0
    assert "no-such-role" in unknown_role.stderr

    assert users.returncode == 0, users.stderr
    listed = {line.split()[1] for line in users.stdout.splitlines()}
    assert listed == {"admin", "alice"}
    for secret in (api_key, client_secret, PASSWORD):
        assert secret not in users.stdout

    # What the command made works through the API of a Keel on the same data directory.
    settings = Settings(
        data_dir=tmp_path / ".keel", master_key=TEST_MASTER_KEY, public_url="http://keel.test"
    )
    async with running(settings) as (_app, client):
        login = await client.post(
            "/auth/v1/login", json={"username": "alice", "password": PASSWORD}
        )
        assert login.status_code == 200
        claims = jwt.decode(login.json()["access_token"], options={"verify_signature": False})
        assert claims["permissions"] == ["auth:user:read"]
        assert jwt.get_unverified_header(login.json()["access_token"])["kid"] == rotated[1]
        me = await client.get("/auth/v1/me", headers=bearer(api_key))
        assert me.json()["roles"] == ["reader"]
        token = await client.post(
            "/auth/v1/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
            },
        )
        assert token.status_code == 200
        service_claims = jwt.decode(
            token.json()["access_token"], options={"verify_signature": False}
        )
        assert service_claims["typ"] == "service_account"
        assert service_claims["permissions"] == []


async def test_restore_admin_is_the_break_glass_verb(tmp_path: Path) -> None:
    assert (await invoke_keel_async("init", cwd=tmp_path)).returncode == 0
    created = await invoke_keel_async(
        "auth", "create-user", "rescuer", "--password-stdin", cwd=tmp_path, stdin=PASSWORD + "\n"
    )
    assert created.returncode == 0, created.stderr
    restored = await invoke_keel_async("auth", "restore-admin", "--user", "rescuer", cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout == "role admin: restored to '*', held by rescuer\n"
    unknown = await invoke_keel_async("auth", "restore-admin", "--user", "nobody", cwd=tmp_path)
    assert unknown.returncode == EXIT_USAGE
    assert "No user 'nobody'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


async def test_a_password_without_a_terminal_must_come_on_stdin(tmp_path: Path) -> None:
    # invoke_keel's stdin is not a terminal, as under cron, CI or `ssh host keel ...`.
    commands = [
        (["auth", "create-user", "bob"], ", or create the user with --no-password"),
        (["auth", "set-password", "bob"], ""),
    ]
    for args, otherwise in commands:
        refused = await invoke_keel_async(*args, cwd=tmp_path)
        assert refused.returncode == EXIT_USAGE, refused.stderr
        assert refused.stderr.splitlines() == [
            "keel: no terminal to type the password at: "
            f"pipe it into keel {' '.join(args)} --password-stdin{otherwise}"
        ]
        assert refused.stdout == ""
    assert not (tmp_path / ".keel").exists()  # refused before touching anything

    usage = await invoke_keel_async("auth", "create-user", "--help", cwd=tmp_path)
    assert "--no-password-stdin" not in usage.stdout
    assert "--no-no-password" not in usage.stdout
