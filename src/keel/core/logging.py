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
from functools import lru_cache
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


@lru_cache(maxsize=4096)
def is_sensitive_key(key: str) -> bool:
    return bool(_SENSITIVE_KEY.search(key))


#: Every branch of ``_SENSITIVE_VALUE`` needs one of these (lowercased); a string holding none
#: skips the regex, which keeps redaction cheap on the hot path of one log line per request.
_VALUE_MARKERS = ("bearer", "basic", "eyj", "keel_", "://")


def redact(value: Any, *, _depth: int = 0) -> Any:
    """Return ``value`` with sensitive keys masked and credential-shaped strings replaced."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if _depth > 12:
        return REDACTED
    if isinstance(value, str):
        return _redact_string(value)
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if isinstance(key, str) and is_sensitive_key(key) and item not in (None, "")
            else _redact_string(item)
            if type(item) is str  # the usual value, without a call of this function
            else redact(item, _depth=_depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(item, _depth=_depth + 1) for item in value)
    if hasattr(value, "get_secret_value"):  # pydantic SecretStr / SecretBytes
        return REDACTED
    return value


def _redact_string(text: str) -> str:
    lowered = text.lower()
    if any(marker in lowered for marker in _VALUE_MARKERS):
        text = _SENSITIVE_VALUE.sub(REDACTED, text)
    if "=" not in text and ":" not in text:
        return text
    return _ASSIGNMENT.sub(
        lambda match: (
            f"{match['key']}{match['sep']}{REDACTED}"
            if is_sensitive_key(match["key"]) and match["value"] != REDACTED
            else match[0]
        ),
        text,
    )


def _name_logger(
    logger: Any, method_name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    name = event_dict.pop("logger_name", None)
    if name is not None:
        event_dict["logger"] = name
    return event_dict


def _redact_processor(
    logger: Any, method_name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    return redact(event_dict)  # type: ignore[no-any-return]


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (test capture replaces and closes it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str = "info", log_format: LogFormat = LogFormat.auto) -> None:
    """Configure structlog for Keel's loggers and route the standard library's through it.

    Keel's own loggers use structlog's native pipeline (a level-filtering logger writing
    straight to stderr): a filtered-out call costs about a microsecond and an emitted line a
    fraction of the standard library's cost, which matters at one access line per request.
    Foreign standard-library records (uvicorn, Alembic) pass the same redaction and renderer.
    """
    use_console = log_format == LogFormat.console or (
        log_format == LogFormat.auto and sys.stderr.isatty()
    )
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    # Redaction runs before the timestamp is added (nothing secret there, and it saves work).
    tail: list[structlog.types.Processor] = [
        _redact_processor,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        renderer,
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _name_logger,
            structlog.processors.format_exc_info,
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        # Not cached: module-level loggers then follow a later reconfiguration (level, output).
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.format_exc_info,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
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
    # Alembic narrates every step; aiosqlite logs SQL parameters at debug (hashes, tokens).
    for noisy in ("alembic", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Our middleware logs each request with its context; uvicorn's access line would repeat it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    """A structlog logger whose lines carry ``logger=<name>``."""
    # Initial values keep the proxy lazy (resolved at first use, after configure_logging);
    # ``logger`` itself cannot be an initial value, so _name_logger renames this key.
    return structlog.get_logger(logger_name=name) if name else structlog.get_logger()
