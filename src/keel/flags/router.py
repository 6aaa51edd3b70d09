"""HTTP routes of the flags service: ``/flags/v1/...``.

Reads answer with an ``ETag`` (a flag's, a state's or a segment's version; the
environment's version for a snapshot) and a snapshot answers ``304 Not Modified`` for a
current ``If-None-Match``; writes take an optional ``If-Match`` (412 when the resource moved
on). Errors are problem+json; engine refusals list each problem with the path of its field.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from keel.auth.dependencies import (
    Access,
    CallerActor,
    bearer_credential,
    get_auth_service,
)
from keel.core.changes import SubjectChanges, audited_change_stream, resume_point
from keel.core.deps import DbSession, get_context
from keel.core.http import ServiceRouter, etag_for, is_not_modified
from keel.core.versioned import with_etag
from keel.flags import schemas, service
from keel.flags.auth import (
    DefinitionsAdmin,
    DefinitionsReader,
    EnvironmentReader,
    EnvironmentWriter,
    Evaluator,
    EventSender,
    may,
)
from keel.flags.models import Segment

IfMatch = Annotated[
    str | None, Header(description="The ETag (version) of the resource this write is based on.")
]
IfNoneMatch = Annotated[str | None, Header()]
JsonObject = Annotated[dict[str, Any], Body(description="A JSON merge patch (RFC 7396).")]


def _state(view: service.StateView, response: Response) -> schemas.FlagState:
    response.headers["ETag"] = etag_for(view.state.version)
    return schemas.FlagState(**view.document())


def _segment(environment: str, segment: Segment) -> schemas.Segment:
    return schemas.Segment(
        environment=environment,
        key=segment.key,
        description=segment.description,
        included=segment.included,
        excluded=segment.excluded,
        rules=segment.rules,
        version=segment.version,
        created_at=segment.created_at,
        updated_at=segment.updated_at,
    )


router = APIRouter(prefix="/v1", tags=["flags"])

# -- environments ---------------------------------------------------------------------


@router.post("/envs", status_code=201, response_model=schemas.Environment)
async def create_environment(
    body: schemas.EnvironmentCreate,
    principal: DefinitionsAdmin,
    actor: CallerActor,
    session: DbSession,
) -> Any:
    """Create an environment; every flag gets its default state there (off)."""
    return await service.create_environment(
        session,
        principal.tenant_id,
        body.key,
        description=body.description,
        actor=actor,
    )


@router.get("/envs", response_model=list[schemas.Environment])
async def list_environments(principal: DefinitionsReader, session: DbSession) -> Any:
    return await service.list_environments(session, principal.tenant_id)


@router.get("/envs/{env}", response_model=schemas.Environment)
async def get_environment(env: str, principal: EnvironmentReader, session: DbSession) -> Any:
    return await service.get_environment(session, principal.tenant_id, env)


@router.patch("/envs/{env}", response_model=schemas.Environment)
async def update_environment(
    env: str,
    body: schemas.EnvironmentUpdate,
    principal: DefinitionsAdmin,
    actor: CallerActor,
    session: DbSession,
) -> Any:
    return await service.update_environment(
        session,
        principal.tenant_id,
        env,
        description=body.description,
        actor=actor,
    )


@router.delete("/envs/{env}", status_code=204)
async def delete_environment(
    env: str, principal: DefinitionsAdmin, actor: CallerActor, session: DbSession
) -> Response:
    """Delete the environment with its states, segments and experiment events."""
    await service.delete_environment(session, principal.tenant_id, env, actor=actor)
    return Response(status_code=204)


# -- flag definitions -----------------------------------------------------------------


@router.post("/flags", status_code=201, response_model=schemas.Flag)
async def create_flag(
    body: schemas.FlagCreate,
    response: Response,
    principal: DefinitionsAdmin,
    actor: CallerActor,
    session: DbSession,
) -> Any:
    """Define a flag. A boolean flag without variations gets ``on`` (true) and ``off``
    (false). In every environment it starts off, serving its last variation, with the
    first as fallthrough."""
    flag = await service.create_flag(
        session,
        principal.tenant_id,
        body.key,
        flag_type=body.type.value,
        variations=body.variations,
        description=body.description,
        tags=body.tags,
        owner=body.owner,
        salt=body.salt,
        experiment=body.experiment,
        actor=actor,
    )
    return with_etag(flag, response)


@router.get("/flags", response_model=list[schemas.Flag])
async def list_flags(
    principal: DefinitionsReader,
    session: DbSession,
    tag: Annotated[str | None, Query(max_length=64)] = None,
    archived: Annotated[bool, Query(description="Include archived flags.")] = False,
) -> Any:
    return await service.list_flags(
        session, principal.tenant_id, include_archived=archived, tag=tag
    )


@router.get("/flags/{key}", response_model=schemas.Flag)
async def get_flag(
    key: str, response: Response, principal: DefinitionsReader, session: DbSession
) -> Any:
    flag = await service.get_flag(session, principal.tenant_id, key)
    return with_etag(flag, response)


@router.patch("/flags/{key}", response_model=schemas.Flag)
async def update_flag(
    key: str,
    patch: JsonObject,
    response: Response,
    principal: DefinitionsAdmin,
    actor: CallerActor,
    session: DbSession,
    if_match: IfMatch = None,
) -> Any:
    """A JSON merge patch of ``description``, ``tags``, ``owner``, ``variations``,
    ``salt``, ``experiment`` or ``archived`` (``key`` and ``type`` never change). New
    variations are refused (422) where an environment's state names one that goes."""
    flag = await service.update_flag(
        session,
        principal.tenant_id,
        key,
        patch,
        if_match=if_match,
        actor=actor,
    )
    return with_etag(flag, response)


