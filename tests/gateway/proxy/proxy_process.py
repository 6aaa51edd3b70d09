"""The test proxy as a process of its own (``uvicorn --factory``), for measuring its memory:
every request to the one upstream named by ``KEEL_TEST_PROXY_UPSTREAM``."""

from __future__ import annotations

import os

from starlette.types import ASGIApp

from keel.gateway.proxy.runtime import UpstreamRuntime

from .servers import pool_of, proxy_app


def app() -> ASGIApp:
    runtime = UpstreamRuntime(pool_of(os.environ["KEEL_TEST_PROXY_UPSTREAM"]))
    return proxy_app(runtime)
