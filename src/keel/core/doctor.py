"""``keel doctor``: every check an operator needs before starting or when something is off."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from keel.core.crypto import (
    MasterKeyError,
    embedded_master_key_path,
    load_keyring,
    master_key_origin,
)
from keel.core.db import Database
from keel.core.health import run_check
from keel.core.schema import current_revision, head_revision
from keel.core.services import ServiceUnavailableInBuild
from keel.settings import Settings, mask_url


async def run_doctor(settings: Settings) -> dict[str, Any]:
    from keel.core.context import AppContext
    from keel.core.lifecycle import create_broadcast
    from keel.core.metrics import Metrics
    from keel.core.services import resolve_services

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
    add("master_key", *_check_master_key(settings))

    schema_current = False
    shown_services = settings.services
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
            enabled = [spec.name for spec in services]
            unbuilt = [name for name in settings.services if name not in enabled]
            not_built = f" (not built yet: {', '.join(unbuilt)})" if unbuilt else ""
            add("services", True, (", ".join(enabled) or "none built yet") + not_built)
            shown_services = enabled
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
    shown_settings = settings.masked()
    # The services that run, not every name the default lists (some are not built yet).
    shown_settings["services"] = shown_services
    origin = master_key_origin(settings)
    if origin is not None and origin.startswith("file "):
        shown_settings["master_key"] = f"from {origin}"
    return {
        "ok": all(check["ok"] for check in checks),
        "checks": checks,
        "settings": shown_settings,
    }


def _check_master_key(settings: Settings) -> tuple[bool, str]:
    """Whether the master key loads, and where it comes from (never the key)."""
    origin = master_key_origin(settings)
    if origin is None:
        if settings.is_embedded:
            return True, f"none yet: `keel serve` generates {embedded_master_key_path(settings)}"
        return False, "none: set KEEL_MASTER_KEY or KEEL_MASTER_KEY_FILE"
    try:
        load_keyring(settings)
    except MasterKeyError as exc:
        return False, str(exc)
    return True, f"from {origin}"
