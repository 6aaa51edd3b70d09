"""The migration guides cover every pattern the old project template generates, each with a
"before" shown and an "after" that the docs tests run (issue 22's last "done when")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.examples import REPOSITORY, Block, blocks_of

GUIDES = REPOSITORY / "docs" / "migrate"

#: Each pattern of the template, as the issue names it, and the page that replaces it.
PATTERNS = {
    "SecurityHeadersMiddleware": "security-middleware.md",
    "RateLimitMiddleware": "security-middleware.md",
    "SSRFPreventionMiddleware": "security-middleware.md",
    "add_security_middleware": "security-middleware.md",
    "set_user_context": "sentry.md",
    "capture_message": "sentry.md",
    "add_breadcrumb": "sentry.md",
    "send_email_task": "email.md",
    "process_file_upload": "uploads.md",
    "enqueue_task": "jobs.md",
    "WorkerSettings": "jobs.md",
    "check_external_service": "health.md",
    "Settings(BaseSettings)": "settings.md",
    "setup_logging": "logging.md",
    "log_performance": "logging.md",
    "format_audit_amount": "audit.md",
}


def section(page: Path, heading: str) -> tuple[int, int]:
    """The line range (1-based, end exclusive) of the ``## heading`` section of ``page``."""
    lines = page.read_text().splitlines()
    start = next(n for n, line in enumerate(lines, 1) if line.strip() == f"## {heading}")
    end = next(
        (n for n, line in enumerate(lines, 1) if n > start and line.startswith("## ")),
        len(lines) + 1,
    )
    return start, end


def blocks_between(page: Path, bounds: tuple[int, int]) -> list[Block]:
    return [block for block in blocks_of(page) if bounds[0] < block.line < bounds[1]]


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_each_pattern_has_a_before_and_an_after_that_runs(pattern: str) -> None:
    page = GUIDES / PATTERNS[pattern]
    before = blocks_between(page, section(page, "Before"))
    assert any(pattern in block.code for block in before), f"{page.name}: no 'before' of {pattern}"
    assert all(block.runner is None for block in before), "the template's code is shown, not run"
    after = blocks_between(page, section(page, "After"))
    assert any(block.runner == "python" for block in after), f"{page.name}: no 'after' that runs"
    assert pattern in page.read_text().split("## After", 1)[1], f"{page.name}: {pattern} unmapped"


def test_every_guide_has_the_sections_and_is_in_the_index() -> None:
    index = (GUIDES / "README.md").read_text()
    for name in sorted(set(PATTERNS.values())):
        text = (GUIDES / name).read_text()
        headings = [line for line in text.splitlines() if line.startswith("## ")]
        assert headings[0] == "## Before", name
        for heading in ("## After", "## What changes for operations", "## Pitfalls"):
            assert heading in headings, f"{name}: no {heading}"
        assert f"]({name})" in index, f"{name} is not linked from docs/migrate/README.md"
    assert "](checklist.md)" in index
