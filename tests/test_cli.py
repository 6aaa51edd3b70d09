"""The ``keel`` command as an operator runs it, with a clean environment of its own.

Exit codes: 0 success, 1 a check or operation failed, 2 bad usage or invalid settings.
Errors are one line on stderr and never a traceback; secrets never reach the output.

The installed script runs as a real subprocess where the process is the point (what a cold
start imports, ``keel worker`` stopped by SIGTERM); the other commands run the same entry
point in-process (:mod:`tests.support.keel_cli`), which saves the three-second start of each.
"""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from sqlalchemy.engine import make_url

from keel import __version__
from keel.cli import SERVICE_COMMANDS, conventional_metavar
from keel.cli import app as keel_app
from keel.migrations import head_revision
from keel.settings import KNOWN_SERVICES
from tests.support.keel_cli import invoke_keel
from tests.support.keel_process import (
    KEEL,
    TEST_MASTER_KEY,
    free_port,
    keel_env,
    read_log_lines,
    stop_process,
    wait_for,
)

COMMANDS = ("serve", "worker", "migrate", "init", "doctor", "version")
HEAD = head_revision()


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("keel: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines
    assert "Traceback" not in result.stderr + result.stdout


def test_help_exits_zero_for_the_app_and_every_command(tmp_path: Path) -> None:
    results = [
        invoke_keel(*args, cwd=tmp_path)
        for args in [["--help"], *([command, "--help"] for command in COMMANDS)]
    ]
    for command, result in zip([None, *COMMANDS], results, strict=True):
        assert result.returncode == 0, (command, result.stderr)
        assert f"Usage: keel {command or ''}".rstrip() in result.stdout, (command, result.stdout)
    for name in COMMANDS:
        assert name in results[0].stdout
    serve_help = results[1 + COMMANDS.index("serve")].stdout
    for option in ("--host", "--port", "--services", "--reload"):
        assert option in serve_help
    assert not (tmp_path / ".keel").exists(), "--help must not touch the database"


#: What ``keel version`` and ``keel --help`` must not import: the server, its frameworks, the
#: settings (pydantic) and any service.
SERVER_MODULES = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "pydantic",
    "pydantic_settings",
    "uvicorn",
    "structlog",
    "keel.app",
    "keel.settings",
    "keel.core.db",
)

_RECORD_MODULES = """
import sys
from keel.cli import main
modules_file, sys.argv = sys.argv[1], ["keel", *sys.argv[2:]]
try:
    main()
except SystemExit:
    pass
with open(modules_file, "w") as out:
    out.write("\\n".join(sys.modules))
"""


