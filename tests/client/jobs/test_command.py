"""``python -m keel_client.jobs run``'s arguments and log levels. The process itself, run
against a real Keel, is in ``test_processes``."""

from __future__ import annotations

import logging

import pytest

from keel_client.jobs.__main__ import configure_logging, main


def test_a_bad_concurrency_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "tests.client.jobs.worker_app:worker", "--concurrency", "0"])
    assert exited.value.code == 2
    assert "--concurrency is at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(("level", "httpx_at_info"), [("INFO", False), ("DEBUG", True)])
def test_httpx_request_lines_are_left_to_debug(
    monkeypatch: pytest.MonkeyPatch, level: str, httpx_at_info: bool
) -> None:
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    levels = root.level, httpx_logger.level
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process (pytest adds its own)
    try:
        configure_logging(level)
        assert root.isEnabledFor(logging.INFO)
        assert httpx_logger.isEnabledFor(logging.INFO) is httpx_at_info
        assert httpx_logger.isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(levels[0])
        httpx_logger.setLevel(levels[1])
