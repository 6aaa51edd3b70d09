"""Templates: publish a version (refused when it does not render), roll back, read, preview."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Response

from keel.auth.dependencies import CallerActor
from keel.core.audit import record_event
from keel.core.deps import Context, DbSession
from keel.core.http import check_if_match, etag_for
from keel.notify import schemas
from keel.notify.auth import TemplateReader, TemplateWriter
from keel.notify.service import messages, templates

router = APIRouter(tags=["notify"])

TemplatePath = Annotated[str, Path(min_length=1, max_length=128)]


@router.post(
    "/templates/{name}/versions",
    status_code=201,
    response_model=schemas.TemplateVersion,
)
async def publish_template(
    name: TemplatePath,
    body: schemas.TemplatePublish,
    principal: TemplateWriter,
    actor: CallerActor,
    session: DbSession,
    response: Response,
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> schemas.TemplateVersion:
    """Publish a new version of template ``name`` (made on its first publish). The content
    must render — every locale, with its ``sample_data`` — or nothing is published (422)."""
    tenant_id = principal.tenant_id
    if if_match is not None:
        current = await templates.get_template(session, tenant_id, name)
        check_if_match(if_match, current.version, required=False)
    published = await templates.publish(
        session,
        tenant_id,
        name,
        body.content,
        kind=templates.TemplateKind(body.kind),
        category=body.category,
        description=body.description,
        note=body.note,
        created_by=actor.id,
    )
    record_event(
        session,
        tenant_id=tenant_id,
        action="notify.template.publish",
        actor=actor,
        target_type="notify_template",
        target_id=name,
        data={"version": published.version.number, "kind": body.kind},
    )
    response.headers["ETag"] = etag_for(published.template.version)
    return schemas.TemplateVersion.model_validate(published.version)


@router.post("/templates/{name}/rollback", response_model=schemas.Template)
async def rollback_template(
    name: TemplatePath,
    body: schemas.TemplateRollback,
    principal: TemplateWriter,
    actor: CallerActor,
    session: DbSession,
    response: Response,
) -> schemas.Template:
    """Sends use version ``version`` again (versions never change; this only chooses one)."""
    template = await templates.rollback(session, principal.tenant_id, name, body.version)
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.template.rollback",
        actor=actor,
        target_type="notify_template",
        target_id=name,
        data={"version": body.version},
    )
    response.headers["ETag"] = etag_for(template.version)
    return schemas.Template.model_validate(template)


@router.get("/templates", response_model=schemas.TemplateList)
async def list_templates(principal: TemplateReader, session: DbSession) -> schemas.TemplateList:
    found = await templates.list_templates(session, principal.tenant_id)
    return schemas.TemplateList(templates=[schemas.Template.model_validate(t) for t in found])


@router.get("/templates/{name}", response_model=schemas.Template)
async def get_template(
    name: TemplatePath, principal: TemplateReader, session: DbSession, response: Response
) -> schemas.Template:
    template = await templates.get_template(session, principal.tenant_id, name)
    response.headers["ETag"] = etag_for(template.version)
    return schemas.Template.model_validate(template)


@router.get("/templates/{name}/versions/{number}", response_model=schemas.TemplateVersion)
async def get_template_version(
    name: TemplatePath,
    number: Annotated[int, Path(ge=1, le=1_000_000)],
    principal: TemplateReader,
    session: DbSession,
) -> schemas.TemplateVersion:
    _, version = await templates.get_version(session, principal.tenant_id, name, number)
    return schemas.TemplateVersion.model_validate(version)


@router.post("/templates/{name}/test-send", status_code=202, response_model=schemas.Message)
async def test_send(
    name: TemplatePath,
    body: schemas.TestSend,
    principal: TemplateWriter,
    actor: CallerActor,
    context: Context,
    session: DbSession,
) -> schemas.Message:
    """Send one message of the template (or of ``version``) to ``to`` now, with ``data`` or
    the version's ``sample_data``: what its recipients would receive, tagged ``test-send``.
    The address's suppressions apply like any send's."""
    tenant_id = principal.tenant_id
    data = body.data
    if data is None:
        _, version = await templates.get_version(session, tenant_id, name, body.version)
        data = dict(version.content.get("sample_data", {}))
    accepted = await messages.accept(
        session,
        tenant_id,
        messages.SendRequest(
            channel=body.channel,
            template=name,
            to=body.to,
            data=data,
            tags=["test-send"],
            locale=body.locale,
            template_version=body.version,
        ),
        max_data_bytes=context.settings.notify.max_data_bytes,
    )
    record_event(
        session,
        tenant_id=tenant_id,
        action="notify.message.send",
        actor=actor,
        target_type="notify_message",
        target_id=accepted.message.id,
        data={"template": name, "channel": body.channel, "test_send": True},
    )
    return schemas.Message.model_validate(accepted.message)


@router.post("/templates/{name}/preview", response_model=schemas.Preview)
async def preview_template(
    name: TemplatePath,
    body: schemas.PreviewRequest,
    principal: TemplateReader,
    session: DbSession,
) -> schemas.Preview:
    """What a message would be, rendered with ``data`` (default: the ``sample_data``)."""
    rendered = await templates.preview(
        session,
        principal.tenant_id,
        name,
        channel=body.channel,
        data=body.data,
        locale=body.locale,
        number=body.version,
    )
    return schemas.Preview(**rendered.__dict__)
