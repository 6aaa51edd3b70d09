"""A service's readiness, Keel included: ``keel_readiness``.

What a project template used to copy as ``check_external_service`` and the readiness
checks: one call a ``/health/ready`` endpoint answers with::

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from keel_client.readiness import keel_readiness

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        readiness = await keel_readiness(keel, audit=recorder, flags=flags)
        return JSONResponse(readiness.to_dict(), status_code=200 if readiness.is_ready else 503)
        # {"status": "ready", "checks": {"keel": "ok", "audit": "ok", "flags": "ok"}}

- ``keel``: Keel answers its own ``/health/ready`` within ``timeout`` (one request, no
  retry), and no circuit breaker of the client is open.
- ``audit``: the recorder's last send did not fail (events still go to the spool when it
  did, but a backlog that only grows is worth taking the replica out).
- ``flags`` / ``config``: the client holds a snapshot (from Keel or its local copy), so
  evaluations and reads answer with real values rather than defaults.

A check's answer is ``"ok"`` or why not, never a credential or a response body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from keel_client.http import CircuitState, KeelHTTPError

__all__ = ["Readiness", "keel_readiness"]

OK = "ok"


@dataclass(frozen=True, slots=True)
class Readiness:
    """The result of each check by name: ``"ok"`` or the reason it failed."""

    checks: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_ready(self) -> bool:
        return all(result == OK for result in self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        return {"status": "ready" if self.is_ready else "not ready", "checks": dict(self.checks)}


async def check_keel(keel: Any, *, timeout: float = 2.0) -> str:
    """``"ok"`` when Keel answers ``/health/ready`` with 2xx and no circuit is open."""
    open_hosts = [
        host
        for host, circuit in keel.health().circuits.items()
        if circuit.state is CircuitState.OPEN
    ]
    if open_hosts:
        return f"circuit open for {', '.join(sorted(open_hosts))}"
    try:
        await keel.api.get("/health/ready", timeout=timeout, max_retries=0)
    except KeelHTTPError as error:
        if error.status is not None:
            return f"Keel answered {error.status}"
        return f"Keel unreachable ({type(error).__name__})"
    except httpx.HTTPError as error:
        return f"Keel unreachable ({type(error).__name__})"
    return OK


async def keel_readiness(
    keel: Any,
    *,
    timeout: float = 2.0,
    audit: Any = None,
    flags: Any = None,
    config: Any = None,
) -> Readiness:
    """Check Keel and the long-lived clients given (see the module's docstring)."""
    checks = {"keel": await check_keel(keel, timeout=timeout)}
    if audit is not None:
        stats = audit.stats()
        checks["audit"] = (
            OK
            if stats.is_healthy
            else f"{stats.consecutive_failures} failed sends, {stats.pending} events pending"
        )
    for name, client in (("flags", flags), ("config", config)):
        if client is not None:
            checks[name] = OK if client.loaded_from is not None else "no snapshot yet"
    return Readiness(checks)
