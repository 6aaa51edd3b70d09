"""Each generated project's own ``make test`` passes against a live embedded Keel, with no
edit after generation: every service on (on SQLite and on PostgreSQL), and each one off."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.databases import database_for
from tests.template.generation import SERVICES, generate, run_make_test, variant

#: The test files of a project with every service on.
EVERY_FILE = (
    "test_audit", "test_auth", "test_config", "test_edge", "test_flags", "test_health",
    "test_jobs", "test_notify", "test_orders", "test_secrets", "test_storage",
)  # fmt: skip


def passing_files(project: Path, *, database_url: str | None = None) -> set[str]:
    """Run the project's ``make test``, which must pass with nothing skipped; the test files
    that ran."""
    result = run_make_test(project, database_url=database_url)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    outcomes = re.findall(r"^tests/(test_\w+)\.py::\S+ (\w+)", result.stdout, re.MULTILINE)
    assert outcomes, output[-8000:]
    assert {outcome for _, outcome in outcomes} == {"PASSED"}, output[-8000:]
    return {name for name, _ in outcomes}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    with database_for(request, "keel_template") as url:
        yield url


def test_every_service_on(tmp_path: Path, database_url: str | None) -> None:
    project = generate(tmp_path)
    assert passing_files(project, database_url=database_url) == set(EVERY_FILE)


@pytest.mark.parametrize("off", SERVICES)
def test_each_service_off(tmp_path: Path, off: str) -> None:
    project = generate(tmp_path, **variant(off))
    ran = passing_files(project)
    assert ran == {name for name in EVERY_FILE if (project / "tests" / f"{name}.py").exists()}
    assert len(ran) < len(EVERY_FILE)  # the service's own tests went with it
