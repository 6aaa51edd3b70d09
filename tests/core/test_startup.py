"""A serving process's start-up (:mod:`keel.core.startup`): the collector paused until the
app has started, and left alone when something else paused it."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from keel.core.startup import (
    garbage_collection_paused,
    pause_garbage_collection,
    resume_garbage_collection,
)


@pytest.fixture(autouse=True)
def collector_enabled_afterwards() -> Iterator[None]:
    yield
    gc.enable()


def test_the_collector_is_paused_for_the_block_and_resumed_after() -> None:
    with garbage_collection_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_the_app_resumes_it_first_and_the_block_then_changes_nothing() -> None:
    with garbage_collection_paused():
        resume_garbage_collection()  # as the app's lifespan does once started
        assert gc.isenabled()
        gc.disable()  # whatever a later part of the process decides stays decided
    assert not gc.isenabled()


def test_a_collector_paused_elsewhere_is_not_resumed() -> None:
    gc.disable()
    pause_garbage_collection()
    resume_garbage_collection()
    assert not gc.isenabled()


def _run(script: str) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed


def test_the_command_s_processes_import_structlog_without_rich_which_stays_importable() -> None:
    completed = _run(
        "import sys\n"
        "from keel.core.startup import import_structlog_without_rich\n"
        "import_structlog_without_rich()\n"
        "import structlog.dev, structlog.tracebacks\n"
        "print('rich' in sys.modules, structlog.dev.rich, structlog.tracebacks.rich)\n"
        "import rich.console\n"
        "print(rich.console.Console is not None)\n"
    )
    assert completed.stdout.split() == ["False", "None", "None", "True"]


LOG_AN_EXCEPTION = (
    "from keel.core.logging import LogFormat, configure_logging, get_logger\n"
    "configure_logging('info', LogFormat.{format})\n"
    "try:\n"
    "    raise ValueError('it went wrong')\n"
    "except ValueError:\n"
    "    get_logger('keel.test').exception('it.failed', attempt=2)\n"
)


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_keel_s_log_lines_are_the_same_without_rich(log_format: str) -> None:
    """Keel formats exceptions itself (format_exc_info, redaction) before the renderer, so
    the renderer's rich tracebacks are never used."""
    script = "from keel.core.startup import import_structlog_without_rich\n{first}\n"
    script += LOG_AN_EXCEPTION.format(format=log_format)
    with_rich = _run(script.format(first="pass")).stderr
    without_rich = _run(script.format(first="import_structlog_without_rich()")).stderr

    def without_timestamp(text: str) -> str:
        return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "<time>", text)

    assert "Traceback" in with_rich
    assert without_timestamp(without_rich) == without_timestamp(with_rich)
