"""HTTP routes of the gateway service: ``/gateway/v1/...``.

Reads answer with the policy's revision as ``ETag`` and ``304 Not Modified`` for a current
``If-None-Match``; writes take an optional ``If-Match`` (412 when the policy moved on). A
refused policy is one 422 problem+json listing every problem at its field
(``{"location": ["routes", "1", "path"], "message", "code"}``); a route's or pool's
locations are those of the whole policy document it is written into.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from keel.auth.dependencies import Access, CallerActor, bearer_credential, get_auth_service
from keel.core.changes import SubjectChanges, audited_change_stream, resume_point
from keel.core.deps import DbSession, get_context
from keel.core.http import ServiceRouter, etag_for, is_not_modified
from keel.core.input_rules import MAX_STORED_INT
from keel.gateway import authz, schemas, service
from keel.gateway.auth import PolicyReader, PolicyWriter, may
from keel.gateway.service.parts import ROUTES, UPSTREAMS

IfMatch = Annotated[
    str | None, Header(description="The ETag of the policy (its revision) this write is based on.")
]
IfNoneMatch = Annotated[str | None, Header()]
Comment = Annotated[str, Query(max_length=service.MAX_COMMENT_LENGTH, description="Why.")]
PolicyDocument = Annotated[
    dict[str, Any],
    Body(
        description='An EdgePolicy (keel_client.edge): {"upstreams": [...], "routes": [...]}.',
        examples=[
            {
                "upstreams": [{"name": "orders", "targets": [{"url": "http://10.0.0.5:8080"}]}],
                "routes": [{"name": "orders", "path": "/orders", "upstream": "orders"}],
            }
        ],
    ),
]
PartDocument = Annotated[dict[str, Any], Body(description="A Route or an UpstreamPool.")]
PartName = Annotated[str, Path(max_length=64)]


def _rules(request: Request) -> service.UpstreamAddressRules:
    return service.UpstreamAddressRules.from_settings(get_context(request).settings.gateway)


def _not_modified(revision: int) -> Response:
    return Response(status_code=304, headers={"ETag": etag_for(revision)})


def _written(outcome: service.WriteOutcome, response: Response) -> schemas.PolicyWritten:
    snapshot = outcome.snapshot
    response.headers["ETag"] = etag_for(snapshot.revision)
    return schemas.PolicyWritten(
        revision=snapshot.revision,
        updated_at=snapshot.updated_at,
        policy=snapshot.policy.model_dump(mode="json"),
        created=outcome.created,
        warnings=[schemas.Problem(**warning) for warning in outcome.warnings],
    )


def _part_written(
    outcome: service.WriteOutcome, kind: str, name: str, response: Response
) -> schemas.PartWritten:
    snapshot = outcome.snapshot
    response.headers["ETag"] = etag_for(snapshot.revision)
    items = snapshot.policy.model_dump(mode="json")[kind]
    return schemas.PartWritten(
        revision=snapshot.revision,
        created=outcome.created,
        item=next((item for item in items if item["name"] == name), None),
        warnings=[schemas.Problem(**warning) for warning in outcome.warnings],
    )


router = APIRouter(prefix="/v1", tags=["gateway"])

# -- the policy -------------------------------------------------------------------------


@router.get("/policy", response_model=schemas.PolicyOut)
async def read_policy(
    response: Response,
    principal: PolicyReader,
    session: DbSession,
    if_none_match: IfNoneMatch = None,
) -> Any:
    """The tenant's policy at its current revision (0 and the empty policy before the first
    write). ``ETag`` is the revision; ``If-None-Match`` with it answers 304."""
    revision, _ = await service.current_revision(session, principal.tenant_id)
    if is_not_modified(if_none_match, revision):
        return _not_modified(revision)
    snapshot = await service.read_policy(session, principal.tenant_id)
    response.headers["ETag"] = etag_for(snapshot.revision)
    return schemas.PolicyOut(
        revision=snapshot.revision,
        updated_at=snapshot.updated_at,
        policy=snapshot.policy.model_dump(mode="json"),
        tenant_id=principal.tenant_id,
    )


@router.put("/policy", response_model=schemas.PolicyWritten)
async def write_policy(
    body: PolicyDocument,
    request: Request,
    response: Response,
    principal: PolicyWriter,
    session: DbSession,
    actor: CallerActor,
    if_match: IfMatch = None,
    comment: Comment = "",
) -> Any:
    """Replace the whole policy: a new revision, validated first (every problem in one 422).
    A document equal to the current policy makes no revision (``created: false``)."""
    outcome = await service.write_policy(
        session,
        principal.tenant_id,
        body,
        actor=actor,
        if_match=if_match,
        comment=comment,
        rules=_rules(request),
    )
    return _written(outcome, response)


@router.post("/policy/validate", response_model=schemas.Validated)
async def validate_policy(
    body: PolicyDocument, request: Request, principal: PolicyWriter
) -> schemas.Validated:
    """A dry run of ``PUT /policy``: ``{"valid": true}`` or the same 422 a write would get."""
    checked = await service.validate_policy(body, rules=_rules(request))
    return schemas.Validated(
        valid=True, warnings=[schemas.Problem(**warning) for warning in checked.warnings]
    )


@router.get("/policy/revisions", response_model=schemas.RevisionList)
async def list_revisions(
    principal: PolicyReader,
    session: DbSession,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1, le=MAX_STORED_INT)] = None,
) -> schemas.RevisionList:
    """The revisions, newest first (number, comment, author, time; no documents)."""
    rows = await service.list_revisions(session, principal.tenant_id, limit, before)
    items = [
        schemas.RevisionSummary(
            revision=row.revision,
            comment=row.comment,
            created_by=row.created_by,
            created_at=row.created_at,
        )
        for row in rows
    ]
    last = rows[-1].revision if len(rows) == limit else None
    return schemas.RevisionList(items=items, next_before=last if last and last > 1 else None)


@router.get("/policy/revisions/{revision}", response_model=schemas.RevisionOut)
async def read_revision(
    revision: Annotated[int, Path(ge=1, le=MAX_STORED_INT)],
    principal: PolicyReader,
    session: DbSession,
) -> schemas.RevisionOut:
    """One revision with its whole policy document."""
    row = await service.read_revision(session, principal.tenant_id, revision)
    return schemas.RevisionOut(
        revision=row.revision,
        comment=row.comment,
        created_by=row.created_by,
        created_at=row.created_at,
        policy=row.document,
    )


@router.post("/policy/rollback", response_model=schemas.PolicyWritten)
async def rollback(
    body: schemas.Rollback,
    request: Request,
    response: Response,
    principal: PolicyWriter,
    session: DbSession,
    actor: CallerActor,
    if_match: IfMatch = None,
) -> Any:
    """A new revision holding the document of an earlier one, checked against today's rules."""
    outcome = await service.rollback(
        session,
        principal.tenant_id,
        body.revision,
        actor=actor,
        if_match=if_match,
        comment=body.comment,
        rules=_rules(request),
    )
    return _written(outcome, response)


