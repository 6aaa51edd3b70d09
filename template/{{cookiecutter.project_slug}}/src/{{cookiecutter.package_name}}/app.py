"""The {{ cookiecutter.project_name }} service: ``create_app()`` builds the FastAPI app wired to Keel.

Everything Keel-related is keel-client's code, configured here in a few lines: upgrading the
SDK fixes the service, regenerating the project is never needed.

Run it with ``make serve`` (uvicorn, against the Keel at ``KEEL_URL`` with ``KEEL_TOKEN``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from keel_client import Keel
{%- if cookiecutter.use_auth and cookiecutter.use_edge %}
from keel_client.fastapi import KeelAuth, use_keel_edge
{%- elif cookiecutter.use_auth %}
from keel_client.fastapi import KeelAuth
{%- elif cookiecutter.use_edge %}
from keel_client.fastapi import use_keel_edge
{%- endif %}
{%- if cookiecutter.use_flags %}
from keel_client.flags.openfeature import KeelProvider
{%- endif %}
from keel_client.logs import RequestContextMiddleware, configure_logging
{%- if cookiecutter.use_flags %}
from openfeature import api as openfeature
{%- endif %}

from {{ cookiecutter.package_name }}.api import {% for name in ["checkout" if cookiecutter.use_flags, "documents" if cookiecutter.use_storage, "health", "notifications" if cookiecutter.use_notify, "orders", "reports" if cookiecutter.use_jobs] if name %}{{ name }}{{ ", " if not loop.last }}{% endfor %}
from {{ cookiecutter.package_name }}.settings import {% if cookiecutter.use_edge %}SERVICE, {% endif %}Settings, get_settings


def create_app(settings: Settings | None = None, keel: Keel | None = None) -> FastAPI:
    """The app, its Keel client (``Keel.from_env()`` unless given) and its lifespan."""
    settings = settings if settings is not None else get_settings()
    configure_logging(settings.log_level)
    keel = keel if keel is not None else Keel.from_env()
{%- if cookiecutter.use_auth %}
    keel_auth = KeelAuth.for_keel(keel)
{%- endif %}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Closing the Keel closes what it made: the flags stream, the audit recorder (which
        # flushes first), the edge policy's stream, then the connection pool.
        async with keel:
{%- if cookiecutter.use_flags %}
            flags = keel.flags.client(
                settings.environment,
                cache_path=settings.flags_cache_dir / f"{settings.environment}.json",
            )
            app.state.flags = await flags.start()
            openfeature.set_provider(KeelProvider(flags))
{%- endif %}
{%- if cookiecutter.use_audit %}
            app.state.audit = keel.audit.recorder(spool_dir=settings.audit_spool_dir)
            await app.state.audit.start()
{%- endif %}
            yield
{%- if cookiecutter.use_flags %}
            openfeature.shutdown()
{%- endif %}
{%- if cookiecutter.use_auth %}
            await keel_auth.aclose()
{%- endif %}

    app = FastAPI(title="{{ cookiecutter.project_name }}", lifespan=lifespan)
    app.state.keel = keel
    app.state.settings = settings
{%- if cookiecutter.use_auth %}
    # require_auth / require_permission on the routes authenticate with Keel (JWTs verified
    # locally, API keys introspected); the health endpoints stay open.
    keel_auth.install(app, middleware=False)
{%- endif %}
{%- if cookiecutter.use_edge %}
    # The gateway's routes for this service (keel.toml's [[routes]]), enforced in-process:
    # authentication, rate limits counted in Keel across replicas, security headers, CORS.
    use_keel_edge(app, keel, service=SERVICE)
{%- endif %}
    # Outermost: every log line of a request carries its id and trace context.
    app.add_middleware(RequestContextMiddleware)
{%- for name in ["health", "orders", "checkout" if cookiecutter.use_flags, "notifications" if cookiecutter.use_notify, "documents" if cookiecutter.use_storage, "reports" if cookiecutter.use_jobs] if name %}
    app.include_router({{ name }}.router)
{%- endfor %}
    return app
