"""HTTP routes of the config service: ``/config/v1/...``.

Reads answer with the environment's revision as ``ETag`` and ``304 Not Modified`` for a
current ``If-None-Match``; writes take an optional ``If-Match`` (412 when the environment
moved on). Errors are problem+json; schema refusals list each failing path and rule.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from keel.auth.dependencies import (
    Access,
    CallerActor,
    CurrentPrincipal,
    bearer_credential,
    get_auth_service,
)
from keel.config import schemas, service
from keel.config.auth import (
    ApplicationCreator,
    ConfigAdmin,
    ConfigReader,
    ConfigWriter,
    may,
)
from keel.config.models import ConfigRevision
from keel.config.service.validation import Diff, check_key
from keel.core.audit import Actor
from keel.core.changes import SubjectChanges, audited_change_stream, resume_point
from keel.core.deps import DbSession, get_context
from keel.core.errors import NotFound
from keel.core.http import Page, PageRequest, ServiceRouter, etag_for, is_not_modified
from keel.core.input_rules import MAX_STORED_INT
from keel.core.versioned import with_etag
from keel.secrets.service import SecretReader, kv_engine_of
from keel_client.auth import Principal

IfMatch = Annotated[
    str | None,
    Header(description="The ETag of the environment (its revision) this write is based on."),
]
IfNoneMatch = Annotated[str | None, Header()]
ResolveSecrets = Annotated[
    bool,
    Query(description="Replace each secret reference the caller may read by its value."),
]


def _summary(row: ConfigRevision) -> schemas.RevisionSummary:
    return schemas.RevisionSummary(
        number=row.number,
        operation=row.operation,
        source=row.source,
        message=row.message,
        changes=row.changes,
        author=schemas.Author(type=row.author_type, id=row.author_id),
        created_at=row.created_at,
    )


def _diff(diff: Diff) -> schemas.DiffOut:
    return schemas.DiffOut(
        added=diff.added,
        removed=diff.removed,
        changed={key: schemas.ChangedValue(**change) for key, change in diff.changed.items()},
    )


def _written(outcome: service.WriteOutcome, response: Response) -> schemas.WriteResult:
    response.headers["ETag"] = etag_for(outcome.revision.number)
    return schemas.WriteResult(revision=_summary(outcome.revision), created=outcome.created)


def _not_modified(revision: int) -> Response:
    return Response(status_code=304, headers={"ETag": etag_for(revision)})


def _no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"


async def _resolve(
    request: Request,
    session: DbSession,
    principal: Principal,
    actor: Actor,
    values: dict[str, Any],
    subject: str,
) -> tuple[dict[str, Any], list[schemas.SecretReferenceState]]:
    engine = kv_engine_of(get_context(request))
    reader = SecretReader(
        session, engine, principal, actor, via={"via": "config", "config": subject}
    )
    resolved, report = await service.resolve_secret_references(reader, values)
    return resolved, [schemas.SecretReferenceState(**entry.as_dict()) for entry in report]


router = APIRouter(prefix="/v1", tags=["config"])

# -- applications ---------------------------------------------------------------------


@router.post("/apps", status_code=201, response_model=schemas.Application)
async def create_application(
    body: schemas.ApplicationCreate,
    response: Response,
    principal: ApplicationCreator,
    session: DbSession,
    actor: CallerActor,
) -> Any:
    """Create an application (needs ``config:<name>:admin``)."""
    application = await service.create_application(
        session,
        principal.tenant_id,
        body.name,
        description=body.description,
        json_schema=body.json_schema,
        actor=actor,
    )
    return with_etag(application, response)


@router.get("/apps", response_model=list[schemas.Application])
async def list_applications(principal: CurrentPrincipal, session: DbSession) -> Any:
    """The applications the caller may read."""
    applications = await service.list_applications(session, principal.tenant_id)
    return [app for app in applications if may(principal, app.name, Access.read)]


@router.get("/apps/{app}", response_model=schemas.Application)
async def get_application(
    app: str, response: Response, principal: ConfigReader, session: DbSession
) -> Any:
    """The application and its JSON Schema; ``ETag`` is its version."""
    application = await service.get_application(session, principal.tenant_id, app)
    return with_etag(application, response)


@router.put("/apps/{app}", response_model=schemas.Application)
async def update_application(
    app: str,
    body: schemas.ApplicationUpdate,
    response: Response,
    principal: ConfigAdmin,
    session: DbSession,
    actor: CallerActor,
    if_match: IfMatch = None,
) -> Any:
    """Replace the JSON Schema (``null`` removes it). Refused (422) when a current
    environment's values would fail it."""
    application = await service.update_application(
        session,
        principal.tenant_id,
        app,
        json_schema=body.json_schema,
        description=body.description,
        if_match=if_match,
        actor=actor,
    )
    return with_etag(application, response)


# -- environments ---------------------------------------------------------------------


@router.post("/apps/{app}/envs", status_code=201, response_model=schemas.Environment)
async def create_environment(
    app: str,
    body: schemas.EnvironmentCreate,
    response: Response,
    principal: ConfigAdmin,
    session: DbSession,
    actor: CallerActor,
) -> Any:
    """Create an environment: revision 1, no values."""
    environment = await service.create_environment(
        session,
        principal.tenant_id,
        app,
        body.name,
        actor=actor,
    )
    response.headers["ETag"] = etag_for(environment.revision)
    return environment


