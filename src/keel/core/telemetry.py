"""Error reporting (Sentry) and tracing (OpenTelemetry), both optional.

Sentry starts only when ``KEEL_SENTRY__DSN`` is set; :func:`scrub_event` strips PII and
secrets from every event before it leaves the process. OpenTelemetry starts only when the
``otel`` extra is installed and ``KEEL_OTEL__ENABLED=true``; the FastAPI instrumentation
extracts W3C ``traceparent`` from incoming requests, so Keel's spans join the caller's trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from keel.core.logging import REDACTED, get_logger, redact
from keel.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = get_logger(__name__)

#: Request parts that identify a person; dropped from Sentry events outright.
_PII_REQUEST_KEYS = ("cookies", "data", "env")
_PII_USER_KEYS = ("email", "ip_address", "username")
#: ``key=value`` or ``key: value`` inside a message, e.g. ``RuntimeError("password=...")``.


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
    for container in ("exception", "threads"):
        _drop_frame_variables(event.get(container))
    scrubbed: dict[str, Any] = redact(event)
    return scrubbed


def _drop_frame_variables(container: Any) -> None:
    # Local variables hold raw requests (ASGI scope headers as byte pairs, cookies) in shapes
    # that key-based redaction cannot recognise, so no frame's variables leave the process.
    values = container.get("values") if isinstance(container, Mapping) else None
    for value in values if isinstance(values, list) else ():
        stacktrace = value.get("stacktrace") if isinstance(value, dict) else None
        frames = stacktrace.get("frames") if isinstance(stacktrace, dict) else None
        for frame in frames if isinstance(frames, list) else ():
            if isinstance(frame, dict):
                frame.pop("vars", None)


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


def init_tracing(
    app: FastAPI, settings: Settings, tracer_provider: TracerProvider | None = None
) -> bool:
    """Instrument ``app`` when tracing is enabled and the ``otel`` extra is installed.

    Spans go to ``tracer_provider`` when given (tests pass one with an in-memory exporter),
    else to the global provider, which is created (OTLP export when configured) if unset.
    """
    if not settings.otel.enabled:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("otel.unavailable", hint="pip install 'keel[otel]'")
        return False
    provider = tracer_provider or trace.get_tracer_provider()
    if not isinstance(provider, SDKTracerProvider) and tracer_provider is None:
        provider = SDKTracerProvider(
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
