"""Structured logs: redaction of secrets anywhere, JSON lines carrying the request ID."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from keel.app import create_app
from keel.core.logging import REDACTED, configure_logging, redact
from keel.settings import LogFormat, Settings
from tests.support.asgi import serve
from tests.support.keel_process import TEST_MASTER_KEY

JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJ1c2VyLTEiLCJ0ZW5hbnQiOiJkZWZhdWx0In0"
    ".c2lnbmF0dXJlLWJ5dGVz"
)
API_KEY = "keel_live_8f3a9c0d1e2b4a6f7c8d9e0f"


class TestRedactKeys:
    @pytest.mark.parametrize(
        "key",
        [
            "password",
            "new_password",
            "passwd",
            "passphrase",
            "token",
            "refresh_token",
            "Authorization",
            "api_key",
            "X-Api-Key",
            "apikey",
            "cookie",
            "Set-Cookie",
            "secret",
            "client_secret",
            "private_key",
            "credentials",
            "session_id",
            "dsn",
            "X-Vault-Token",
        ],
    )
    def test_sensitive_key_is_masked(self, key: str) -> None:
        assert redact({key: "value-to-hide"}) == {key: REDACTED}

    def test_sensitive_keys_are_masked_at_any_depth(self) -> None:
        event = {
            "event": "login",
            "user": "ada",
            "request": {
                "headers": [{"name": "accept", "value": "json"}, {"Authorization": "x y"}],
                "body": {"credentials": {"username": "ada", "password": "hunter2"}},
            },
        }
        assert redact(event) == {
            "event": "login",
            "user": "ada",
            "request": {
                "headers": [{"name": "accept", "value": "json"}, {"Authorization": REDACTED}],
                "body": {"credentials": REDACTED},
            },
        }

    def test_ordinary_values_are_kept_with_their_types(self) -> None:
        event = {"count": 3, "ratio": 0.5, "ok": True, "none": None, "pair": ("a", 1)}
        assert redact(event) == event
        assert isinstance(redact(event)["pair"], tuple)

    def test_secret_str_is_masked_under_any_key(self) -> None:
        assert redact({"value": SecretStr("hunter2")}) == {"value": REDACTED}

    def test_nesting_beyond_the_depth_limit_is_masked_not_walked(self) -> None:
        deep: Any = {"password": "hunter2"}
        for _ in range(30):
            deep = {"level": deep}
        assert "hunter2" not in json.dumps(redact(deep))


class TestRedactValues:
    @pytest.mark.parametrize(
        ("text", "secret"),
        [
            ("Authorization: Bearer abc.DEF-123_xyz", "abc.DEF-123_xyz"),
            ("header was bearer s3cr3t-token", "s3cr3t-token"),
            ("Basic dXNlcjpodW50ZXIy sent", "dXNlcjpodW50ZXIy"),
            (f"verifying {JWT} failed", JWT),
            (f"key {API_KEY} revoked", API_KEY),
            ("connect to postgresql://keel:db-pass@db:5432/keel", "db-pass"),
            ("connect to redis://:redis-pass@cache:6379/0", "redis-pass"),
        ],
        ids=[
            "bearer",
            "bearer-lower",
            "basic",
            "jwt",
            "api-key",
            "url-password",
            "url-password-no-user",
        ],
    )
    def test_credentials_inside_strings_are_replaced(self, text: str, secret: str) -> None:
        redacted = redact({"message": text, "nested": [text]})
        assert secret not in json.dumps(redacted)
        assert REDACTED in redacted["message"]

    def test_url_keeps_host_and_database_when_its_password_is_masked(self) -> None:
        assert redact("postgresql://keel:db-pass@db:5432/keel").endswith("@db:5432/keel")

    def test_ordinary_text_is_untouched(self) -> None:
        text = "GET /flags/v1/flags/checkout answered 200 in 3 ms; see https://keel.example/x"
        assert redact(text) == text


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back after the test."""
    saved_structlog = structlog.get_config()
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved_others = {
        name: (
            logging.getLogger(name).handlers[:],
            logging.getLogger(name).propagate,
            logging.getLogger(name).level,
        )
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "alembic")
    }
    yield
    structlog.configure(**saved_structlog)
    structlog.contextvars.clear_contextvars()
    root.handlers[:], root.level = saved_root[0], saved_root[1]
    for name, (handlers, propagate, level) in saved_others.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.propagate, logger.level = handlers, propagate, level


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.usefixtures("restore_logging")
class TestConfiguredOutput:
    async def test_request_log_line_is_json_with_the_request_id(
        self, capsys: pytest.CaptureFixture[str], sqlite_settings: Settings
    ) -> None:
        configure_logging("info", LogFormat.json)
        async with serve(create_app(sqlite_settings)) as client:
            response = await client.get("/no-such-page", headers={"X-Request-ID": "log-req-1"})
            probe = await client.get("/health/ready", headers={"X-Request-ID": "probe-1"})
        assert response.status_code == 404
        assert probe.status_code == 200
        lines = json_lines(capsys.readouterr().err)
        request_lines = [line for line in lines if line["event"] == "http.request"]
        # Probes log at debug, so at info only the page request has a line.
        assert len(request_lines) == 1
        assert request_lines[0]["request_id"] == "log-req-1"
        assert request_lines[0]["status"] == 404
        assert request_lines[0]["level"] == "info"
        assert request_lines[0]["logger"] == "keel.http"
        assert "timestamp" in request_lines[0]

    async def test_probe_requests_are_logged_at_debug(
        self, capsys: pytest.CaptureFixture[str], sqlite_settings: Settings
    ) -> None:
        configure_logging("debug", LogFormat.json)
        async with serve(create_app(sqlite_settings)) as client:
            await client.get("/health/ready", headers={"X-Request-ID": "probe-2"})
        lines = json_lines(capsys.readouterr().err)
        probe_lines = [
            line
            for line in lines
            if line.get("request_id") == "probe-2" and line["event"] == "http.request"
        ]
        assert [(line["event"], line["level"]) for line in probe_lines] == [
            ("http.request", "debug")
        ]

    def test_context_bound_values_appear_on_every_line(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("info", LogFormat.json)
        structlog.contextvars.bind_contextvars(request_id="ctx-9", tenant="default")
        log = structlog.get_logger("keel.test")
        log.info("first")
        log.warning("second", extra_field=1)
        lines = json_lines(capsys.readouterr().err)
        assert [(line["event"], line["request_id"], line["tenant"]) for line in lines] == [
            ("first", "ctx-9", "default"),
            ("second", "ctx-9", "default"),
        ]

    def test_password_passed_to_a_log_call_is_not_printed(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("info", LogFormat.json)
        structlog.get_logger("keel.test").info(
            "user.created", user="ada", password="hunter2-pw", note=f"token {JWT}"
        )
        output = capsys.readouterr().err
        assert "hunter2-pw" not in output
        assert JWT not in output
        [line] = json_lines(output)
        assert line["password"] == REDACTED
        assert line["user"] == "ada"

    def test_standard_library_records_are_json_and_redacted(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("info", LogFormat.json)
        logging.getLogger("uvicorn.error").warning("client sent Bearer leaked-token-1")
        [line] = json_lines(capsys.readouterr().err)
        assert line["logger"] == "uvicorn.error"
        assert "leaked-token-1" not in json.dumps(line)

    def test_exception_traceback_is_logged_redacted(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure_logging("info", LogFormat.json)
        try:
            raise RuntimeError("upstream said: Authorization: Bearer leaked-token-2")
        except RuntimeError:
            structlog.get_logger("keel.test").exception("call.failed")
        [line] = json_lines(capsys.readouterr().err)
        assert "RuntimeError" in line["exception"]
        assert "leaked-token-2" not in json.dumps(line)

    def test_records_below_the_level_are_dropped(self, capsys: pytest.CaptureFixture[str]) -> None:
        configure_logging("warning", LogFormat.json)
        log = structlog.get_logger("keel.test")
        log.info("quiet")
        log.warning("loud")
        assert [line["event"] for line in json_lines(capsys.readouterr().err)] == ["loud"]


EMBEDDER = """
import logging, structlog
from keel.app import create_app
from keel.settings import Settings

app = create_app(Settings(data_dir={data_dir!r}, master_key={key!r}))
assert structlog.is_configured()

def leaky():
    password = "hunter2-local-variable"
    raise RuntimeError("boom")

try:
    leaky()
except RuntimeError:
    structlog.get_logger("keel.test").exception("call.failed")
"""


def test_an_embedder_without_a_log_configuration_gets_keels_not_structlogs_defaults(
    tmp_path: Path,
) -> None:
    """structlog's defaults print every frame's local variables with a traceback: a password
    held in a local would reach the log. ``create_app`` in a process that configured nothing
    sets Keel's redacting configuration up, so the traceback has no locals."""
    script = EMBEDDER.format(data_dir=str(tmp_path / ".keel"), key=TEST_MASTER_KEY)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KEEL_LOG_FORMAT": "json"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [line] = [entry for entry in json_lines(done.stderr) if entry.get("event") == "call.failed"]
    assert "RuntimeError: boom" in line["exception"]
    assert "hunter2-local-variable" not in done.stderr
