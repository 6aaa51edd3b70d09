"""Error reporting (Sentry) and tracing (OpenTelemetry), both optional.

Sentry starts only when ``KEEL_SENTRY__DSN`` is set; :func:`scrub_event` strips PII and
secrets from every event before it leaves the process. OpenTelemetry starts only when the
``otel`` extra is installed and ``KEEL_OTEL__ENABLED=true``; the FastAPI instrumentation
extracts W3C ``traceparent`` from incoming requests, so Keel's spans join the caller's trace.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from keel.core.logging import REDACTED, get_logger, redact
from keel.settings import Settings

log = get_logger(__name__)

#: Request parts that identify a person; dropped from Sentry events outright.
_PII_REQUEST_KEYS = ("cookies", "data", "env")
_PII_USER_KEYS = ("email", "ip_address", "username")


def scrub_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sentry ``before_send``: no PII, no secrets, no request bodies."""
    request = event.get("request")
    if isinstance(request, dict):
        for key in _PII_REQUEST_KEYS:
            request.pop(key, None)
        if isinstance(request.get("query_string"), str) and request["query_string"]:
            request["query_string"] = REDACTED
    user = event.get("user")
    if isinstance(user, dict):
        event["user"] = {k: v for k, v in user.items() if k not in _PII_USER_KEYS}
    scrubbed: dict[str, Any] = redact(event)
    return scrubbed


def init_sentry(settings: Settings) -> bool:
    if settings.sentry.dsn is None:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry.dsn.get_secret_value(),
        environment=settings.sentry.environment or settings.environment,
        traces_sample_rate=settings.sentry.traces_sample_rate,
        send_default_pii=False,
        before_send=scrub_event,  # type: ignore[arg-type]
        default_integrations=True,
    )
    return True


def init_tracing(app: FastAPI, settings: Settings) -> bool:
    """Instrument ``app`` when tracing is enabled and the ``otel`` extra is installed."""
    if not settings.otel.enabled:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("otel.unavailable", hint="pip install 'keel[otel]'")
        return False
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.otel.service_name})
        )
        if settings.otel.exporter_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.otel.exporter_endpoint.rstrip("/") + "/v1/traces"
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls="health/live,health/ready,metrics"
    )
    return True
