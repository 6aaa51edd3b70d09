"""The notification service as Keel mounts and runs it: its routes, and its delivery task on
the jobs engine (run wherever background work runs: ``keel worker``, and ``keel serve`` on the
embedded default)."""

from __future__ import annotations

from sqlalchemy import select

from keel.core.context import AppContext
from keel.core.services import ServiceSpec
from keel.notify import (
    audit_actions,  # noqa: F401  (registers the catalogue entries)
)
from keel.notify.metrics import NOTIFY_METRICS_RESOURCE, NotifyMetrics
from keel.notify.models import NotifyTemplate
from keel.notify.service.account_mail import use_notify_for_account_mail
from keel.notify.service.runtime import NOTIFY_RUNTIME, NotifyRuntime
from keel.notify.tasks import TASKS


async def start_notify(context: AppContext) -> None:
    """The delivery runtime: one HTTP client for every provider, and the providers' cache;
    and the auth service's account e-mails sent as messages (auth starts first and cannot
    import this service, so notify plugs itself into auth's delivery hook)."""
    if NOTIFY_RUNTIME not in context.resources:
        runtime = NotifyRuntime()
        redis_url = context.settings.redis_url
        runtime.use_limiter(redis_url.get_secret_value() if redis_url else None)
        context.resources[NOTIFY_RUNTIME] = runtime
    if NOTIFY_METRICS_RESOURCE not in context.resources:
        context.resources[NOTIFY_METRICS_RESOURCE] = NotifyMetrics(context.metrics.registry)
    use_notify_for_account_mail(context)


async def stop_notify(context: AppContext) -> None:
    runtime = context.resources.get(NOTIFY_RUNTIME)
    if runtime is not None:
        await runtime.aclose()


async def notify_ready(context: AppContext) -> None:
    async with context.database.session() as session:
        await session.execute(
            select(NotifyTemplate.id).limit(1).execution_options(all_tenants=True)
        )


service = ServiceSpec(
    name="notify",
    router="keel.notify.router:build_router",
    startup=start_notify,
    shutdown=stop_notify,
    ready_check=notify_ready,
    model_modules=("keel.notify.models",),
    tasks=TASKS,
    body_limits=lambda settings: {"/v1/messages/batch": settings.notify.max_batch_body_bytes},
)
