"""HTTP routes of the notification service, one module per audience:

=============  ==========================================================================
``messages``   sending one message or a batch; a message's status and history
``templates``  publishing, rolling back, reading and previewing templates
``recipients`` profiles, preferences, topics, the in-app inbox, erasure
``settings``   categories, providers, email senders, the suppression list
``public``     the links in messages: one-click unsubscribe, open pixel, click redirects
``webhooks``   providers' delivery reports (Twilio, Postmark), signatures verified
=============  ==========================================================================
"""

from __future__ import annotations

from keel.core.http import ServiceRouter
from keel.notify.router import messages, public, recipients, settings, templates, webhooks

__all__ = ["build_router"]


def build_router() -> ServiceRouter:
    """``/v1/...``, as ``keel.notify.spec`` mounts it."""
    router = ServiceRouter(prefix="/v1")
    for part in (messages.router, templates.router, recipients.router, settings.router):
        router.include_router(part)
    router.include_router(public.router)
    router.include_router(webhooks.router)
    return router
