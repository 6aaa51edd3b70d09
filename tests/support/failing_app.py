"""The app ``keel serve`` runs, plus one route that fails: for error-reporting tests.

Served in a child process by :func:`support.keel_process.uvicorn_server`, so Sentry and
logging are set up exactly as in ``keel serve`` (:func:`keel.app.create_app_from_env`) and
nothing leaks into the test process.
"""

from __future__ import annotations

import sentry_sdk
from fastapi import APIRouter, FastAPI

from keel.app import create_app_from_env

#: What the failing route puts where Sentry looks: none of it may leave the process.
SECRETS = {
    "password": "hunter2",
    "bearer": "abc.def.ghi",
    "email": "alice@example.com",
    "ip_address": "203.0.113.9",
}


def create_app() -> FastAPI:
    app = create_app_from_env()
    router = APIRouter()

    @router.get("/boom")
    async def boom() -> None:
        sentry_sdk.set_user(
            {
                "id": "user-42",
                "email": SECRETS["email"],
                "username": "alice",
                "ip_address": SECRETS["ip_address"],
            }
        )
        password = SECRETS["password"]  # a local variable, as Sentry shows in stack frames
        raise RuntimeError(f"boom password={password} Bearer {SECRETS['bearer']}")

    app.include_router(router)
    return app
