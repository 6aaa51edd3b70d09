"""``keel secrets rotate-master-key | import | export | generate-master-key`` as an operator
runs them, against a database of each test's own, on SQLite and PostgreSQL. The commands run
in-process through the ``keel`` script's entry point (:mod:`tests.support.keel_cli`), except where
the process matters: the rotation run beside a ``keel serve`` answering traffic, and a
terminal on ``export``'s stdout.

Rotation follows the documented procedure: the new key current and the old one previous on a
running ``keel serve``, the command run while that server answers reads and writes, then
everything opened with the new key alone.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from dotenv import dotenv_values
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from keel.auth.dependencies import AUTH_RESOURCE
from keel.auth.service import AuthService
from keel.core.audit import SYSTEM
from keel.core.crypto import Envelope, Keyring, MasterKey
from keel.core.lifecycle import build_context, start_services
from keel.core.sealed import sealed_columns
from keel.core.tenancy import ALL_TENANTS_OPTION, bind_tenant, get_tenant_by_slug
from keel.secrets.engines.kv import KvEngine
from keel.settings import Settings
from tests.support.databases import create_postgres_database, drop_postgres_database
from tests.support.keel_cli import invoke_keel, invoke_keel_async
from tests.support.keel_process import ADMIN_KEY, KEEL, keel_env, keel_server, run_keel

OLD = MasterKey.generate()
NEW = MasterKey.generate()
SECRETS = 60
_MASKED = re.compile(r"^  [A-Z_]+ = \*{8}  \(\d+ chars?\)$")


@dataclass
class Deployment:
    """A Keel database initialised under ``OLD``, the directory the CLI runs in, and the
    administrator's API key issued by ``keel init``."""

    cwd: Path
    url: str
    api_key: str = ""
    postgres_name: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def env(
        self, current: MasterKey | None = OLD, *previous: MasterKey, **more: str
    ) -> dict[str, str]:
        env = keel_env(KEEL_DATABASE_URL=self.url, **more)
        env.pop("KEEL_MASTER_KEY")
        if current is not None:
            env["KEEL_MASTER_KEY"] = current.to_base64()
        if previous:
            env["KEEL_MASTER_KEY_PREVIOUS"] = ",".join(key.to_base64() for key in previous)
        return env

    def keel(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return invoke_keel(*args, cwd=self.cwd, env=env if env is not None else self.env())

    async def keel_async(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return await invoke_keel_async(
            *args, cwd=self.cwd, env=env if env is not None else self.env()
        )

    def settings(self, current: MasterKey, *previous: MasterKey) -> Settings:
        return Settings(
            database_url=self.url,
            data_dir=self.cwd / ".keel",
            master_key=current.to_base64(),
            master_key_previous=",".join(key.to_base64() for key in previous) or None,
        )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    admin_url = None
    if request.param == "sqlite":
        found = Deployment(tmp_path, f"sqlite+aiosqlite:///{tmp_path / '.keel' / 'keel.db'}")
    else:
        admin_url = str(request.getfixturevalue("postgres_admin_url"))
        name = f"keel_keys_{uuid.uuid4().hex[:12]}"
        url = asyncio.run(create_postgres_database(admin_url, name))
        found = Deployment(tmp_path, url, postgres_name=name)
        migrated = found.keel("migrate")
        assert migrated.returncode == 0, migrated.stderr
    try:
        initialised = found.keel("init")
        assert initialised.returncode == 0, initialised.stderr
        key = ADMIN_KEY.search(initialised.stdout)
        assert key is not None
        found.api_key = key.group(1)
        yield found
    finally:
        if admin_url is not None and found.postgres_name is not None:
            asyncio.run(drop_postgres_database(admin_url, found.postgres_name))


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *parts: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("keel: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    assert "Traceback" not in (result.stdout or "") + result.stderr


async def raw_rows(url: str, sql: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(text(sql))).all())
    finally:
        await engine.dispose()


async def audit_documents(url: str, action: str) -> list[dict[str, Any]]:
    """Documents of ``action``, in the outbox or already sequenced into the log."""
    rows = await raw_rows(
        url, "SELECT document FROM audit_outbox UNION ALL SELECT document FROM audit_payloads"
    )
    documents = [
        json.loads(bytes(row[0]) if not isinstance(row[0], str) else row[0]) for row in rows
    ]
    return [document for document in documents if document["action"] == action]


# -- rotation ------------------------------------------------------------------------------------


async def seed(deployment: Deployment) -> tuple[str, str]:
    """Under ``OLD``: secrets, and a user enrolling a TOTP factor; the user id and TOTP secret."""
    context = build_context(deployment.settings(OLD))
    try:
        await start_services(context)
        auth = context.resources[AUTH_RESOURCE]
        assert isinstance(auth, AuthService)
        engine = KvEngine(context.keyring)
        async with context.database.session() as session:
            tenant = await get_tenant_by_slug(session, "default")
            bind_tenant(session, tenant.id)
            user = await auth.create_user(session, tenant.id, username="totp-user", password=None)
            enrolment = await auth.mfa.enrol(session, user, SYSTEM)
            mount = await engine.mount(session, tenant.id, "secret")
            for number in range(SECRETS):
                await engine.write(session, mount, f"apps/s{number}", {"password": f"pw-{number}"})
        return user.id, enrolment.secret
    finally:
        await context.database.dispose()


class Traffic(threading.Thread):
    """Reads every seeded secret and writes new ones over HTTP until stopped."""

    def __init__(self, base_url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.token = base_url, token
        self.stop = threading.Event()
        self.reads = 0
        self.written: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        headers = {"X-Vault-Token": self.token}
        with httpx.Client(
            base_url=f"{self.base_url}/secrets/v1", headers=headers, timeout=10
        ) as http:
            number = 0
            while not self.stop.is_set():
                secret = number % SECRETS
                read = http.get(f"/secret/data/apps/s{secret}")
                if read.status_code != 200 or read.json()["data"]["data"] != {
                    "password": f"pw-{secret}"
                }:
                    self.failures.append(f"read s{secret}: {read.status_code} {read.text[:200]}")
                self.reads += 1
                if number % 5 == 0:
                    path = f"apps/during/w{number}"
                    wrote = http.post(f"/secret/data/{path}", json={"data": {"v": path}})
                    if wrote.status_code != 200:
                        self.failures.append(
                            f"write {path}: {wrote.status_code} {wrote.text[:200]}"
                        )
                    else:
                        self.written.append(path)
                number += 1


async def open_every_registered_value(settings: Settings) -> dict[str, int]:
    """Open every value of every registered column with the keyring of ``settings``."""
    context = build_context(settings)
    opened: dict[str, int] = {}
    try:
        await start_services(context)  # the token-hash key, signing keys, audit key open
        async with context.database.session() as session:
            for column in sealed_columns():
                statement = select(column.primary_key, column.column, *column.context).select_from(
                    column.model
                )
                for target, onclause in column.joins:
                    statement = statement.join(target, onclause)
                statement = statement.where(column.column.is_not(None)).execution_options(
                    **{ALL_TENANTS_OPTION: True}
                )
                for row in await session.execute(statement):
                    context.keyring.open(row[1], column.associated_data(row))
                    opened[column.name] = opened.get(column.name, 0) + 1
    finally:
        await context.database.dispose()
    return opened


async def test_rotation_rewraps_every_value_while_a_server_with_both_keys_serves(
    deployment: Deployment,
) -> None:
    user_id, totp_secret = await seed(deployment)
    before = dict(await raw_rows(deployment.url, "SELECT id, sealed FROM secrets_versions"))
    rotating_env = deployment.env(NEW, OLD)

    check = await deployment.keel_async("secrets", "rotate-master-key", "--check", env=rotating_env)
    assert check.returncode == 1, check.stderr
    assert (
        f"secrets_versions.sealed: {SECRETS} values, 0 under the current key, "
        f"{SECRETS} under previous keys" in check.stdout
    )
    assert "auth_totp.secret_sealed: 1 values, 0 under the current key, 1 under previous keys" in (
        check.stdout
    )

    with keel_server(deployment.cwd, rotating_env) as server:
        traffic = Traffic(server.base_url, deployment.api_key)
        traffic.start()
        try:
            # The operator's own process, as documented, while the server takes traffic.
            rotated = run_keel(
                "secrets",
                "rotate-master-key",
                "--batch-size",
                "7",
                cwd=deployment.cwd,
                env=rotating_env,
            )
        finally:
            traffic.stop.set()
            traffic.join(30)
    assert rotated.returncode == 0, rotated.stderr
    assert f"secrets_versions.sealed: {SECRETS} re-wrapped" in rotated.stdout
    assert "keel_keys.sealed: 1 re-wrapped, 0 already current" in rotated.stdout
    assert traffic.failures == []
    assert traffic.reads > SECRETS
    assert traffic.written

    after_check = await deployment.keel_async(
        "secrets", "rotate-master-key", "--check", env=deployment.env(NEW)
    )
    assert after_check.returncode == 0, after_check.stdout + after_check.stderr
    assert "every sealed value is under the current master key" in after_check.stdout
    again = await deployment.keel_async("secrets", "rotate-master-key", env=rotating_env)
    assert again.returncode == 0
    assert "re-wrapped 0 values" in again.stdout

    # Only the wrap changed: each value's nonce and ciphertext are the bytes stored before.
    after = dict(await raw_rows(deployment.url, "SELECT id, sealed FROM secrets_versions"))
    for row_id, sealed in before.items():
        old, new = Envelope.parse(bytes(sealed)), Envelope.parse(bytes(after[row_id]))
        assert (old.key_id, new.key_id) == (OLD.key_id, NEW.key_id)
        assert new.payload == old.payload

    # The old key dropped: every value opens, and the services work, with the new key alone.
    opened = await open_every_registered_value(deployment.settings(NEW))
    assert opened["secrets_versions.sealed"] == SECRETS + len(traffic.written)
    assert opened["auth_totp.secret_sealed"] == 1
    assert opened["auth_signing_keys.private_key_sealed"] >= 1
    assert opened["audit_signing_keys.private_key_sealed"] >= 1
    context = build_context(deployment.settings(NEW))
    try:
        await start_services(context)
        auth = context.resources[AUTH_RESOURCE]
        assert isinstance(auth, AuthService)
        engine = KvEngine(context.keyring)
        async with context.database.session() as session:
            # Issued by `keel init` before the rotation: its stored hash still matches.
            principal = await auth.authenticate(session, deployment.api_key)
            assert principal is not None
            tenant_id = principal.tenant_id
            bind_tenant(session, tenant_id)
            user = await auth.get_user(session, tenant_id, user_id)
            codes = await auth.mfa.confirm(session, user, pyotp.TOTP(totp_secret).now(), SYSTEM)
            assert codes
            assert (await auth.keys.active_key(session)) is not None
            for path in [f"apps/s{n}" for n in range(0, SECRETS, 9)] + traffic.written[:5]:
                assert (await engine.read(session, tenant_id, "secret", path)).data is not None
    finally:
        await context.database.dispose()

    events = await audit_documents(deployment.url, "secrets.master_key.rotate")
    assert len(events) == 2  # one a run, counts only
    first = next(event for event in events if event["data"]["rewrapped"])
    assert {"column": "secrets_versions.sealed", "rewrapped": SECRETS} in first["data"]["columns"]
    assert first["actor"]["type"] == "system"
    assert first["actor"]["display"].startswith("keel cli")
    assert OLD.to_base64() not in json.dumps(events)
    assert NEW.to_base64() not in json.dumps(events)


# -- .env import and export ----------------------------------------------------------------------

TRICKY_ENV = r"""# Billing service
export DB_PASSWORD='s3cr3t pass#word=1'
API_TOKEN="tok \"quoted\" and 'single' \\ backslash"
MULTILINE="first line
second line"
ESCAPED_NEWLINE="line-one\nline-two"
UNQUOTED=plain-value_with=equals
HASH_INSIDE="value # not a comment"  # but this is one
SPACES="  padded value  "
DOLLAR='cost ${NOT_EXPANDED} $HOME'
EMPTY=
UNICODE="päss-wörd-✓"
"""
TRICKY_VALUES = {
    "DB_PASSWORD": "s3cr3t pass#word=1",
    "API_TOKEN": "tok \"quoted\" and 'single' \\ backslash",
    "MULTILINE": "first line\nsecond line",
    "ESCAPED_NEWLINE": "line-one\nline-two",
    "UNQUOTED": "plain-value_with=equals",
    "HASH_INSIDE": "value # not a comment",
    "SPACES": "  padded value  ",
    "DOLLAR": "cost ${NOT_EXPANDED} $HOME",
    "EMPTY": "",
    "UNICODE": "päss-wörd-✓",
}


def assert_masked(output: str, header: str) -> None:
    """The header, then one masked line a variable, and no value anywhere."""
    lines = output.splitlines()
    assert lines[0].startswith(header), lines[0]
    assert [line.split(" = ")[0].strip() for line in lines[1:]] == list(TRICKY_VALUES)
    for line in lines[1:]:
        assert _MASKED.fullmatch(line), line
    for key, value in TRICKY_VALUES.items():
        assert f"({len(value)} char" in next(line for line in lines if f" {key} = " in line)
        for piece in [value, *value.split()]:
            if len(piece) >= 4:
                assert piece not in output, piece


def database_dump(deployment: Deployment) -> bytes:
    if deployment.postgres_name is None:
        files = sorted((deployment.cwd / ".keel").glob("keel.db*"))
        return b"".join(path.read_bytes() for path in files)
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        pytest.skip("pg_dump is not installed")
    url = (
        make_url(deployment.url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    return subprocess.run(
        [pg_dump, "--data-only", url], capture_output=True, check=True, timeout=60
    ).stdout


async def test_import_then_export_round_trips_tricky_values_and_never_shows_them(
    deployment: Deployment,
) -> None:
    env_file = deployment.cwd / "billing.env"
    env_file.write_text(TRICKY_ENV, encoding="utf-8")

    dry = await deployment.keel_async(
        "secrets", "import", str(env_file), "--path", "apps/billing", "--dry-run"
    )
    assert dry.returncode == 0, dry.stderr
    assert_masked(dry.stdout, "dry run: would import 10 keys into secret/apps/billing")
    assert dry.stdout.splitlines()[0].endswith("as version 1; nothing written")
    assert await raw_rows(deployment.url, "SELECT id FROM secrets_secrets") == []
    nothing = await deployment.keel_async("secrets", "export", "--path", "apps/billing")
    assert_one_line_error(nothing, 2, "no secret at secret/apps/billing")

    imported = await deployment.keel_async(
        "secrets", "import", str(env_file), "--path", "apps/billing"
    )
    assert imported.returncode == 0, imported.stderr
    assert_masked(
        imported.stdout, "imported 10 keys into secret/apps/billing (tenant default), version 1"
    )

    exported = await deployment.keel_async("secrets", "export", "--path", "apps/billing")
    assert exported.returncode == 0, exported.stderr
    assert dotenv_values(stream=io.StringIO(exported.stdout), interpolate=False) == TRICKY_VALUES
    copy = deployment.cwd / "exported.env"
    copy.write_text(exported.stdout, encoding="utf-8")
    reimported = await deployment.keel_async("secrets", "import", str(copy), "--path", "apps/copy")
    assert reimported.returncode == 0, reimported.stderr
    as_json = await deployment.keel_async(
        "secrets", "export", "--path", "apps/copy", "--format", "json"
    )
    assert json.loads(as_json.stdout) == TRICKY_VALUES

    out = deployment.cwd / "written.env"
    to_file = await deployment.keel_async(
        "secrets", "export", "--path", "apps/billing", "--out", str(out)
    )
    assert to_file.returncode == 0
    assert to_file.stdout == ""
    assert out.read_text(encoding="utf-8") == exported.stdout
    assert out.stat().st_mode & 0o777 == 0o600

    writes = await audit_documents(deployment.url, "secrets.kv.write")
    reads = await audit_documents(deployment.url, "secrets.kv.read")
    assert {(event["target"]["id"], event["data"]["operation"]) for event in writes} == {
        ("secret/data/apps/billing", "import"),
        ("secret/data/apps/copy", "import"),
    }
    assert [event["data"]["operation"] for event in reads] == ["export"] * 3
    for event in writes + reads:
        assert event["actor"]["type"] == "system"
        assert event["actor"]["display"].startswith("keel cli (")

    dump = database_dump(deployment)
    assert b"secrets_versions" in dump or deployment.postgres_name is None
    for value in TRICKY_VALUES.values():
        if len(value) >= 4:
            assert value.encode() not in dump, value
            assert value.encode().hex().encode() not in dump, value


# -- bad input -----------------------------------------------------------------------------------


def test_bad_input_exits_2_with_one_line_naming_no_value(tmp_path: Path) -> None:
    env = keel_env()
    (tmp_path / "broken.env").write_text("GOOD=fine\n\n\nthis line has hunter2 in it\n")
    (tmp_path / "novalue.env").write_text("GOOD=fine\nLONELY_hunter2\n")
    (tmp_path / "twice.env").write_text("A=hunter2\nA=hunter3\n")
    (tmp_path / "empty.env").write_text("# nothing here\n")
    (tmp_path / "ok.env").write_text("A=hunter2\n")
    cases = [
        (["missing.env", "--path", "apps/x"], "missing.env: no such file"),
        (["broken.env", "--path", "apps/x"], "broken.env line 4: not KEY=VALUE"),
        (["novalue.env", "--path", "apps/x"], "novalue.env line 2: no '='"),
        (["twice.env", "--path", "apps/x"], "twice.env line 2: A is set twice"),
        (["empty.env", "--path", "apps/x"], "empty.env: no KEY=VALUE line"),
        (["ok.env", "--path", "apps/../x"], "invalid path segment '..'"),
        (["ok.env", "--path", "apps/x", "--mount", "Bad Mount"], "invalid mount path"),
        (["ok.env", "--path", "apps/x", "--tenant", "nobody"], "No tenant 'nobody'"),
    ]
    for args, message in cases:
        result = invoke_keel("secrets", "import", *args, cwd=tmp_path, env=env)
        assert_one_line_error(result, 2, message)
        assert "hunter" not in result.stderr + result.stdout
    assert invoke_keel("secrets", "export", cwd=tmp_path, env=env).returncode == 2  # no --path


def test_export_refuses_a_terminal_without_confirmation(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [KEEL, "secrets", "export", "--path", "apps/billing"],
            cwd=tmp_path,
            env=keel_env(),
            stdout=terminal,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)
    assert_one_line_error(result, 2, "refusing to print secret values to a terminal")
    assert not (tmp_path / ".keel").exists()  # refused before touching anything


def test_master_key_settings_aliases_previous_keys_and_errors(tmp_path: Path) -> None:
    base = {name: value for name, value in keel_env().items() if name != "KEEL_MASTER_KEY"}
    first = invoke_keel(
        "init", cwd=tmp_path, env={**base, "KEEL_SECRETS__MASTER_KEY": OLD.to_base64()}
    )
    assert first.returncode == 0, first.stderr
    same = {**base, "KEEL_MASTER_KEY": OLD.to_base64(), "KEEL_SECRETS__MASTER_KEY": OLD.to_base64()}
    assert (
        invoke_keel("secrets", "rotate-master-key", "--check", cwd=tmp_path, env=same).returncode
        == 0
    )

    differ = {**same, "KEEL_SECRETS__MASTER_KEY": NEW.to_base64()}
    result = invoke_keel("secrets", "rotate-master-key", "--check", cwd=tmp_path, env=differ)
    assert_one_line_error(result, 2, "KEEL_MASTER_KEY and KEEL_SECRETS__MASTER_KEY", "differ")
    assert NEW.to_base64() not in result.stderr
    assert OLD.to_base64() not in result.stderr

    bad_previous = {
        **base,
        "KEEL_MASTER_KEY": NEW.to_base64(),
        "KEEL_MASTER_KEY_PREVIOUS": "hunter2!",
    }
    result = invoke_keel("secrets", "rotate-master-key", cwd=tmp_path, env=bad_previous)
    assert_one_line_error(result, 1, "KEEL_MASTER_KEY_PREVIOUS: the master key is not valid base64")
    assert "hunter2" not in result.stderr

    wrong = {**base, "KEEL_MASTER_KEY": NEW.to_base64()}
    result = invoke_keel("secrets", "rotate-master-key", cwd=tmp_path, env=wrong)
    assert_one_line_error(result, 1, "token-hash key", "KEEL_MASTER_KEY_PREVIOUS")

    previous_file = tmp_path / "previous.keys"
    previous_file.write_text(f"{MasterKey.generate().to_base64()}\n{OLD.to_base64()}\n")
    with_file = {**wrong, "KEEL_MASTER_KEY_PREVIOUS_FILE": str(previous_file)}
    rotated = invoke_keel("secrets", "rotate-master-key", cwd=tmp_path, env=with_file)
    assert rotated.returncode == 0, rotated.stderr
    assert (
        invoke_keel("secrets", "rotate-master-key", "--check", cwd=tmp_path, env=wrong).returncode
        == 0
    )


def test_generate_master_key_prints_or_writes_a_new_key(tmp_path: Path) -> None:
    printed = invoke_keel("secrets", "generate-master-key", cwd=tmp_path)
    assert printed.returncode == 0
    assert Keyring(MasterKey.from_base64(printed.stdout.strip()))  # 32 bytes of base64
    target = tmp_path / "master.key"
    written = invoke_keel("secrets", "generate-master-key", "--out", str(target), cwd=tmp_path)
    assert written.returncode == 0
    assert target.stat().st_mode & 0o777 == 0o600
    assert MasterKey.from_base64(target.read_text()).to_base64() != printed.stdout.strip()
    again = invoke_keel("secrets", "generate-master-key", "--out", str(target), cwd=tmp_path)
    assert_one_line_error(again, 2, "exists; not overwriting it")
