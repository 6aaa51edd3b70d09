"""The service's own domain: orders with exact decimal amounts, and quotes."""

from __future__ import annotations

from decimal import Decimal

from fastapi.testclient import TestClient

from {{ cookiecutter.package_name }}.api.orders import quote_for


def test_an_order_keeps_its_amount_exactly(client: TestClient, caller: dict[str, str]) -> None:
    answer = client.post(
        "/orders", json={"customer": "c-1", "amount": "12.50", "currency": "EUR"}, headers=caller
    )
    assert answer.status_code == 201, answer.text
    order = answer.json()
    assert order["amount"] == "12.50"
    assert order["id"].startswith("ord_")


def test_a_float_amount_is_refused(client: TestClient, caller: dict[str, str]) -> None:
    answer = client.post("/orders", json={"customer": "c-1", "amount": 12.5}, headers=caller)
    assert answer.status_code == 422


def test_a_quote_rounds_the_fee_to_the_cent_half_even() -> None:
    quote = quote_for(Decimal("100.00"))
    assert (quote.fee, quote.total) == ("2.90", "102.90")
    assert quote_for(Decimal("5.00")).fee == "0.14"  # 0.145: the tie goes to the even cent
    assert quote_for(Decimal("15.00")).fee == "0.44"  # 0.435