@router.delete("/flags/{key}", response_model=schemas.Flag)
async def archive_flag(
    key: str,
    response: Response,
    principal: DefinitionsAdmin,
    actor: CallerActor,
    session: DbSession,
    if_match: IfMatch = None,
) -> Any:
    """Archive the flag: it leaves every snapshot (409 while another flag names it as a
    prerequisite). ``PATCH {"archived": false}`` restores it."""
    flag = await service.archive_flag(
        session,
        principal.tenant_id,
        key,
        if_match=if_match,
        actor=actor,
    )
    return with_etag(flag, response)


# -- per-environment state ------------------------------------------------------------


@router.get("/envs/{env}/flags/{key}", response_model=schemas.FlagState)
async def get_state(
    env: str, key: str, response: Response, principal: EnvironmentReader, session: DbSession
) -> Any:
    """The flag's state in the environment; ``ETag`` is the state's version."""
    return _state(await service.get_state(session, principal.tenant_id, env, key), response)


@router.put("/envs/{env}/flags/{key}", response_model=schemas.FlagState)
async def replace_state(
    env: str,
    key: str,
    body: schemas.FlagStateWrite,
    response: Response,
    principal: EnvironmentWriter,
    actor: CallerActor,
    session: DbSession,
    if_match: IfMatch = None,
) -> Any:
    """Replace the whole state (validated by the engine, with references checked)."""
    view = await service.replace_state(
        session,
        principal.tenant_id,
        env,
        key,
        body.model_dump(exclude={"comment"}),
        if_match=if_match,
        comment=body.comment,
        actor=actor,
    )
    return _state(view, response)


@router.patch("/envs/{env}/flags/{key}", response_model=schemas.FlagState)
async def patch_state(
    env: str,
    key: str,
    patch: JsonObject,
    response: Response,
    principal: EnvironmentWriter,
    actor: CallerActor,
    session: DbSession,
    if_match: IfMatch = None,
) -> Any:
    """A JSON merge patch of the state (``{"rules": [...]}`` replaces the rules)."""
    view = await service.patch_state(
        session,
        principal.tenant_id,
        env,
        key,
        patch,
        if_match=if_match,
        actor=actor,
    )
    return _state(view, response)


