"""The template generates, with every service on and with each one off: the files of the
services that are off are gone, the code passes ruff and imports; bad names are refused."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException

from tests.template.generation import PACKAGE, SERVICES, SLUG, generate, ruff_check, variant

#: Files that exist only when their service is on (relative to the project).
FILES_OF = {
    "use_config": ["config.schema.json", "tests/test_config.py"],
    "use_secrets": ["tests/test_secrets.py"],
    "use_flags": [f"src/{PACKAGE}/api/checkout.py", "tests/test_flags.py"],
    "use_audit": ["tests/test_audit.py"],
    "use_jobs": [f"src/{PACKAGE}/worker.py", f"src/{PACKAGE}/api/reports.py", "tests/test_jobs.py"],
    "use_notify": [f"src/{PACKAGE}/api/notifications.py", "tests/test_notify.py"],
    "use_storage": [f"src/{PACKAGE}/api/documents.py", "tests/test_storage.py"],
    "use_edge": ["tests/test_edge.py"],
    "use_auth": ["tests/test_auth.py"],
}
#: What keel.toml declares for a service, when it is on.
MANIFEST_OF = {
    "use_config": "config",
    "use_flags": "flags",
    "use_jobs": "queues",
    "use_edge": "routes",
    "use_storage": "buckets",
    "use_notify": "templates",
}
VARIANTS = [None, *SERVICES, "all"]


def options_of(off: str | None) -> dict[str, bool]:
    if off == "all":
        return dict.fromkeys(SERVICES, False)
    return variant(off)


@pytest.mark.parametrize("off", VARIANTS, ids=lambda off: f"{off or 'none'}-off")
def test_a_generated_project_has_its_services_files_and_passes_ruff(
    tmp_path: Path, off: str | None
) -> None:
    options = options_of(off)
    project = generate(tmp_path, **options)
    assert project.name == SLUG
    for option, files in FILES_OF.items():
        for name in files:
            assert (project / name).exists() == options[option], (option, name)

    manifest = tomllib.loads((project / "keel.toml").read_text())
    assert manifest["service"]["name"] == SLUG
    for option, table in MANIFEST_OF.items():
        assert (table in manifest) == options[option], (option, table)
    assert ("schedules" in manifest) == options["use_jobs"]
    assert ("audit" in manifest) == options["use_audit"]
    permissions = manifest["roles"][f"{SLUG}-service"]["permissions"]
    assert ("audit:event:write" in permissions) == options["use_audit"]
    assert (f"secrets:policy:{SLUG}" in permissions) == options["use_secrets"]
    assert (f"jobs:{SLUG}-default:work" in permissions) == options["use_jobs"]
    # Its schedule and audit actions are keel apply's to put in Keel, not the service's.
    assert not [p for p in permissions if p.endswith(":admin") or p == "audit:action:write"]

    linted = ruff_check(project)
    assert linted.returncode == 0, linted.stdout + linted.stderr

    # Every module imports (nothing reaches Keel at import time).
    modules = [
        ".".join(path.relative_to(project / "src").with_suffix("").parts)
        for path in (project / "src").rglob("*.py")
    ]
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import importlib; [importlib.import_module(m) for m in {modules!r}]",
        ],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr


def test_no_template_syntax_is_left_in_a_generated_project(tmp_path: Path) -> None:
    project = generate(tmp_path)
    for path in project.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "cookiecutter." not in text, path
            assert "{%" not in text, path


@pytest.mark.parametrize(
    ("option", "value"),
    [("project_slug", "Bad Slug"), ("project_slug", "-orders"), ("package_name", "orders-api")],
)
def test_a_name_keel_would_refuse_is_refused_before_generating(
    tmp_path: Path, option: str, value: str
) -> None:
    with pytest.raises(FailedHookException):
        generate(tmp_path, **{option: value})
    assert list(tmp_path.iterdir()) == []