@router.get("/apps/{app}/envs", response_model=list[schemas.Environment])
async def list_environments(app: str, principal: ConfigReader, session: DbSession) -> Any:
    return await service.list_environments(session, principal.tenant_id, app)


@router.get("/apps/{app}/envs/{env}", response_model=schemas.SnapshotOut)
async def read_snapshot(
    app: str,
    env: str,
    request: Request,
    response: Response,
    principal: ConfigReader,
    session: DbSession,
    actor: CallerActor,
    if_none_match: IfNoneMatch = None,
    resolve_secrets: ResolveSecrets = False,
) -> Any:
    """The environment's values at its current revision. ``ETag`` is the revision;
    ``If-None-Match`` with it answers 304. With ``resolve_secrets=true`` the references
    the caller may read are replaced by their values (``Cache-Control: no-store``, no
    ETag: a secret changes without a new revision)."""
    environment_id, revision = await service.environment_revision(
        session, principal.tenant_id, app, env
    )
    if not resolve_secrets and is_not_modified(if_none_match, revision):
        return _not_modified(revision)
    values = await service.values_of_revision(session, environment_id, revision)
    if resolve_secrets:
        resolved, report = await _resolve(
            request, session, principal, actor, values, service.change_subject(app, env)
        )
        _no_store(response)
        return schemas.SnapshotOut(
            application=app, environment=env, revision=revision, values=resolved, secrets=report
        )
    response.headers["ETag"] = etag_for(revision)
    return schemas.SnapshotOut(application=app, environment=env, revision=revision, values=values)


@router.patch("/apps/{app}/envs/{env}", response_model=schemas.WriteResult)
async def write_values(
    app: str,
    env: str,
    body: schemas.ChangeSet,
    response: Response,
    principal: ConfigWriter,
    session: DbSession,
    actor: CallerActor,
    if_match: IfMatch = None,
) -> Any:
    """One atomic change set: ``set`` and ``unset`` keys in one new revision. Validated
    against the application's JSON Schema as a whole; a change set that changes nothing
    makes no revision (``created: false``)."""
    outcome = await service.write_values(
        session,
        principal.tenant_id,
        app,
        env,
        set_values=body.set,
        unset=body.unset,
        message=body.message,
        if_match=if_match,
        actor=actor,
    )
    return _written(outcome, response)


# -- keys -----------------------------------------------------------------------------


@router.get("/apps/{app}/envs/{env}/keys/{key}", response_model=schemas.KeyOut)
async def read_key(
    app: str,
    env: str,
    key: str,
    request: Request,
    response: Response,
    principal: ConfigReader,
    session: DbSession,
    actor: CallerActor,
    if_none_match: IfNoneMatch = None,
    resolve_secrets: ResolveSecrets = False,
) -> Any:
    """One key's value; ``ETag`` is the environment's revision."""
    check_key(key)
    environment_id, revision = await service.environment_revision(
        session, principal.tenant_id, app, env
    )
    if not resolve_secrets and is_not_modified(if_none_match, revision):
        return _not_modified(revision)
    values = await service.values_of_revision(session, environment_id, revision)
    if key not in values:
        raise NotFound(f"No key {key!r} in {service.change_subject(app, env)}.")
    if resolve_secrets:
        resolved, report = await _resolve(
            request,
            session,
            principal,
            actor,
            {key: values[key]},
            service.change_subject(app, env),
        )
        _no_store(response)
        return schemas.KeyOut(key=key, revision=revision, value=resolved[key], secrets=report)
    response.headers["ETag"] = etag_for(revision)
    return schemas.KeyOut(key=key, revision=revision, value=values[key])


@router.put("/apps/{app}/envs/{env}/keys/{key}", response_model=schemas.WriteResult)
async def write_key(
    app: str,
    env: str,
    key: str,
    body: schemas.KeyWrite,
    response: Response,
    principal: ConfigWriter,
    session: DbSession,
    actor: CallerActor,
    if_match: IfMatch = None,
) -> Any:
    """Set one key: a change set of one."""
    outcome = await service.write_values(
        session,
        principal.tenant_id,
        app,
        env,
        set_values={key: body.value},
        message=body.message,
        if_match=if_match,
        actor=actor,
    )
    return _written(outcome, response)


@router.delete("/apps/{app}/envs/{env}/keys/{key}", response_model=schemas.WriteResult)
async def delete_key(
    app: str,
    env: str,
    key: str,
    response: Response,
    principal: ConfigWriter,
    session: DbSession,
    actor: CallerActor,
    if_match: IfMatch = None,
    message: Annotated[str, Query(max_length=2000)] = "",
) -> Any:
    """Remove one key (404 when absent)."""
    outcome = await service.delete_key(
        session,
        principal.tenant_id,
        app,
        env,
        key,
        message=message,
        if_match=if_match,
        actor=actor,
    )
    return _written(outcome, response)


