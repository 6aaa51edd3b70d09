"""Generating the service template (``template/``) as its users do: cookiecutter's own API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[2] / "template"
#: One option per Keel service; every one is on by default.
SERVICES = (
    "use_auth",
    "use_secrets",
    "use_config",
    "use_flags",
    "use_audit",
    "use_jobs",
    "use_notify",
    "use_storage",
    "use_edge",
)
PACKAGE = "shipping"
#: Each test's outcome on its own line; nothing of ours carried into the project's run.
PYTEST_ARGS = "-v -p no:cacheprovider -p no:xdist"
SLUG = "shipping"


def generate(output_dir: Path, **options: Any) -> Path:
    """A project generated without questions, the services in ``options`` as given."""
    context = {"project_name": "Shipping", **options}
    return Path(
        cookiecutter(
            str(TEMPLATE), no_input=True, extra_context=context, output_dir=str(output_dir)
        )
    )


def variant(off: str | None) -> dict[str, bool]:
    """Every service on, but ``off``."""
    return {name: name != off for name in SERVICES}


def run_make_test(
    project: Path, *, database_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``make test`` in the project, with this interpreter (keel, keel-client, pytest)."""
    env = {**os.environ}
    env.pop("PYTHONPATH", None)
    env.pop("KEEL_TEST_DATABASE_URL", None)
    for name in [n for n in env if n.startswith(("KEEL_", "PYTEST_"))]:
        del env[name]
    if database_url is not None:
        env["KEEL_TEST_DATABASE_URL"] = database_url
    return subprocess.run(
        ["make", "test", f"PYTHON={sys.executable}", f"PYTEST_ARGS={PYTEST_ARGS}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def ruff_check(project: Path) -> subprocess.CompletedProcess[str]:
    """ruff on the generated code, with the generated project's own configuration."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