@router.post("/envs/{env}/flags/{key}/toggle", response_model=schemas.FlagState)
async def toggle(
    env: str,
    key: str,
    body: schemas.Toggle,
    response: Response,
    principal: EnvironmentWriter,
    actor: CallerActor,
    session: DbSession,
) -> Any:
    """The kill switch: ``{"on": false}`` turns the flag off in this environment now
    (watchers reload within their stream's latency)."""
    view = await service.toggle(
        session,
        principal.tenant_id,
        env,
        key,
        on=body.on,
        comment=body.comment,
        actor=actor,
    )
    return _state(view, response)


# -- segments -------------------------------------------------------------------------


@router.post("/envs/{env}/segments", status_code=201, response_model=schemas.Segment)
async def create_segment(
    env: str,
    body: schemas.SegmentCreate,
    response: Response,
    principal: EnvironmentWriter,
    actor: CallerActor,
    session: DbSession,
) -> Any:
    _, segment = await service.create_segment(
        session,
        principal.tenant_id,
        env,
        body.key,
        body.model_dump(exclude={"key"}),
        actor=actor,
    )
    return with_etag(_segment(env, segment), response)


@router.get("/envs/{env}/segments", response_model=list[schemas.Segment])
async def list_segments(env: str, principal: EnvironmentReader, session: DbSession) -> Any:
    _, segments = await service.list_segments(session, principal.tenant_id, env)
    return [_segment(env, segment) for segment in segments]


@router.get("/envs/{env}/segments/{key}", response_model=schemas.Segment)
async def get_segment(
    env: str, key: str, response: Response, principal: EnvironmentReader, session: DbSession
) -> Any:
    _, segment = await service.get_segment(session, principal.tenant_id, env, key)
    return with_etag(_segment(env, segment), response)


@router.put("/envs/{env}/segments/{key}", response_model=schemas.Segment)
async def replace_segment(
    env: str,
    key: str,
    body: schemas.SegmentWrite,
    response: Response,
    principal: EnvironmentWriter,
    actor: CallerActor,
    session: DbSession,
    if_match: IfMatch = None,
) -> Any:
    _, segment = await service.replace_segment(
        session,
        principal.tenant_id,
        env,
        key,
        body.model_dump(),
        if_match=if_match,
        actor=actor,
    )
    return with_etag(_segment(env, segment), response)


@router.delete("/envs/{env}/segments/{key}", status_code=204)
async def delete_segment(
    env: str, key: str, principal: EnvironmentWriter, actor: CallerActor, session: DbSession
) -> Response:
    """Delete a segment (409 while a flag's rules name it)."""
    await service.delete_segment(session, principal.tenant_id, env, key, actor=actor)
    return Response(status_code=204)


# -- snapshot and watch ---------------------------------------------------------------