def modules_loaded_by(tmp_path: Path, *args: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``keel <args>`` to its end."""
    modules_file = tmp_path / "modules.txt"
    result = subprocess.run(
        [sys.executable, "-c", _RECORD_MODULES, str(modules_file), *args],
        cwd=tmp_path,
        env=keel_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return set(modules_file.read_text().splitlines())


@pytest.mark.parametrize("args", [["version"], ["--help"], []], ids=["version", "help", "bare"])
def test_version_and_help_load_nothing_of_the_server(tmp_path: Path, args: list[str]) -> None:
    loaded = modules_loaded_by(tmp_path, *args)
    assert "keel.cli" in loaded
    unwanted = [*SERVER_MODULES, *(f"keel.{service}" for service in KNOWN_SERVICES)]
    server = {
        module
        for module in loaded
        for name in unwanted
        if module == name or module.startswith(f"{name}.")
    }
    assert not server, sorted(server)


def test_help_lists_each_service_group_with_its_own_help(tmp_path: Path) -> None:
    listing = invoke_keel("--help", cwd=tmp_path, env=keel_env(COLUMNS="200"))
    assert listing.returncode == 0
    for name, declared in SERVICE_COMMANDS.items():
        group = importlib.import_module(declared.module).app
        assert group.info.help == declared.help, name  # the declaration repeats the group's
        assert re.search(rf"^│ {name} +{re.escape(declared.help)}", listing.stdout, re.M)
        assert f"Usage: keel {name} " in invoke_keel(name, "--help", cwd=tmp_path).stdout


def every_command() -> list[tuple[str, ...]]:
    """Every command and group of ``keel``, as the words that invoke it."""
    root = typer.main.get_command(keel_app)
    found: list[tuple[str, ...]] = []

    def walk(command: typer.core.TyperGroup, path: tuple[str, ...]) -> None:
        for name in command.list_commands(typer.Context(command)):
            # Resolving a service's group imports it: the listing holds a stand-in.
            _, sub_command, _ = command.resolve_command(typer.Context(command), [name])
            found.append((*path, name))
            if isinstance(sub_command, typer.core.TyperGroup):
                walk(sub_command, (*path, name))

    assert isinstance(root, typer.core.TyperGroup)
    walk(root, ())
    return found


def test_every_help_shows_conventional_metavars_not_python_types(tmp_path: Path) -> None:
    commands = every_command()
    assert ("auth", "create-user") in commands
    assert ("config", "apps", "create") in commands
    for words in [(), *commands]:
        result = invoke_keel(*words, "--help", cwd=tmp_path, env=keel_env(COLUMNS="200"))
        assert result.returncode == 0, (words, result.stderr)
        python_type = re.search(r"<[a-z][a-z_ |\[\]]*>", result.stdout)
        assert python_type is None, (words, python_type.group(), result.stdout)
        assert "--no-no-" not in result.stdout, words
    serve = invoke_keel("serve", "--help", cwd=tmp_path, env=keel_env(COLUMNS="200")).stdout
    assert re.search(r"--port +INTEGER +\[1<=x<=65535\]", serve)
    assert re.search(r"--services +SERVICES ", serve)
    assert re.search(r"--help +Show this message", serve)  # a flag shows no metavar
    export = invoke_keel("secrets", "export", "--help", cwd=tmp_path, env=keel_env(COLUMNS="200"))
    assert re.search(r"--format +\[env\|json\]", export.stdout)
    assert re.search(r"--out +PATH", export.stdout)


@pytest.mark.parametrize(
    ("typer_label", "metavar"),
    [
        ("<str>", "TEXT"),
        ("<int>", "INTEGER"),
        ("<int range>", "INTEGER"),
        ("<float range>", "FLOAT"),
        ("<list[str]>", "TEXT"),
        ("<env|json>", "[env|json]"),
        ("<list[a|b]>", "[a|b]"),
        ("<path>", "PATH"),
        ("<dir>", "DIRECTORY"),
        ("<datetime>", "DATETIME"),
        ("<Decimal>", "DECIMAL"),
    ],
)
def test_conventional_metavar_of_each_typer_label(typer_label: str, metavar: str) -> None:
    assert conventional_metavar(typer_label) == metavar


def test_a_command_runs_with_the_garbage_collector_on_and_leaves_it_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `keel` pauses it while it parses and imports (keel.core.startup); only serve's app
    # resumes it later, once started.
    import keel.core.doctor

    seen: list[bool] = []

    async def doctor_noting_the_collector(settings: object) -> dict[str, object]:
        seen.append(gc.isenabled())
        return {"ok": True, "checks": []}

    monkeypatch.setattr(keel.core.doctor, "run_doctor", doctor_noting_the_collector)
    assert invoke_keel("doctor", cwd=tmp_path).returncode == 0
    assert seen == [True]
    for args in (["version"], ["--help"], ["serve", "--port", "0"]):
        invoke_keel(*args, cwd=tmp_path)
        assert gc.isenabled(), args


def test_version_prints_keel_and_client_versions(tmp_path: Path) -> None:
    from keel_client import __version__ as client_version

    result = invoke_keel("version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith(f"keel {__version__} (keel-client {client_version}, Python ")
    # keel._version repeats pyproject.toml's version so that no command reads the metadata.
    assert __version__ == importlib.metadata.version("keel")


def test_init_creates_the_default_tenant_and_admin_once(tmp_path: Path) -> None:
    first = invoke_keel("init", cwd=tmp_path)
    second = invoke_keel("init", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[:2] == ["tenant default: created", "admin admin: created"]
    assert re.fullmatch(
        r"admin API key \(shown once, store it now\): keel_[0-9A-Za-z]{46}", lines[2]
    )
    assert (second.returncode, second.stdout) == (
        0,
        "tenant default: exists\nadmin admin: exists\n",
    ), second.stderr
    assert (tmp_path / ".keel" / "keel.db").exists()


def test_migrate_twice_then_check(tmp_path: Path) -> None:
    first = invoke_keel("migrate", cwd=tmp_path)
    assert (first.returncode, first.stdout) == (0, f"migrated nothing -> {HEAD}\n"), first.stderr
    second = invoke_keel("migrate", cwd=tmp_path)
    assert (second.returncode, second.stdout) == (0, f"schema already at {HEAD}\n")

    after = invoke_keel("migrate", "--check", cwd=tmp_path)
    assert (after.returncode, after.stdout) == (0, f"schema at {HEAD}, head is {HEAD}\n")


def test_migrate_to_an_unknown_revision_is_refused_as_bad_usage(tmp_path: Path) -> None:
    for revision in ("zzz", "", "0"):
        refused = invoke_keel("migrate", revision, cwd=tmp_path)
        assert refused.returncode == 2, (revision, refused.stderr)
        assert_one_line_error(refused, "no migration", HEAD)
    assert not (tmp_path / ".keel").exists()  # refused before touching anything


def test_invalid_settings_stop_serve_with_one_line_naming_each_variable(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text("KEEL_LOG_LEVEL=chatty\nKEEL_SENTRY__TRACES_SAMPLE_RATE=7\n")
    result = invoke_keel("serve", cwd=tmp_path, env=keel_env(KEEL_PORT="abc"))
    assert result.returncode == 2
    assert_one_line_error(
        result, "KEEL_PORT:", "KEEL_LOG_LEVEL:", "KEEL_SENTRY__TRACES_SAMPLE_RATE:"
    )
    assert not (tmp_path / ".keel").exists()


def test_bad_usage_exits_2_with_one_line(tmp_path: Path) -> None:
    unknown_service, bad_port, unknown_command = (
        invoke_keel(*args, cwd=tmp_path)
        for args in [["serve", "--services", "nope"], ["serve", "--port", "0"], ["no-such-command"]]
    )
    for result in (unknown_service, bad_port, unknown_command):
        assert result.returncode == 2
        assert_one_line_error(result, "--help")  # the line says where to read the usage
    assert "'nope'" in unknown_service.stderr
    assert "--port" in bad_port.stderr
    assert "no-such-command" in unknown_command.stderr
    assert not (tmp_path / ".keel").exists()


def test_every_service_keel_knows_is_built() -> None:
    """Storage (issue 21) was the last: ``--services`` has no service left that it would
    refuse as "not part of this Keel build yet" (an unknown name is refused above)."""
    built, unbuilt = built_services()
    assert unbuilt == []
    assert built == list(KNOWN_SERVICES)


def test_doctor_passes_and_prints_settings_with_secrets_masked(tmp_path: Path) -> None:
    dsn = "https://dsnkey0123456789@o1.ingest.example.test/42"
    result = invoke_keel("doctor", cwd=tmp_path, env=keel_env(KEEL_SENTRY__DSN=dsn))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok  ] database: sqlite+aiosqlite:///.keel/keel.db" in result.stdout
    assert "[ok  ] data_dir:" in result.stdout
    assert "effective settings (secrets masked):" in result.stdout
    assert "dsnkey0123456789" not in result.stdout + result.stderr
    assert "FAIL" not in result.stdout

    settings = json.loads(result.stdout.split("effective settings (secrets masked):")[1])
    assert settings["sentry"]["dsn"] == "**********"
    assert settings["database_url"] == "sqlite+aiosqlite:///.keel/keel.db"


def built_services() -> tuple[list[str], list[str]]:
    """The services this build has, and those Keel knows but has not built yet."""
    built = [name for name in KNOWN_SERVICES if importlib.util.find_spec(f"keel.{name}")]
    return built, [name for name in KNOWN_SERVICES if name not in built]


def test_doctor_lists_only_built_services_and_says_where_the_master_key_comes_from(
    tmp_path: Path,
) -> None:
    built, unbuilt = built_services()
    without_key = {name: value for name, value in keel_env().items() if name != "KEEL_MASTER_KEY"}
    key_file = tmp_path / "secret" / "master.key"
    key_file.parent.mkdir()
    key_file.write_text(TEST_MASTER_KEY + "\n")
    fresh, from_file, from_env = (
        invoke_keel("doctor", "--json", cwd=tmp_path, env=env)
        for env in (
            without_key,
            {**without_key, "KEEL_MASTER_KEY_FILE": str(key_file)},
            keel_env(),
        )
    )
    migrated = invoke_keel("migrate", cwd=tmp_path, env=without_key)  # generates .keel/master.key
    generated = invoke_keel("doctor", "--json", cwd=tmp_path, env=without_key)
    assert migrated.returncode == 0, migrated.stderr

    reports = {}
    for name, result in [
        ("fresh", fresh),
        ("from_file", from_file),
        ("from_env", from_env),
        ("generated", generated),
    ]:
        assert result.returncode == 0, (name, result.stdout)
        assert TEST_MASTER_KEY not in result.stdout + result.stderr
        report = json.loads(result.stdout)
        reports[name] = report
        checks = {check["name"]: check for check in report["checks"]}
        assert report["settings"]["services"] == built, name
        assert checks["services"]["detail"] == ", ".join(built) + (
            f" (not built yet: {', '.join(unbuilt)})" if unbuilt else ""
        )
        assert not set(unbuilt) & set(checks), name  # no check of a service not built
        reports[name] = {"check": checks["master_key"], "shown": report["settings"]["master_key"]}

    assert reports["fresh"] == {
        "check": {
            "name": "master_key",
            "ok": True,
            "detail": "none yet: `keel serve` generates .keel/master.key",
        },
        "shown": None,
    }
    assert reports["from_file"]["check"]["detail"] == f"from file {key_file}"
    assert reports["from_file"]["shown"] == f"from file {key_file}"
    assert reports["from_env"]["check"]["detail"] == "from KEEL_MASTER_KEY"
    assert reports["from_env"]["shown"] == "**********"
    assert reports["generated"]["check"]["detail"] == "from file .keel/master.key"
    assert reports["generated"]["shown"] == "from file .keel/master.key"


def test_doctor_fails_on_a_master_key_file_that_does_not_hold_a_key(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text("not base64!\n")
    env = {name: value for name, value in keel_env().items() if name != "KEEL_MASTER_KEY"}
    result = invoke_keel("doctor", cwd=tmp_path, env={**env, "KEEL_MASTER_KEY_FILE": str(key_file)})
    assert result.returncode == 1
    assert (
        f"[FAIL] master_key: the master key file {key_file}: the master key is not valid base64"
        in result.stdout.splitlines()
    ), result.stdout


def test_doctor_fails_on_unreachable_redis_without_printing_its_password(
    tmp_path: Path,
) -> None:
    env = keel_env(KEEL_REDIS_URL=f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0")
    result = invoke_keel("doctor", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "[FAIL] redis: redis://:***@127.0.0.1:" in result.stdout
    assert "[ok  ] database" in result.stdout
    assert "s3cret-pass" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr

    assert json.loads(result.stdout.split("(secrets masked):")[1])["redis_url"].startswith(
        "redis://:***@"
    )


def test_doctor_reports_invalid_settings_as_a_failed_check(tmp_path: Path) -> None:
    result = invoke_keel("doctor", cwd=tmp_path, env=keel_env(KEEL_PORT="abc"))
    assert result.returncode == 1
    assert "[FAIL] settings:" in result.stdout
    assert "KEEL_PORT" in result.stdout


@pytest.mark.postgres
def test_doctor_on_postgres_never_prints_the_database_password(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    url = make_url(postgres_url).set(password="pg-s3cret-word")
    env = keel_env(
        KEEL_DATABASE_URL=url.render_as_string(hide_password=False), KEEL_REDIS_URL=redis_url
    )
    result = invoke_keel("doctor", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout
    assert "pg-s3cret-word" not in result.stdout + result.stderr
    assert "[ok  ] database: postgresql+asyncpg://" in result.stdout
    assert "[ok  ] redis:" in result.stdout
    assert f"[ok  ] schema: at {HEAD}" in result.stdout
    assert not (tmp_path / ".keel").exists(), "PostgreSQL mode must not create SQLite"


@pytest.mark.postgres
def test_serve_on_unmigrated_postgres_says_to_run_migrate(
    empty_postgres_url: str, tmp_path: Path
) -> None:
    env = keel_env(KEEL_DATABASE_URL=empty_postgres_url)

    refused = invoke_keel("serve", "--port", str(free_port()), cwd=tmp_path, env=env)
    check = invoke_keel("migrate", "--check", cwd=tmp_path, env=env)
    assert refused.returncode == 1
    assert_one_line_error(refused, "run `keel migrate`")
    assert (check.returncode, check.stdout) == (1, f"schema at nothing, head is {HEAD}\n")

    migrated = invoke_keel("migrate", cwd=tmp_path, env=env)
    assert (migrated.returncode, migrated.stdout) == (0, f"migrated nothing -> {HEAD}\n")
    doctor = invoke_keel("doctor", cwd=tmp_path, env=env)
    assert doctor.returncode == 0, doctor.stdout
    assert f"[ok  ] schema: at {HEAD}" in doctor.stdout
    assert not (tmp_path / ".keel").exists()


def test_unreachable_database_is_one_line_exit_1(tmp_path: Path) -> None:
    url = f"postgresql://keel:db-s3cret@127.0.0.1:{free_port()}/keel"
    commands = [["migrate"], ["serve", "--port", "1"]]
    results = [
        invoke_keel(*command, cwd=tmp_path, env=keel_env(KEEL_DATABASE_URL=url))
        for command in commands
    ]
    for command, result in zip(commands, results, strict=True):
        assert result.returncode == 1, command
        assert_one_line_error(result, "database")
        assert "db-s3cret" not in result.stderr


def test_worker_starts_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [KEEL, "worker"],
            cwd=tmp_path,
            env=keel_env(KEEL_LOG_FORMAT="json"),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        wait_for(
            lambda: any(line["event"] == "worker.started" for line in read_log_lines(log_path)),
            timeout=20,
            message=f"worker did not start: {log_path.read_text()}",
        )
        assert process.poll() is None
    finally:
        returncode = stop_process(process)
    assert returncode == 0, log_path.read_text()
    events = [line["event"] for line in read_log_lines(log_path)]
    assert events[-1] == "worker.stopping"
    assert (tmp_path / ".keel" / "keel.db").exists()  # the embedded default, migrated
