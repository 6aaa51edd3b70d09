"""The service's own actions in Keel's audit log: the order's event and its transaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from fastapi.testclient import TestClient


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
            "/audit/v1/events", params={"action": "{{ cookiecutter.package_name }}.order.create"}
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
