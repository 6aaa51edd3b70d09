"""``keel doctor``: every check an operator needs before starting or when something is off."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from keel.core.broadcast import create_broadcast
from keel.core.db import Database
from keel.core.health import run_check
from keel.core.services import ServiceUnavailableInBuild
from keel.migrations import current_revision, head_revision
from keel.settings import Settings, mask_url


async def run_doctor(settings: Settings) -> dict[str, Any]:
    from keel.app import AppContext, resolve_services
    from keel.core.metrics import Metrics

    checks: list[dict[str, Any]] = [{"name": "settings", "ok": True, "detail": "valid"}]
    timeout = settings.health_check_timeout_seconds

    def add(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail})

    if settings.is_embedded:
        data_dir = settings.data_dir
        writable = (data_dir.exists() and os.access(data_dir, os.W_OK)) or (
            not data_dir.exists() and os.access(data_dir.parent.resolve(), os.W_OK)
        )
        add("data_dir", writable, f"{data_dir} {'writable' if writable else 'not writable'}")

    schema_current = False
    database = Database.from_settings(settings)
    broadcast = create_broadcast(
        settings.redis_url.get_secret_value() if settings.redis_url else None
    )
    try:
        url = mask_url(settings.effective_database_url)
        result = await run_check("database", database.ping, timeout)
        add("database", result.ok, url if result.ok else f"{url}: {result.error}")
        if result.ok:
            current, head = await current_revision(database), head_revision()
            schema_current = current == head
            if schema_current:
                add("schema", True, f"at {head}")
            elif settings.is_embedded:
                add("schema", True, f"at {current or 'nothing'}; `keel serve` migrates to {head}")
            else:
                add("schema", False, f"at {current or 'nothing'}, needs {head}: run `keel migrate`")
        if settings.redis_url is not None:
            redis_url = mask_url(settings.redis_url.get_secret_value())
            result = await run_check("redis", broadcast.ping, timeout)
            add("redis", result.ok, redis_url if result.ok else f"{redis_url}: {result.error}")
        try:
            services = resolve_services(settings)
        except ServiceUnavailableInBuild as exc:
            add("services", False, str(exc))
            services = []
        else:
            add("services", True, ", ".join(spec.name for spec in services) or "none built yet")
        context = AppContext(settings, database, broadcast, Metrics(), services)
        if not schema_current:
            services = []  # their checks read tables a migration has still to create
        for spec in services:
            if spec.ready_check is not None:
                result = await run_check(spec.name, partial(spec.ready_check, context), timeout)
                add(spec.name, result.ok, "ready" if result.ok else str(result.error))
    finally:
        await broadcast.disconnect()
        await database.dispose()
    return {
        "ok": all(check["ok"] for check in checks),
        "checks": checks,
        "settings": settings.masked(),
    }