# -- history --------------------------------------------------------------------------


@router.get("/apps/{app}/envs/{env}/revisions", response_model=Page[schemas.RevisionSummary])
async def list_revisions(
    app: str,
    env: str,
    principal: ConfigReader,
    session: DbSession,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[schemas.RevisionSummary]:
    """The revisions, oldest first (author, time, message, keys changed; no values);
    pass ``next_cursor`` back as ``cursor``."""
    rows, next_cursor = await service.history(
        session, principal.tenant_id, app, env, PageRequest(cursor, limit)
    )
    return Page(items=[_summary(row) for row in rows], next_cursor=next_cursor)


@router.get("/apps/{app}/envs/{env}/revisions/{number}", response_model=schemas.Revision)
async def get_revision(
    app: str,
    env: str,
    number: Annotated[int, Path(ge=1, le=MAX_STORED_INT)],
    principal: ConfigReader,
    session: DbSession,
) -> Any:
    """One revision with its whole snapshot of values."""
    row = await service.get_revision(session, principal.tenant_id, app, env, number)
    return schemas.Revision(**_summary(row).model_dump(), values=row.values)


@router.get("/apps/{app}/envs/{env}/diff", response_model=schemas.RevisionDiff)
async def diff_revisions(
    app: str,
    env: str,
    principal: ConfigReader,
    session: DbSession,
    from_revision: Annotated[int, Query(alias="from", ge=1, le=MAX_STORED_INT)],
    to_revision: Annotated[int | None, Query(alias="to", ge=1, le=MAX_STORED_INT)] = None,
) -> Any:
    """Key-level differences between two revisions (``to`` defaults to the current)."""
    if to_revision is None:
        _, to_revision = await service.environment_revision(session, principal.tenant_id, app, env)
    diff = await service.diff_revisions(
        session, principal.tenant_id, app, env, from_revision, to_revision
    )
    return schemas.RevisionDiff(
        **_diff(diff).model_dump(), from_revision=from_revision, to_revision=to_revision
    )


@router.post("/apps/{app}/envs/{env}/rollback", response_model=schemas.WriteResult)
async def rollback(
    app: str,
    env: str,
    body: schemas.Rollback,
    response: Response,
    principal: ConfigWriter,
    session: DbSession,
    actor: CallerActor,
    if_match: IfMatch = None,
) -> Any:
    """A new revision holding the values of an earlier one."""
    outcome = await service.rollback(
        session,
        principal.tenant_id,
        app,
        env,
        body.revision,
        message=body.message,
        if_match=if_match,
        actor=actor,
    )
    return _written(outcome, response)


# -- promotion ------------------------------------------------------------------------


@router.post("/apps/{app}/promote", response_model=schemas.PromotionOut)
async def promote(
    app: str,
    body: schemas.PromotionRequest,
    response: Response,
    principal: ConfigWriter,
    session: DbSession,
    actor: CallerActor,
    if_match: IfMatch = None,
) -> Any:
    """Copy one environment's values to another. ``confirm: false`` answers the diff the
    target would see (its ``ETag`` is the target's revision); ``confirm: true`` with
    that ``If-Match`` applies it as a new revision of the target."""
    promotion = await service.promote(
        session,
        principal.tenant_id,
        app,
        body.source,
        body.target,
        keys=body.keys,
        confirm=body.confirm,
        if_match=if_match,
        source_revision=body.source_revision,
        message=body.message,
        actor=actor,
    )
    response.headers["ETag"] = etag_for(promotion.target_revision)
    return schemas.PromotionOut(
        source=promotion.source,
        source_revision=promotion.source_revision,
        target=promotion.target,
        target_revision=promotion.target_revision,
        diff=_diff(promotion.diff),
        applied=promotion.applied,
    )


# -- watch ----------------------------------------------------------------------------


@router.get(
    "/apps/{app}/envs/{env}/watch",
    response_class=JSONResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def watch(
    app: str,
    env: str,
    request: Request,
    principal: ConfigReader,
    session: DbSession,
    actor: CallerActor,
) -> Response:
    """The environment's new revisions as Server-Sent Events (``event: config``, data
    ``{"seq", "stream", "subject": "<app>/<env>", "data": {"revision", "keys"}}``: key
    names, never values; fetch the snapshot with ``If-None-Match``). Resume with
    ``Last-Event-ID`` (or ``?since=``): no revision committed after that id is missed."""
    after = resume_point(request)
    await service.environment_revision(session, principal.tenant_id, app, env)
    subject = service.change_subject(app, env)
    keep = SubjectChanges(
        request,
        principal,
        await get_auth_service(request),
        bearer_credential(request),
        subject=subject,
        permits=lambda caller: may(caller, app, Access.read),
    )
    return await audited_change_stream(
        request,
        session,
        principal.tenant_id,
        [service.CONFIG_STREAM],
        since=after,
        allow=keep,
        actor=actor,
        action="config.changes.watch",
        target_type="config_environment",
        target_id=subject,
    )


def build_router() -> ServiceRouter:
    """The config service's routes, as ``keel.config.spec`` mounts them."""
    top = ServiceRouter()
    top.include_router(router)
    return top