@router.get("/envs/{env}/snapshot")
async def read_snapshot(
    env: str,
    principal: EnvironmentReader,
    session: DbSession,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Every unarchived flag of the environment merged with its state there, and every
    segment: what SDKs evaluate. ``ETag`` is the environment's version; a current
    ``If-None-Match`` answers 304."""
    _, version = await service.environment_version(session, principal.tenant_id, env)
    if is_not_modified(if_none_match, version):
        return Response(status_code=304, headers={"ETag": etag_for(version)})
    document = await service.snapshot(session, principal.tenant_id, env)
    return JSONResponse(document, headers={"ETag": etag_for(document["version"])})


@router.get(
    "/envs/{env}/watch",
    response_class=JSONResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def watch(
    env: str,
    request: Request,
    principal: EnvironmentReader,
    actor: CallerActor,
    session: DbSession,
) -> Response:
    """The environment's changes as Server-Sent Events (``event: flags``, data
    ``{"seq", "stream": "flags", "subject": "<env>", "data": {"version", "keys",
    "segments"}}``); reload the snapshot with ``If-None-Match``. Resume with
    ``Last-Event-ID`` (or ``?since=``)."""
    after = resume_point(request)
    await service.environment_version(session, principal.tenant_id, env)
    keep = SubjectChanges(
        request,
        principal,
        await get_auth_service(request),
        bearer_credential(request),
        subject=env,
        permits=lambda caller: may(caller, env, Access.read),
    )
    return await audited_change_stream(
        request,
        session,
        principal.tenant_id,
        [service.FLAGS_STREAM],
        since=after,
        allow=keep,
        actor=actor,
        action="flags.changes.watch",
        target_type="flags_environment",
        target_id=env,
    )


# -- evaluation and events ------------------------------------------------------------


@router.post("/evaluate", response_model=schemas.EvaluateResponse)
async def evaluate(body: schemas.EvaluateRequest, principal: Evaluator, session: DbSession) -> Any:
    """Evaluate flags for a context (or up to 1000, ``contexts``) with the SDK's own
    engine (for callers that cannot run Python). Each result has ``value``,
    ``variation`` and ``reason``; an unknown key is ``ERROR``/``FLAG_NOT_FOUND`` with a
    ``null`` value."""
    contexts = body.contexts if body.contexts is not None else [body.context or {}]
    version, results = await service.evaluate(
        session, principal.tenant_id, body.environment, contexts, body.flags
    )
    # Answered as built: the engine's details are plain JSON already, and validating a
    # thousand contexts' worth through the response model costs more than evaluating them.
    answer: dict[str, Any] = {"environment": body.environment, "version": version}
    if body.contexts is None:
        answer["flags"] = results[0]
    else:
        answer["results"] = results
    return JSONResponse(answer)


@router.post("/events", status_code=202, response_model=schemas.EventsAccepted)
async def send_events(
    body: schemas.EventBatch, request: Request, principal: EventSender, session: DbSession
) -> Any:
    """A batch of SDK events (at most 1000): ``exposure`` (an experiment flag served a
    variation), ``track`` (a conversion) and ``summary`` (evaluation counts). Context
    keys are stored only as a keyed hash."""
    keyring = get_context(request).keyring
    outcome = await service.ingest_events(
        session,
        principal.tenant_id,
        body.environment,
        body.events,
        hash_context_key=keyring.token_hash,
    )
    return schemas.EventsAccepted(accepted=outcome.accepted, ignored=outcome.ignored)


# -- experiments and governance -------------------------------------------------------


@router.get("/envs/{env}/flags/{key}/results", response_model=schemas.ExperimentResults)
async def experiment_results(
    env: str,
    key: str,
    principal: EnvironmentReader,
    session: DbSession,
    event: Annotated[str | None, Query(max_length=200, description="The conversion event.")] = None,
) -> Any:
    """Per variation: exposures, conversions of ``event``, rate with its 95 % Wilson
    interval and a two-proportion z-test against the control (the first variation);
    and the sample-ratio-mismatch test of exposures against the fallthrough rollout
    (``warning`` at p < 0.001)."""
    results = await service.experiment_results(session, principal.tenant_id, env, key, event=event)
    return schemas.ExperimentResults.model_validate(results, from_attributes=True)


@router.get("/envs/{env}/stale", response_model=schemas.StaleReport)
async def stale(
    env: str,
    principal: EnvironmentReader,
    session: DbSession,
    days: Annotated[int, Query(ge=1, le=3650)] = 30,
) -> Any:
    """Flags not evaluated for ``days`` days, and flags fully rolled out (on, no
    targets, rules or prerequisites, one variation for everybody): candidates for
    removal from code."""
    found = await service.stale_flags(session, principal.tenant_id, env, days=days)
    return schemas.StaleReport(
        environment=env,
        days=days,
        flags=[schemas.StaleFlag.model_validate(flag, from_attributes=True) for flag in found],
    )


def build_router() -> ServiceRouter:
    """The flags service's routes, as ``keel.flags.spec`` mounts them."""
    top = ServiceRouter()
    top.include_router(router)
    return top
