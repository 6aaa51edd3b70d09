"""Providers' webhooks: delivery status reported by Twilio and Postmark, which call Keel with
no bearer token and prove themselves by a signature or the basic credentials configured on
the webhook (``keel.notify.service.webhooks`` says how each kind is checked)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel

from keel.auth.dependencies import AnonymousActor
from keel.core.audit import record_event
from keel.core.deps import Context, DbSession
from keel.notify.service import webhooks

router = APIRouter(tags=["notify"])

TenantPath = Annotated[str, Path(min_length=1, max_length=63)]
ProviderPath = Annotated[str, Path(min_length=1, max_length=64)]


class WebhookReceipt(BaseModel):
    """The answer to a verified webhook: whether it changed a message's history (an event
    Keel does not track, or about a message it does not know, is accepted and ignored)."""

    recorded: bool


def signed_url(request: Request, public_url: str | None) -> str:
    """The URL the provider called, as it signed it: Keel's public URL (``KEEL_PUBLIC_URL``,
    which a proxy in front of Keel does not change) and the request's path and query; the
    request's own URL when no public URL is set."""
    if not public_url:
        return str(request.url)
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{public_url.rstrip('/')}{request.url.path}{query}"


@router.post(
    "/webhooks/{tenant_slug}/{provider_name}",
    response_model=WebhookReceipt,
    responses={401: {"description": "Not signed by the provider; nothing changed"}},
)
async def provider_webhook(
    tenant_slug: TenantPath,
    provider_name: ProviderPath,
    request: Request,
    actor: AnonymousActor,
    context: Context,
    session: DbSession,
) -> WebhookReceipt:
    """A provider's delivery report about a message it sent: Twilio's status callback
    (``X-Twilio-Signature``) or a Postmark webhook (HTTP basic credentials). Point the
    provider at ``{KEEL_PUBLIC_URL}/notify/v1/webhooks/{tenant}/{provider}``.

    Anything not proven to come from that tenant's provider — an unknown tenant or provider
    included — is the same 401, and changes nothing. A report about an unknown message is
    a 200 (providers retry any other answer). A bounce or complaint suppresses the address.
    """
    received = webhooks.WebhookRequest(
        url=signed_url(request, context.settings.public_url),
        headers={name.lower(): value for name, value in request.headers.items()},
        body=await request.body(),
    )
    outcome = await webhooks.receive_webhook(session, context, tenant_slug, provider_name, received)
    if outcome.suppressed is not None and outcome.suppressed.is_new:
        record_event(
            session,
            tenant_id=outcome.tenant_id,
            action="notify.suppression.add",
            actor=actor,
            actor_type="provider",
            actor_id=outcome.provider,
            target_type="notify_suppression",
            target_id=outcome.suppressed.suppression_id,
            data={
                "channel": outcome.suppressed.channel,
                "reason": outcome.suppressed.reason,
                "category": None,
                "message_id": outcome.message_id,
            },
        )
    return WebhookReceipt(recorded=outcome.message_id is not None)
