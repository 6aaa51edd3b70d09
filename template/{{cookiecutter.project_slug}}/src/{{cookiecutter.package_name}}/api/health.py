"""Liveness and readiness: ready only when Keel and the clients the service needs answer."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from keel_client.readiness import keel_readiness

from {{ cookiecutter.package_name }}.api.deps import AppState, KeelClient

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> dict[str, str]:
    """The process runs (no dependency is asked)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(keel: KeelClient, state: AppState) -> JSONResponse:
    """Keel answers{% if cookiecutter.use_audit %}, the audit recorder delivers{% endif %}
    {%- if cookiecutter.use_flags %}, the flags are loaded{% endif %}: 503 otherwise."""
    readiness = await keel_readiness(
        keel,
{%- if cookiecutter.use_audit %}
        audit=state.audit,
{%- endif %}
{%- if cookiecutter.use_flags %}
        flags=state.flags,
{%- endif %}
    )
    return JSONResponse(readiness.to_dict(), status_code=200 if readiness.is_ready else 503)
