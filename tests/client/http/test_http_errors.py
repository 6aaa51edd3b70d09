"""The error hierarchy, RFC 9457 problems, response models and the public API."""

from __future__ import annotations

import httpx
import pydantic
import pytest

import keel_client.http
from keel_client.http import (
    BaseAPIClient,
    CircuitOpenError,
    ClientError,
    HTTPStatusError,
    KeelHTTPError,
    RequestTimeout,
    ResponseValidationError,
    RetryBudgetExceeded,
    ServerError,
    SignatureVerificationError,
    SSRFBlockedError,
    TransportError,
    parse_problem,
)
from tests.client.http.faultserver import FaultServer


class Invoice(pydantic.BaseModel):
    id: str
    amount: int
    currency: str


class BillingAPI(BaseAPIClient):
    async def invoice(self, *, broken: bool = False) -> Invoice:
        params = {"broken": "1"} if broken else None
        return await self.get("/invoice", params=params, response_model=Invoice)


async def test_subclass_returns_a_parsed_model(fault_server: FaultServer) -> None:
    async with BillingAPI(fault_server.url) as billing:
        invoice = await billing.invoice()
    assert invoice == Invoice(id="42", amount=1250, currency="EUR")


async def test_class_level_base_url_is_used(fault_server: FaultServer) -> None:
    class Fixed(BaseAPIClient):
        base_url = fault_server.url

    async with Fixed() as api:
        assert (await api.get("/ok")).json() == {"ok": True}


async def test_body_not_matching_the_model_raises_validation_error(
    fault_server: FaultServer,
) -> None:
    async with BillingAPI(fault_server.url) as billing:
        with pytest.raises(ResponseValidationError) as caught:
            await billing.invoice(broken=True)
    assert caught.value.status == 200
    assert caught.value.request_id
    assert caught.value.errors[0]["loc"] == ("amount",)


@pytest.mark.parametrize(("status", "error_class"), [(404, ClientError), (500, ServerError)])
async def test_problem_json_is_parsed_into_the_error(
    fault_server: FaultServer, status: int, error_class: type[HTTPStatusError]
) -> None:
    async with BaseAPIClient(fault_server.url) as api:
        with pytest.raises(error_class) as caught:
            await api.get(f"/problem/{status}", headers={"X-Request-ID": "req-problem"})
    error = caught.value
    assert error.status == status
    assert error.problem_type == "https://keel.dev/problems/invoice-not-found"
    assert error.code == "invoice_not_found"
    assert error.title == "Invoice not found"
    assert error.detail == "No invoice 42 in tenant default."
    assert error.request_id == "req-problem"
    assert error.problem is not None
    assert error.problem.extensions == {"invoice_id": "42"}
    assert error.problem.instance == "/invoices/42"
    assert fault_server.hits[f"problem:{status}"] >= 1


def test_non_problem_error_body_falls_back_to_the_status_line() -> None:
    request = httpx.Request("GET", "https://api.example/x")
    response = httpx.Response(418, text="<html>teapot</html>", request=request)
    assert parse_problem(response) is None
    broken = httpx.Response(
        400, content=b"[1, 2", headers={"content-type": "application/problem+json"}
    )
    assert parse_problem(broken) is None


def test_exception_tree() -> None:
    for error_class in (
        HTTPStatusError,
        RequestTimeout,
        TransportError,
        CircuitOpenError,
        RetryBudgetExceeded,
        ResponseValidationError,
        SSRFBlockedError,
        SignatureVerificationError,
    ):
        assert issubclass(error_class, KeelHTTPError)
    assert issubclass(ClientError, HTTPStatusError)
    assert issubclass(ServerError, HTTPStatusError)
    assert issubclass(RequestTimeout, TimeoutError)
    assert not issubclass(TransportError, TimeoutError)


def test_every_error_names_status_code_and_request_id() -> None:
    error = TransportError("boom", request_id="r-1", status=None)
    assert (error.status, error.code, error.request_id) == (None, "transport_error", "r-1")
    assert "request_id=r-1" in str(error)
    exceeded = RetryBudgetExceeded(
        "spent", last_error=ServerError("x", response=httpx.Response(503), problem=None, status=503)
    )
    assert (exceeded.status, exceeded.code) == (503, "retry_budget_exceeded")


def test_public_api_is_exactly_the_curated_list() -> None:
    assert set(keel_client.http.__all__) == {
        "APIKey",
        "AsyncMemoryStorage",
        "BaseAPIClient",
        "BearerToken",
        "BreakerPolicy",
        "CircuitBreaker",
        "CircuitOpenError",
        "CircuitSnapshot",
        "CircuitState",
        "ClientCredentials",
        "ClientError",
        "ClientHealth",
        "DEFAULT_RETRY_STATUSES",
        "FailureKind",
        "HTTPCache",
        "HTTPSignatureAuth",
        "HTTPStatusError",
        "IDEMPOTENT_METHODS",
        "KeelHTTPError",
        "MemoryStorage",
        "Problem",
        "RequestOptions",
        "RequestTimeout",
        "ResponseValidationError",
        "RetryBudget",
        "RetryBudgetExceeded",
        "RetryBudgetSnapshot",
        "RetryPolicy",
        "SSRFBlockedError",
        "SSRFPolicy",
        "SSRFSafeTransport",
        "ServerError",
        "SignatureVerificationError",
        "SignatureVerifier",
        "SyncBaseAPIClient",
        "SyncSSRFSafeTransport",
        "TransportError",
        "VerifiedSignature",
        "backoff",
        "blocked_reason",
        "parse_ip_literal",
        "parse_problem",
        "parse_retry_after",
        "should_retry",
        "sleep_time",
    }
    for name in keel_client.http.__all__:
        assert getattr(keel_client.http, name) is not None
        assert not name.startswith("_")


def test_keel_client_never_imports_the_server() -> None:
    import subprocess
    import sys

    code = (
        "import sys, keel_client.http;"
        "print(any(m == 'keel' or m.startswith('keel.') for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
