"""A flag flipped in Keel changes the route's answer while the service runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.api.checkout import NEW_CHECKOUT


def toggle(admin: httpx.Client, on: bool) -> None:
    answer = admin.post(
        f"/flags/v1/envs/development/flags/{NEW_CHECKOUT}/toggle",
        json={"on": on, "comment": "template test"},
    )
    assert answer.status_code == 200, answer.text


def test_flipping_the_flag_changes_the_checkout_flow(
    client: TestClient,
    caller: dict[str, str],
    admin: httpx.Client,
    eventually: Callable[..., Any],
) -> None:
    def flow() -> str:
        answer = client.get("/checkout", headers=caller)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["flow"])

    assert flow() == "classic"  # keel.toml's flag starts off
    toggle(admin, True)
    try:
        eventually(lambda: flow() == "new")
        answer = client.get("/checkout", headers=caller).json()
        assert answer["reason"] != "DISABLED"  # OpenFeature sees the same flag on
    finally:
        toggle(admin, False)
    eventually(lambda: flow() == "classic")
