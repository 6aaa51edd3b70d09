"""Liveness, readiness and start-up probes.

``/health/live`` says the process answers; ``/health/startup`` says start-up finished;
``/health/ready`` runs every check (database, Redis when configured, each enabled service)
concurrently, each bounded by a timeout, and answers 503 problem+json naming the failures.
Checks run on every call, so readiness recovers by itself once a dependency returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from keel.core.errors import problem_response
from keel.core.logging import redact

if TYPE_CHECKING:
    from keel.core.context import AppContext

Check = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    duration_ms: float
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "status": "pass" if self.ok else "fail",
            "duration_ms": self.duration_ms,
        }
        if self.error:
            result["error"] = self.error
        return result


def describe_failure(exc: BaseException) -> str:
    """A short, redacted description of why a check failed (never a traceback)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    message = str(exc).splitlines()[0][:200] if str(exc) else ""
    described: str = redact(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
    return described


#: Checks abandoned at their timeout, kept referenced until their cancellation completes.
_abandoned_checks: set[asyncio.Future[Any]] = set()


async def run_check(name: str, check: Check, timeout: float) -> CheckResult:
    """Run ``check``; a failure or exceeding ``timeout`` seconds counts as failed."""
    started = time.perf_counter()
    task = asyncio.ensure_future(check())
    try:
        await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not task.done():
        # Answer at the timeout and let the cancellation finish in the background:
        # ``wait_for`` would wait for it, and a driver's clean-up can hang as long as the
        # outage (asyncpg sends a cancel request over a new connection to the same server).
        task.cancel()
        _abandoned_checks.add(task)
        task.add_done_callback(_forget_abandoned_check)
        return CheckResult(name, False, _ms_since(started), "timed out")
    if task.cancelled():
        return CheckResult(name, False, _ms_since(started), "cancelled")
    exc = task.exception()
    if exc is not None:
        return CheckResult(name, False, _ms_since(started), describe_failure(exc))
    return CheckResult(name, True, _ms_since(started))


def _forget_abandoned_check(task: asyncio.Future[Any]) -> None:
    _abandoned_checks.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def readiness_checks(context: AppContext) -> dict[str, Check]:
    checks: dict[str, Check] = {"database": context.database.ping}
    if context.settings.redis_url is not None:
        checks["redis"] = context.broadcast.ping
    for spec in context.services:
        if spec.ready_check is not None:
            ready_check = spec.ready_check
            checks[spec.name] = lambda check=ready_check: check(context)  # type: ignore[misc]
    return checks


async def run_readiness_checks(context: AppContext) -> list[CheckResult]:
    timeout = context.settings.health_check_timeout_seconds
    results = await asyncio.gather(
        *(run_check(name, check, timeout) for name, check in readiness_checks(context).items())
    )
    for result in results:
        context.metrics.ready.labels(result.name).set(1 if result.ok else 0)
    return list(results)


_LIVE_SCHEMA = {
    "additionalProperties": {"type": "string"},
    "type": "object",
    "title": "Response Live Health Live Get",
}


def build_health_router() -> APIRouter:
    router = APIRouter(prefix="/health", tags=["health"])

    # Answered by the request middleware (keel.core.http.LIVENESS_PATH); the route documents
    # it. Its schema is written out: a response model would have FastAPI import pydantic.v1
    # (to refuse v1 models) at start, 15 ms and 1.7 MB that no probe needs (issue 15).
    @router.get(
        "/live",
        summary="Liveness: the process answers",
        response_model=None,
        responses={200: {"content": {"application/json": {"schema": _LIVE_SCHEMA}}}},
    )
    async def live() -> Response:
        return JSONResponse({"status": "pass"})

    @router.get("/startup", summary="Start-up finished: migrations checked, services started")
    async def startup(request: Request) -> Response:
        context: AppContext = request.app.state.keel
        if not context.started:
            return problem_response(
                status=503, slug="unavailable", title="Starting", detail="Keel is still starting."
            )
        return JSONResponse({"status": "pass"})

    @router.get("/ready", summary="Readiness: every dependency and enabled service answers")
    async def ready(request: Request) -> Response:
        context: AppContext = request.app.state.keel
        results = await run_readiness_checks(context)
        checks = {result.name: result.as_dict() for result in results}
        failing = [result.name for result in results if not result.ok]
        if failing or not context.started:
            detail = ("not ready: " + ", ".join(failing)) if failing else "Keel is still starting."
            return problem_response(
                status=503,
                slug="unavailable",
                title="Not ready",
                detail=detail,
                extensions={"checks": checks},
                request_id=request.scope["state"].get("request_id"),
            )
        return JSONResponse({"status": "pass", "checks": checks})

    return router
