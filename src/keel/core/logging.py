"""Structured logging: structlog JSON (or a pretty console in a terminal) with redaction.

Every log line carries the request ID, tenant and principal bound by the request middleware
(``structlog.contextvars``). :func:`redact` runs last before rendering, so no processor
added later can slip a secret past it; Sentry's ``before_send`` uses the same function.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog

from keel.settings import LogFormat

REDACTED = "[REDACTED]"

#: Keys whose values are never logged, matched case-insensitively anywhere in the key.
_SENSITIVE_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authori[sz]ation|api[-_]?key|cookie|credential"
    r"|private[-_]?key|session[-_]?id|dsn|signature|client[-_]?secret|x-vault-token",
    re.IGNORECASE,
)
#: Values that look like credentials wherever they appear inside a string.
_SENSITIVE_VALUE = re.compile(
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"  # Authorization header values
    r"|\bbasic\s+[A-Za-z0-9+/=]{8,}"
    r"|\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"  # JWTs
    r"|\bkeel_[A-Za-z0-9_]{16,}"  # Keel API keys
    r"|(?<=://)[^/\s:@]*:[^/\s@]+(?=@)"  # user:password@ in URLs; Redis ones have no user
)


#: ``key=value`` / ``key: value`` written inside a string (exception messages, URLs' queries).
_ASSIGNMENT = re.compile(r"(?P<key>[A-Za-z][\w.-]*)(?P<sep>\s*[=:]\s*)(?P<value>[^\s&,;'\"]+)")


def is_sensitive_key(key: str) -> bool:
    return bool(_SENSITIVE_KEY.search(key))


def redact(value: Any, *, _depth: int = 0) -> Any:
    """Return ``value`` with sensitive keys masked and credential-shaped strings replaced."""
    if _depth > 12:
        return REDACTED
    if isinstance(value, str):
        return _redact_string(value)
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if isinstance(key, str) and is_sensitive_key(key) and value[key] not in (None, "")
            else redact(value[key], _depth=_depth + 1)
            for key in value
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(item, _depth=_depth + 1) for item in value)
    if hasattr(value, "get_secret_value"):  # pydantic SecretStr / SecretBytes
        return REDACTED
    return value


def _redact_string(text: str) -> str:
    text = _SENSITIVE_VALUE.sub(REDACTED, text)
    if "=" not in text and ":" not in text:
        return text
    return _ASSIGNMENT.sub(
        lambda match: f"{match['key']}{match['sep']}{REDACTED}"
        if is_sensitive_key(match["key"]) and match["value"] != REDACTED
        else match[0],
        text,
    )


def _redact_processor(
    logger: Any, method_name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    return redact(event_dict)  # type: ignore[no-any-return]


def configure_logging(level: str = "info", log_format: LogFormat = LogFormat.auto) -> None:
    """Configure structlog and route the standard library's loggers (uvicorn...) through it."""
    use_console = log_format == LogFormat.console or (
        log_format == LogFormat.auto and sys.stderr.isatty()
    )
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn installs its own handlers; send its records through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Our middleware logs each request with its context; uvicorn's access line would repeat it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    return structlog.stdlib.get_logger(name)
