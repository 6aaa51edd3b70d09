"""The links inside messages, which need no login: RFC 8058 one-click unsubscribe, the open
pixel and click redirects. Each carries its own proof — an opaque random token, or a keyed
signature over the message and the destination — so a guessed or edited link is a 404, and
the redirect goes only where Keel's own message pointed (no open redirect)."""

from __future__ import annotations

import base64
import html
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from keel.auth.dependencies import AnonymousActor
from keel.core.audit import record_event
from keel.core.deps import Context, DbSession
from keel.core.errors import NotFound
from keel.notify.service import experiments, tracking

router = APIRouter(tags=["notify"])

TokenPath = Annotated[str, Path(min_length=16, max_length=64)]
MessagePath = Annotated[str, Path(min_length=1, max_length=36)]
#: A transparent 1-by-1 GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def _page(title: str, body: str) -> HTMLResponse:
    document = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>{body}</body></html>"
    )
    return HTMLResponse(document, headers=_NO_STORE)


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
async def unsubscribe_page(token: TokenPath, context: Context, session: DbSession) -> HTMLResponse:
    """A page with the unsubscribe button. A GET never unsubscribes: mail scanners and link
    previews follow links; only the POST (the button, or the mail client's one-click) does."""
    message = await tracking.message_by_unsubscribe_token(session, context.keyring, token)
    what = f" from {html.escape(message.category)} messages" if message.category else ""
    return _page(
        "Unsubscribe",
        f"<p>Unsubscribe{what}?</p><form method='post'>"
        "<button type='submit' name='List-Unsubscribe' value='One-Click'>Unsubscribe</button>"
        "</form>",
    )


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
async def unsubscribe(
    token: TokenPath, actor: AnonymousActor, context: Context, session: DbSession
) -> HTMLResponse:
    """RFC 8058 one-click unsubscribe: the address leaves the message's category. No login,
    no redirect; the same answer however many times it is posted."""
    message = await tracking.message_by_unsubscribe_token(session, context.keyring, token)
    changed = await tracking.unsubscribe(session, message)
    record_event(
        session,
        tenant_id=message.tenant_id,
        action="notify.email.unsubscribe",
        actor=actor,
        target_type="notify_message",
        target_id=message.id,
        data={"category": message.category, "channel": message.channel, "changed": changed},
    )
    return _page("Unsubscribed", "<p>You are unsubscribed.</p>")


@router.get("/t/{message_id}/open.gif", include_in_schema=False)
async def opened(
    message_id: MessagePath,
    context: Context,
    session: DbSession,
    s: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """The open pixel: counts the message opened (once its status moves; every open is in
    its history) and answers a transparent GIF, whatever happens."""
    if tracking.is_signed(context.keyring, message_id, "open", s):
        message = await tracking.message_by_id(session, message_id)
        if message is not None:
            await experiments.record_conversion(
                session, message, "opened", hash_context_key=context.keyring.token_hash
            )
            tracking.record_status(session, message, "opened")
    return Response(PIXEL, media_type="image/gif", headers=_NO_STORE)


@router.get("/t/{message_id}/click", include_in_schema=False)
async def clicked(
    message_id: MessagePath,
    context: Context,
    session: DbSession,
    u: Annotated[str, Query(min_length=1, max_length=4096)],
    s: Annotated[str, Query(max_length=64)] = "",
) -> RedirectResponse:
    """A tracked link: counts the click, then redirects to the link the message carried. A
    link whose signature does not match is a 404, never a redirect."""
    if not tracking.is_signed(context.keyring, message_id, u, s):
        raise NotFound("This link is not known.")
    message = await tracking.message_by_id(session, message_id)
    if message is not None:
        await experiments.record_conversion(
            session, message, "clicked", hash_context_key=context.keyring.token_hash
        )
        tracking.record_status(session, message, "clicked", {"url": u[:500]})
    return RedirectResponse(u, status_code=302, headers=_NO_STORE)
