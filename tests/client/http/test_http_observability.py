"""Request IDs, traceparent, spans per attempt, Prometheus metrics and redacted logs."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY, CollectorRegistry

from keel_client.http import BaseAPIClient, BearerToken, ServerError
from tests.client.http.faultserver import FAST_RETRY, FaultServer


@pytest.fixture
def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_one_span_per_attempt_and_traceparent_names_it(
    fault_server: FaultServer, key: str, tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = tracing
    async with BaseAPIClient(fault_server.url, retry=FAST_RETRY, tracer_provider=provider) as api:
        await api.get(f"/flaky/{key}", params={"fail": 1, "token": "secret-value"})
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == ["GET", "GET"]
    assert {span.kind for span in spans} == {SpanKind.CLIENT}
    assert [span.attributes.get("http.response.status_code") for span in spans] == [503, 200]
    assert spans[1].attributes["http.request.resend_count"] == 1
    assert "secret-value" not in str(spans[0].attributes["url.full"])
    for span, hit in zip(spans, fault_server.seen[key], strict=True):
        context = span.get_span_context()
        assert hit["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")


async def test_traceparent_continues_the_callers_trace(
    fault_server: FaultServer, tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, _ = tracing
    tracer = provider.get_tracer("test")
    async with BaseAPIClient(fault_server.url, tracer_provider=provider) as api:
        with tracer.start_as_current_span("handler") as parent:
            headers = (await api.get("/echo")).json()["headers"]
    trace_id = f"{parent.get_span_context().trace_id:032x}"
    assert headers["traceparent"].split("-")[1] == trace_id


async def test_metrics_count_calls_attempts_retries_and_latency(
    fault_server: FaultServer, key: str
) -> None:
    registry = CollectorRegistry()
    async with BaseAPIClient(
        fault_server.url, retry=FAST_RETRY, metrics_registry=registry, name="billing"
    ) as api:
        await api.get(f"/flaky/{key}", params={"fail": 2})
    host = f"127.0.0.1:{fault_server.port}"
    labels = {"client": "billing", "method": "GET", "host": host}

    def sample(name: str, **extra: str) -> float | None:
        return registry.get_sample_value(name, {**labels, **extra})

    assert sample("keel_http_client_requests_total", outcome="200") == 1.0
    assert sample("keel_http_client_attempts_total", outcome="503") == 2.0
    assert sample("keel_http_client_attempts_total", outcome="200") == 1.0
    assert sample("keel_http_client_request_duration_seconds_count") == 1.0
    assert (
        registry.get_sample_value(
            "keel_http_client_retries_total", {"client": "billing", "host": host}
        )
        == 2.0
    )
    assert (
        registry.get_sample_value(
            "keel_http_client_circuit_state", {"client": "billing", "host": host}
        )
        == 0.0
    )


async def test_each_client_has_a_private_registry_by_default(fault_server: FaultServer) -> None:
    async with BaseAPIClient(fault_server.url) as first, BaseAPIClient(fault_server.url) as second:
        await first.get("/ok")
    assert first.metrics_registry is not second.metrics_registry
    assert REGISTRY.get_sample_value("keel_http_client_requests_total", {}) is None
    host = f"127.0.0.1:{fault_server.port}"
    labels = {"client": "BaseAPIClient", "method": "GET", "host": host, "outcome": "200"}
    assert (
        second.metrics_registry.get_sample_value("keel_http_client_requests_total", labels) is None
    )
    assert first.metrics_registry.get_sample_value("keel_http_client_requests_total", labels) == 1.0


async def test_two_clients_can_share_one_registry(fault_server: FaultServer) -> None:
    registry = CollectorRegistry()
    async with (
        BaseAPIClient(fault_server.url, metrics_registry=registry, name="a") as a,
        BaseAPIClient(fault_server.url, metrics_registry=registry, name="b") as b,
    ):
        await a.get("/ok")
        await b.get("/ok")
    host = f"127.0.0.1:{fault_server.port}"
    for client in ("a", "b"):
        labels = {"client": client, "method": "GET", "host": host, "outcome": "200"}
        assert registry.get_sample_value("keel_http_client_requests_total", labels) == 1.0


async def test_failed_attempts_are_logged_without_secrets(
    fault_server: FaultServer, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keel_client.http")
    async with BaseAPIClient(
        fault_server.url, retry=FAST_RETRY, auth=BearerToken("bearer-secret")
    ) as api:
        with pytest.raises(ServerError):
            await api.get(f"/flaky/{key}", params={"fail": 9, "api_key": "query-secret"})
    records = [r for r in caplog.records if r.name == "keel_client.http"]
    assert len(records) == 1 + FAST_RETRY.max_retries
    assert [r.will_retry for r in records] == [True, True, True, False]  # type: ignore[attr-defined]
    assert {r.request_id for r in records} == {fault_server.seen[key][0]["x-request-id"]}  # type: ignore[attr-defined]
    assert records[0].http_status == 503  # type: ignore[attr-defined]
    assert records[0].http_url.endswith("?fail=REDACTED&api_key=REDACTED")  # type: ignore[attr-defined]
    everything = " ".join(f"{r.getMessage()} {vars(r)}" for r in records)
    assert "query-secret" not in everything
    assert "bearer-secret" not in everything
