"""A tenant's notification settings: categories, providers, email senders, suppressions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from keel.auth.dependencies import CallerActor
from keel.core.audit import record_event
from keel.core.deps import DbSession
from keel.notify import schemas
from keel.notify.auth import SettingsReader, SettingsWriter
from keel.notify.service import providers, recipients

router = APIRouter(tags=["notify"])

NamePath = Annotated[str, Path(min_length=1, max_length=64)]


@router.put("/categories/{name}", response_model=schemas.Category)
async def put_category(
    name: NamePath,
    body: schemas.CategoryPut,
    principal: SettingsWriter,
    actor: CallerActor,
    session: DbSession,
    response: Response,
) -> schemas.Category:
    """Create or change a category. A ``critical`` one (password reset) ignores preferences,
    quiet hours and unsubscribes, and its email carries no unsubscribe link."""
    category, created = await recipients.put_category(
        session,
        principal.tenant_id,
        name,
        critical=body.critical,
        description=body.description,
        default_channels=body.default_channels,
        hourly_limit=body.hourly_limit,
    )
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.category.put",
        actor=actor,
        target_type="notify_category",
        target_id=name,
        data=body.model_dump(),
    )
    response.status_code = 201 if created else 200
    return schemas.Category.model_validate(category)


@router.get("/categories", response_model=schemas.CategoryList)
async def list_categories(principal: SettingsReader, session: DbSession) -> schemas.CategoryList:
    found = await recipients.list_categories(session, principal.tenant_id)
    return schemas.CategoryList(categories=[schemas.Category.model_validate(c) for c in found])


@router.put("/providers/{name}", response_model=schemas.Provider)
async def put_provider(
    name: NamePath,
    body: schemas.ProviderPut,
    principal: SettingsWriter,
    actor: CallerActor,
    session: DbSession,
    response: Response,
) -> schemas.Provider:
    """Create or replace a provider. Its channel's providers are tried in ``position`` order
    when one fails or throttles. Credentials are a KV secret it names, never the body."""
    row, created = await providers.put_provider(
        session,
        principal.tenant_id,
        name,
        kind=body.kind,
        settings=body.settings,
        credentials_secret=body.credentials_secret,
        position=body.position,
        enabled=body.enabled,
    )
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.provider.put",
        actor=actor,
        target_type="notify_provider",
        target_id=name,
        data={"kind": body.kind, "position": body.position, "enabled": body.enabled},
    )
    response.status_code = 201 if created else 200
    return schemas.Provider.model_validate(row)


@router.get("/providers", response_model=schemas.ProviderList)
async def list_providers(
    principal: SettingsReader,
    session: DbSession,
    channel: Annotated[str | None, Query(max_length=16)] = None,
) -> schemas.ProviderList:
    found = await providers.list_providers(session, principal.tenant_id, channel)
    return schemas.ProviderList(providers=[schemas.Provider.model_validate(p) for p in found])


@router.delete("/providers/{name}", status_code=204)
async def delete_provider(
    name: NamePath, principal: SettingsWriter, actor: CallerActor, session: DbSession
) -> Response:
    await providers.delete_provider(session, principal.tenant_id, name)
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.provider.delete",
        actor=actor,
        target_type="notify_provider",
        target_id=name,
    )
    return Response(status_code=204)


@router.put("/senders/{name}", response_model=schemas.Sender)
async def put_sender(
    name: NamePath,
    body: schemas.SenderPut,
    principal: SettingsWriter,
    actor: CallerActor,
    session: DbSession,
    response: Response,
) -> schemas.Sender:
    """Create or change an email sender (``default`` is the one messages use): its ``From``,
    and the DKIM domain, selector and the KV secret of its key."""
    row, created = await providers.put_sender(
        session,
        principal.tenant_id,
        name,
        address=body.address,
        reply_to=body.reply_to,
        dkim_domain=body.dkim_domain,
        dkim_selector=body.dkim_selector,
        dkim_secret=body.dkim_secret,
    )
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.sender.put",
        actor=actor,
        target_type="notify_sender",
        target_id=name,
        data={"dkim": bool(body.dkim_secret)},
    )
    response.status_code = 201 if created else 200
    return schemas.Sender.model_validate(row)


@router.post("/suppressions", status_code=201, response_model=schemas.Suppression)
async def add_suppression(
    body: schemas.SuppressionCreate,
    principal: SettingsWriter,
    actor: CallerActor,
    session: DbSession,
    response: Response,
) -> schemas.Suppression:
    row, created = await recipients.suppress(
        session, principal.tenant_id, body.channel, body.address, body.reason, body.category
    )
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.suppression.add",
        actor=actor,
        target_type="notify_suppression",
        target_id=row.id,
        data={"channel": body.channel, "reason": body.reason, "category": body.category},
    )
    response.status_code = 201 if created else 200
    return schemas.Suppression.model_validate(row)


@router.get("/suppressions", response_model=schemas.SuppressionList)
async def list_suppressions(
    principal: SettingsReader,
    session: DbSession,
    channel: Annotated[str | None, Query(max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> schemas.SuppressionList:
    found = await recipients.list_suppressions(session, principal.tenant_id, channel, limit)
    return schemas.SuppressionList(
        suppressions=[schemas.Suppression.model_validate(s) for s in found]
    )


@router.delete("/suppressions/{channel}/{address}", status_code=204)
async def remove_suppression(
    channel: Annotated[str, Path(max_length=16)],
    address: Annotated[str, Path(max_length=320)],
    principal: SettingsWriter,
    actor: CallerActor,
    session: DbSession,
) -> Response:
    await recipients.unsuppress(session, principal.tenant_id, channel, address)
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.suppression.remove",
        actor=actor,
        target_type="notify_suppression",
        target_id=f"{channel}",
        data={"channel": channel},
    )
    return Response(status_code=204)
