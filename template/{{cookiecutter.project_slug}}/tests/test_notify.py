"""Notifications go through Keel from its template, once per order."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.api.notifications import ORDER_CONFIRMATION


def test_the_confirmation_is_sent_once_from_keels_template(
    client: TestClient, caller: dict[str, str], admin: httpx.Client
) -> None:
    body = {"email": "buyer@example.com", "order_id": "ord_notify_1"}
    first = client.post("/notifications/order-confirmation", json=body, headers=caller)
    assert first.status_code == 202, first.text
    again = client.post("/notifications/order-confirmation", json=body, headers=caller)
    assert again.json()["message_id"] == first.json()["message_id"]

    message = admin.get(f"/notify/v1/messages/{first.json()['message_id']}")
    assert message.status_code == 200, message.text
    assert message.json()["template"] == ORDER_CONFIRMATION


def test_a_bad_address_is_refused_before_keel(
    client: TestClient, caller: dict[str, str]
) -> None:
    answer = client.post(
        "/notifications/order-confirmation",
        json={"email": "not an address", "order_id": "ord_2"},
        headers=caller,
    )
    assert answer.status_code == 422
