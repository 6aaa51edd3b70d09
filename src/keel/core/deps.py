"""FastAPI dependencies every service's router shares."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from keel.core.context import AppContext


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.keel
    return context


async def context_dependency(request: Request) -> AppContext:
    """:func:`get_context` as a dependency: ``async`` so FastAPI calls it inline rather than
    in its thread pool, as every cheap dependency should be."""
    return get_context(request)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One unit of work per request; it commits before the response is sent."""
    async with get_context(request).database.session() as session:
        yield session


def client_ip(request: Request) -> str | None:
    """The client's IP address: the connection's peer, or what ``X-Forwarded-For`` says when
    the peer is a proxy named in ``KEEL_FORWARDED_ALLOW_IPS`` (uvicorn rewrites the ASGI
    ``client`` then). ``None`` when it is not an IP address: a forwarded header is text, and
    the address is a rate-limit key and an audit field (64 characters at most)."""
    if request.client is None:
        return None
    try:
        return str(ipaddress.ip_address(request.client.host))
    except ValueError:
        return None


Context = Annotated["AppContext", Depends(context_dependency)]
# scope="function": the session commits when the endpoint returns, before the response goes
# out, so a client never sees success for a write that then fails to commit.
DbSession = Annotated[AsyncSession, Depends(get_session, scope="function")]