@router.get(
    "/policy/watch",
    response_class=JSONResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def watch(
    request: Request, principal: PolicyReader, session: DbSession, actor: CallerActor
) -> Response:
    """The policy's new revisions as Server-Sent Events (``event: gateway``, data ``{"seq",
    "stream": "gateway", "subject": "policy", "data": {"revision"}}``); fetch the policy with
    ``If-None-Match``. Resume with ``Last-Event-ID`` (or ``?since=``)."""
    after = resume_point(request)
    keep = SubjectChanges(
        request,
        principal,
        await get_auth_service(request),
        bearer_credential(request),
        subject=service.POLICY_SUBJECT,
        permits=lambda caller: may(caller, Access.read),
    )
    return await audited_change_stream(
        request,
        session,
        principal.tenant_id,
        [service.GATEWAY_STREAM],
        since=after,
        allow=keep,
        actor=actor,
        action="gateway.policy.watch",
        target_type="gateway_policy",
        target_id=service.POLICY_SUBJECT,
    )


# -- routes -----------------------------------------------------------------------------


@router.get("/routes", response_model=schemas.PartList)
async def list_routes(
    response: Response, principal: PolicyReader, session: DbSession
) -> schemas.PartList:
    """Every route, in the policy's order; ``ETag`` is the policy's revision."""
    snapshot = await service.read_policy(session, principal.tenant_id)
    response.headers["ETag"] = etag_for(snapshot.revision)
    items = snapshot.policy.model_dump(mode="json")[ROUTES]
    return schemas.PartList(revision=snapshot.revision, items=items)


@router.get("/routes/{name}", response_model=schemas.PartOut)
async def get_route(
    name: PartName, response: Response, principal: PolicyReader, session: DbSession
) -> schemas.PartOut:
    revision, route = await service.get_route(session, principal.tenant_id, name)
    response.headers["ETag"] = etag_for(revision)
    return schemas.PartOut(revision=revision, item=route.model_dump(mode="json"))


@router.put("/routes/{name}", response_model=schemas.PartWritten)
async def put_route(
    name: PartName,
    body: PartDocument,
    request: Request,
    response: Response,
    principal: PolicyWriter,
    session: DbSession,
    actor: CallerActor,
    if_match: IfMatch = None,
    comment: Comment = "",
) -> schemas.PartWritten:
    """Create or replace one route: a new revision of the policy, validated as a whole."""
    outcome = await service.put_route(
        session,
        principal.tenant_id,
        name,
        body,
        actor=actor,
        if_match=if_match,
        comment=comment,
        rules=_rules(request),
    )
    return _part_written(outcome, ROUTES, name, response)


@router.delete("/routes/{name}", response_model=schemas.PartWritten)
async def delete_route(
    name: PartName,
    request: Request,
    response: Response,
    principal: PolicyWriter,
    session: DbSession,
    actor: CallerActor,
    if_match: IfMatch = None,
    comment: Comment = "",
) -> schemas.PartWritten:
    """Remove one route (404 when absent): a new revision."""
    outcome = await service.delete_route(
        session,
        principal.tenant_id,
        name,
        actor=actor,
        if_match=if_match,
        comment=comment,
        rules=_rules(request),
    )
    return _part_written(outcome, ROUTES, name, response)


# -- upstream pools ---------------------------------------------------------------------


@router.get("/upstreams", response_model=schemas.PartList)
async def list_upstreams(
    response: Response, principal: PolicyReader, session: DbSession
) -> schemas.PartList:
    """Every upstream pool; ``ETag`` is the policy's revision."""
    snapshot = await service.read_policy(session, principal.tenant_id)
    response.headers["ETag"] = etag_for(snapshot.revision)
    items = snapshot.policy.model_dump(mode="json")[UPSTREAMS]
    return schemas.PartList(revision=snapshot.revision, items=items)


@router.get("/upstreams/{name}", response_model=schemas.PartOut)
async def get_upstream(
    name: PartName, response: Response, principal: PolicyReader, session: DbSession
) -> schemas.PartOut:
    revision, pool = await service.get_upstream(session, principal.tenant_id, name)
    response.headers["ETag"] = etag_for(revision)
    return schemas.PartOut(revision=revision, item=pool.model_dump(mode="json"))


@router.put("/upstreams/{name}", response_model=schemas.PartWritten)
async def put_upstream(
    name: PartName,
    body: PartDocument,
    request: Request,
    response: Response,
    principal: PolicyWriter,
    session: DbSession,
    actor: CallerActor,
    if_match: IfMatch = None,
    comment: Comment = "",
) -> schemas.PartWritten:
    """Create or replace one upstream pool: a new revision, its targets' addresses checked."""
    outcome = await service.put_upstream(
        session,
        principal.tenant_id,
        name,
        body,
        actor=actor,
        if_match=if_match,
        comment=comment,
        rules=_rules(request),
    )
    return _part_written(outcome, UPSTREAMS, name, response)


@router.delete("/upstreams/{name}", response_model=schemas.PartWritten)
async def delete_upstream(
    name: PartName,
    request: Request,
    response: Response,
    principal: PolicyWriter,
    session: DbSession,
    actor: CallerActor,
    if_match: IfMatch = None,
    comment: Comment = "",
) -> schemas.PartWritten:
    """Remove one pool: 404 when absent, 409 (naming them) while routes still use it."""
    outcome = await service.delete_upstream(
        session,
        principal.tenant_id,
        name,
        actor=actor,
        if_match=if_match,
        comment=comment,
        rules=_rules(request),
    )
    return _part_written(outcome, UPSTREAMS, name, response)


def build_router() -> ServiceRouter:
    """The gateway service's routes, as ``keel.gateway.spec`` mounts them."""
    top = ServiceRouter()
    top.include_router(router)
    top.include_router(authz.router)
    return top
