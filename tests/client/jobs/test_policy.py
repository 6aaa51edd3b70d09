"""The jobs SDK's pure decisions: what goes to the spool, what Keel refused for good, and
what a failed job reports."""

from __future__ import annotations

import httpx
import pytest

from keel_client.http import (
    CircuitOpenError,
    ClientError,
    RequestTimeout,
    RetryBudgetExceeded,
    ServerError,
    TransportError,
)
from keel_client.jobs import error_text, is_rejected, is_unreachable, traceback_text
from keel_client.jobs._policy import splits_batch


def status_error(status: int) -> ClientError | ServerError:
    response = httpx.Response(status, request=httpx.Request("POST", "http://keel/jobs/v1/jobs"))
    error_class = ServerError if status >= 500 else ClientError
    return error_class("failed", response=response, problem=None, status=status)


@pytest.mark.parametrize("status", [409, 429, 502, 503, 504])
def test_try_later_answers_are_spooled(status: int) -> None:
    assert is_unreachable(status_error(status))
    assert not is_rejected(status_error(status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 500])
def test_other_answers_are_raised_to_the_caller(status: int) -> None:
    assert not is_unreachable(status_error(status))


@pytest.mark.parametrize("status", [400, 413, 422])
def test_only_a_refusal_of_the_job_itself_drops_a_spooled_job(status: int) -> None:
    assert is_rejected(status_error(status))


@pytest.mark.parametrize("status", [401, 403, 404, 500])
def test_deployment_problems_keep_spooled_jobs_waiting(status: int) -> None:
    assert not is_rejected(status_error(status))


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_batch_refused_for_one_of_its_jobs_is_split(status: int) -> None:
    assert splits_batch(status_error(status), queue_count=1)


def test_a_forbidden_batch_is_split_only_when_it_spans_queues() -> None:
    assert splits_batch(status_error(403), queue_count=2)
    assert not splits_batch(status_error(403), queue_count=1)


@pytest.mark.parametrize("status", [401, 404, 409, 429, 500, 503])
def test_a_batch_every_part_of_which_would_fail_alike_is_not_split(status: int) -> None:
    assert not splits_batch(status_error(status), queue_count=3)
    assert not splits_batch(TransportError("connection refused"), queue_count=3)


def test_no_answer_at_all_is_unreachable() -> None:
    assert is_unreachable(TransportError("connection refused"))
    assert is_unreachable(RequestTimeout("timed out"))
    assert is_unreachable(CircuitOpenError("open", host="keel", retry_after=1.0))
    assert is_unreachable(RetryBudgetExceeded("spent", last_error=status_error(503)))
    assert not is_unreachable(RetryBudgetExceeded("spent", last_error=status_error(500)))
    assert not is_unreachable(ValueError("not about HTTP"))


def test_error_text_is_the_type_and_message_cut_short() -> None:
    assert error_text(ValueError("no rows")) == "ValueError: no rows"
    assert error_text(KeyError()) == "KeyError"
    assert error_text(RequestTimeout("slow")).startswith("keel_client.http._exceptions.")
    long = error_text(ValueError("x" * 5000), limit=100)
    assert len(long) == 100
    assert long.endswith("…")


def test_a_traceback_holds_code_lines_and_never_local_variables() -> None:
    def charge(card_number: str) -> None:
        password = "hunter2"
        raise RuntimeError(f"declined ({len(password)})")

    card = "4111" * 4  # an argument's value is a local of the frame, not a line of code
    with pytest.raises(RuntimeError) as caught:
        charge(card)
    text = traceback_text(caught.value)
    assert 'raise RuntimeError(f"declined ({len(password)})")' in text
    assert "hunter2" not in text
    assert "4111111111111111" not in text
    assert text.rstrip().endswith("RuntimeError: declined (7)")
    assert len(traceback_text(caught.value, limit=50)) == 50
