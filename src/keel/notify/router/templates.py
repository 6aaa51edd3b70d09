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
from keel.notify.service import experiments, messages, templates

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


@router.put("/templates/{name}/experiment", response_model=schemas.Template)
async def set_template_experiment(
    name: TemplatePath,
    body: schemas.TemplateExperiment,
    principal: TemplateWriter,
    actor: CallerActor,
    session: DbSession,
    response: Response,
    if_match: Annotated[str | None, Header(alias="If-Match")] = None,
) -> schemas.Template:
    """Choose each send's version with a flags experiment (A/B): the flag's variations'
    values are version numbers of the template (422 otherwise). Each recipient is served
    one version, always the same; exposures, opens (``notify.open``) and clicks
    (``notify.click``) reach the flag's experiment results."""
    tenant_id = principal.tenant_id
    if if_match is not None:
        current = await templates.get_template(session, tenant_id, name)
        check_if_match(if_match, current.version, required=False)
    template = await experiments.set_experiment(
        session, tenant_id, name, flag=body.flag, environment=body.environment
    )
    record_event(
        session,
        tenant_id=tenant_id,
        action="notify.experiment.put",
        actor=actor,
        target_type="notify_template",
        target_id=name,
        data={"flag": body.flag, "environment": body.environment},
    )
    response.headers["ETag"] = etag_for(template.version)
    return schemas.Template.model_validate(template)


@router.delete("/templates/{name}/experiment", response_model=schemas.Template)
async def stop_template_experiment(
    name: TemplatePath,
    principal: TemplateWriter,
    actor: CallerActor,
    session: DbSession,
    response: Response,
) -> schemas.Template:
    """Stop the template's experiment: sends use the published version again, and opens and
    clicks of the messages it sent are no longer reported."""
    template = await experiments.stop_experiment(session, principal.tenant_id, name)
    record_event(
        session,
        tenant_id=principal.tenant_id,
        action="notify.experiment.delete",
        actor=actor,
        target_type="notify_template",
        target_id=name,
        data={},
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
