"""The service's own domain: orders{% if cookiecutter.use_audit %}, each one recorded in Keel's audit log
with its financial transaction{% endif %}; and price quotes.

Money is ``Decimal`` from the wire to the audit log: amounts travel as JSON strings
(``"12.50"``), never as floats.
"""

from __future__ import annotations

import uuid
from decimal import ROUND_HALF_EVEN, Decimal

from fastapi import APIRouter, Query
{%- if cookiecutter.use_audit %}
from keel_client.audit import EventActor, EventTarget
from keel_client.logs import current_request
{%- endif %}
from pydantic import BaseModel, Field
{%- set names = (["AppState", "KeelClient"] if cookiecutter.use_audit else []) + (["Caller", "OrderWriter"] if cookiecutter.use_auth else []) %}
{%- if names %}

from {{ cookiecutter.package_name }}.api.deps import {{ names|sort|join(", ") }}
{%- endif %}

router = APIRouter(tags=["orders"])

#: An amount as the API takes it: plain decimal text, at most two decimal places.
AMOUNT = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?$"
FEE_RATE = Decimal("0.029")
CENT = Decimal("0.01")
{%- if cookiecutter.use_audit %}
#: The service's audit action (in Keel's catalogue: keel.toml's [audit.actions], keel apply).
ORDER_CREATED = "{{ cookiecutter.package_name }}.order.create"
{%- endif %}


class OrderCreate(BaseModel):
    customer: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")
    amount: str = Field(pattern=AMOUNT, examples=["12.50"])
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")


class Order(BaseModel):
    id: str
    customer: str
    amount: str
    currency: str
{%- if cookiecutter.use_audit %}
    #: The audit event of the order's financial transaction (``txn:<order id>``).
    transaction_event: str
{%- endif %}


class Quote(BaseModel):
    amount: str
    fee: str
    total: str


@router.post("/orders", status_code=201, response_model=Order)
async def create_order(
    body: OrderCreate,
{%- if cookiecutter.use_auth %}
    caller: OrderWriter,
{%- endif %}
{%- if cookiecutter.use_audit %}
    keel: KeelClient,
    state: AppState,
{%- endif %}
) -> Order:
    """Place an order.
{%- if cookiecutter.use_auth %}

    Needs the permission ``{{ cookiecutter.project_slug }}:orders:write``.
{%- endif %}
{%- if cookiecutter.use_audit %}
    The order's event and its financial transaction go to Keel's audit log.
{%- endif %}
    """
    amount = Decimal(body.amount)
    order_id = f"ord_{uuid.uuid4().hex[:16]}"
{%- if cookiecutter.use_audit %}
    request = current_request()
{%- if cookiecutter.use_auth %}
    actor = EventActor(caller.principal_type, caller.subject)
{%- else %}
    actor = EventActor("anonymous", "anonymous")
{%- endif %}
    # The domain event: spooled locally and sent in the background, never lost.
    state.audit.record(
        ORDER_CREATED,
        actor=actor,
        target=EventTarget("order", order_id),
        request_id=request.request_id if request else None,
        data={"customer": body.customer, "amount": body.amount, "currency": body.currency},
    )
    # The money movement: one exact, idempotent record (keyed by the order id).
    receipt = await keel.audit.record_transaction(
        transaction_id=order_id,
        amount=amount,
        currency=body.currency,
        from_account=f"customer:{body.customer}",
        to_account="{{ cookiecutter.project_slug }}:revenue",
        reason=f"order {order_id}",
        user=actor,
        authorising_chain=[],
    )
    return Order(
        id=order_id,
        customer=body.customer,
        amount=format(amount, "f"),
        currency=body.currency,
        transaction_event=receipt.id,
    )
{%- else %}
    return Order(
        id=order_id, customer=body.customer, amount=format(amount, "f"), currency=body.currency
    )
{%- endif %}


@router.get("/quotes", response_model=Quote)
async def quote(
{%- if cookiecutter.use_auth %}
    caller: Caller,
{%- endif %}
    amount: str = Query(pattern=AMOUNT),
) -> Quote:
    """A price quote: the fee on ``amount``, rounded to the cent (banker's rounding).
{%- if cookiecutter.use_edge %}

    Rate-limited at the edge: keel.toml's route ``{{ cookiecutter.project_slug }}-quotes``.
{%- endif %}
    """
    return quote_for(Decimal(amount))


def quote_for(amount: Decimal) -> Quote:
    """The fee on ``amount`` and the total, to the cent (ties to the even cent)."""
    fee = (amount * FEE_RATE).quantize(CENT, rounding=ROUND_HALF_EVEN)
    return Quote(amount=format(amount, "f"), fee=format(fee, "f"), total=format(amount + fee, "f"))
