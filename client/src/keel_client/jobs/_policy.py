"""The jobs SDK's decisions, as pure functions tested on their own: which failures of an
enqueue go to the spool, when a batch of concurrent enqueues Keel refused is split to find
the job it refuses, what a failed job reports (never a secret: the exception's type and
message, truncated, and a traceback of code lines without local variables), and when a
worker's failure is the last attempt.
"""

from __future__ import annotations

import traceback as _traceback

from keel_client.http import (
    DEFAULT_RETRY_STATUSES,
    CircuitOpenError,
    KeelHTTPError,
    RequestTimeout,
    RetryBudgetExceeded,
    TransportError,
)

__all__ = ["MAX_ERROR_CHARS", "MAX_TRACEBACK_CHARS", "REJECTION_STATUSES", "error_text",
           "is_rejected", "is_unreachable", "splits_batch", "traceback_text"]  # fmt: skip

#: What a failed attempt reports at most: a job's errors are listed for every attempt.
MAX_ERROR_CHARS = 2000
MAX_TRACEBACK_CHARS = 16000
#: Answers to an enqueue that refuse the job itself (malformed, arguments too large, an
#: ``Idempotency-Key`` reused with another job): sending it again cannot succeed. A 409 is
#: not one: Keel answers it while another request with the same key is in progress.
REJECTION_STATUSES = frozenset({400, 413, 422})
#: "Not taken, try later": rate limited, bad gateway, unavailable, gateway timeout, and a
#: request with the same ``Idempotency-Key`` still in progress.
_TRY_LATER_STATUSES = DEFAULT_RETRY_STATUSES | {409}


def is_unreachable(error: BaseException) -> bool:
    """Whether a failed call means "Keel did not take it, try later" (the spool's case):
    no connection, a timeout, an open circuit, or 409/429/502/503/504 after the client's
    retries.

    Anything else is the caller's to see at once: 4xx (a bad job, a missing permission, an
    unknown queue), or a 500 (a bug the spool would only hide).
    """
    if isinstance(error, RetryBudgetExceeded):
        return is_unreachable(error.last_error)
    if isinstance(error, TransportError | RequestTimeout | CircuitOpenError):
        return True
    return isinstance(error, KeelHTTPError) and error.status in _TRY_LATER_STATUSES


def is_rejected(error: BaseException) -> bool:
    """Whether Keel refused a spooled or outbox job for good (it is then dropped and
    reported, so that it does not block the jobs behind it). A 401, 403 or 404 is not: a
    deployment problem (a key without ``jobs:<queue>:enqueue``, a Keel without the jobs
    service) that a fix ends, so the jobs wait for it."""
    return isinstance(error, KeelHTTPError) and error.status in REJECTION_STATUSES


def splits_batch(error: BaseException, queue_count: int) -> bool:
    """Whether a batch of several callers' enqueues that Keel refused as a whole is sent again
    in halves, down to the job it refuses, so that only that job's caller sees the error:
    the job itself refused (400, 413, 422), or a 403 when the batch spans several queues (the
    key may enqueue to some of them). Anything else (a 401, a 404, a 500) would refuse every
    part alike: each caller gets the batch's error."""
    if not isinstance(error, KeelHTTPError):
        return False
    return error.status in REJECTION_STATUSES or (error.status == 403 and queue_count > 1)


def error_text(error: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """``"ValueError: report 42 has no rows"``: the type and message, cut to ``limit``."""
    name = type(error).__qualname__
    module = type(error).__module__
    if module not in ("builtins", "__main__"):
        name = f"{module}.{name}"
    message = str(error)
    text = f"{name}: {message}" if message else name
    return _truncate(text, limit)


def traceback_text(error: BaseException, limit: int = MAX_TRACEBACK_CHARS) -> str:
    """The traceback of ``error``: code lines and the message, never local variables; when
    longer than ``limit``, its end (the frames nearest the error)."""
    text = "".join(_traceback.format_exception(error))
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1) :]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
