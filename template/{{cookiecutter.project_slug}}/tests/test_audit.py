"""The service's own actions in Keel's audit log: the order's event and its transaction; the
action is in Keel's catalogue from keel.toml, and the service's own key cannot register one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.api.orders import ORDER_CREATED


def test_an_order_is_in_keels_audit_log_with_its_transaction(
    client: TestClient,
    caller: dict[str, str],
    admin: httpx.Client,
    eventually: Callable[..., Any],
) -> None:
    answer = client.post(
        "/orders",
        json={"customer": "c-3", "amount": "1234.50", "currency": "EUR"},
        headers={**caller, "X-Request-ID": "req-audit-1"},
    )
    assert answer.status_code == 201, answer.text
    order = answer.json()

    def event() -> dict[str, Any] | None:
        """the order's event in Keel's audit log"""
        page = admin.get(
            "/audit/v1/events", params={"action": ORDER_CREATED}
        )
        page.raise_for_status()
        found = [e for e in page.json()["items"] if e.get("target", {}).get("id") == order["id"]]
        return found[0] if found else None

    recorded = eventually(event)
    assert recorded["request_id"] == "req-audit-1"
    assert recorded["data"]["amount"] == "1234.50"

    transaction = admin.get(f"/audit/v1/events/{order['transaction_event']}")
    assert transaction.status_code == 200, transaction.text
    stored = transaction.json()
    assert stored["action"] == "finance.transaction.record"
    assert stored["data"]["amount"] == "1234.50"  # the exact text: never a float
    assert stored["data"]["currency"] == "EUR"


def test_the_action_is_in_keels_catalogue_and_the_service_cannot_register_one(
    admin: httpx.Client, keel_server: Any
) -> None:
    catalogue = admin.get("/audit/v1/actions")
    assert catalogue.status_code == 200, catalogue.text
    entry = next(a for a in catalogue.json() if a["name"] == ORDER_CREATED)
    assert (entry["description"], entry["builtin"]) == ("An order was placed", False)

    # keel apply registered it: the service's role holds audit:event:write only.
    with httpx.Client(
        base_url=keel_server.url,
        headers={"Authorization": f"Bearer {keel_server.service_token}"},
        timeout=30.0,
    ) as service:
        registered = service.put(
            "/audit/v1/actions/{{ cookiecutter.package_name }}.order.refund",
            json={"description": "A refund"},
        )
    assert registered.status_code == 403, registered.text
