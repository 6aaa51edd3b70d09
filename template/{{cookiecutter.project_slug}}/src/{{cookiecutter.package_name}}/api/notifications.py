"""Notifications through Keel: a template Keel keeps (keel.toml's [templates]), rendered and
delivered by Keel with retries; the send is idempotent."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from {{ cookiecutter.package_name }}.api.deps import {% if cookiecutter.use_auth %}Caller, {% endif %}KeelClient

router = APIRouter(tags=["notifications"])

#: The notification template (keel.toml's [templates.{{ cookiecutter.project_slug }}-order-confirmation]).
ORDER_CONFIRMATION = "{{ cookiecutter.project_slug }}-order-confirmation"


class ConfirmationRequest(BaseModel):
    email: str = Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    order_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")


class Sent(BaseModel):
    message_id: str
    status: str


@router.post("/notifications/order-confirmation", status_code=202, response_model=Sent)
async def send_order_confirmation(
    body: ConfirmationRequest, keel: KeelClient{% if cookiecutter.use_auth %}, caller: Caller{% endif %}
) -> Sent:
    """Email the order's confirmation; sending it twice for one order sends one message."""
    ref = await keel.notify.send_email(
        to=body.email,
        template=ORDER_CONFIRMATION,
        context={"order_id": body.order_id},
        idempotency_key=f"order-confirmation-{body.order_id}",
    )
    return Sent(message_id=ref.id, status=str(ref.status))
