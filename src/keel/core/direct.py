"""Routes served directly: a hot endpoint's dependencies made by hand instead of solved.

FastAPI solves an endpoint's declared dependencies, reads and validates its body and
validates its answer on every request. On the few routes every request of a busy service
goes through (a secret's read, a job's enqueue, fetch and ack) that machinery was a large
share of the CPU (docs/benchmarks.md, issue 23). Such a route keeps its declared endpoint,
whose signature documents it in OpenAPI, and is served by a handler that does the same
work by hand, in the same order::

    router = APIRouter(route_class=DirectRoute)

    @router.post("/jobs", response_model=schemas.Enqueued)
    async def enqueue(body: schemas.JobCreate, principal: CurrentPrincipal) -> Response: ...

    async def _enqueue_directly(request: Request) -> Response:
        raw = await json_body(request)           # invalid JSON: 400 before anything else
        principal = ...                           # the dependencies, in their order
        body = validated_body(request, schemas.JobCreate, raw)
        ...

    served_directly(enqueue, _enqueue_directly)

Errors raised by a direct handler reach the app's exception handlers as the endpoint's do;
:func:`validated_body` raises FastAPI's own ``RequestValidationError``, so a bad body is
answered exactly as before (400, 415 or 422).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
ModelT = TypeVar("ModelT", bound=BaseModel)

#: The attribute :func:`served_directly` sets on an endpoint.
DIRECT = "keel_direct"

#: Nothing was sent (FastAPI passes a missing body on as ``None``).
_NO_BODY = object()


def served_directly(endpoint: Callable[..., Any], direct: Handler) -> None:
    """Serve ``endpoint``'s route with ``direct(request)``, which does by hand what the
    endpoint's declared dependencies would, in the same order (see the module's text)."""
    setattr(endpoint, DIRECT, direct)


def direct_handler(endpoint: Callable[..., Any]) -> Handler | None:
    """The handler :func:`served_directly` gave ``endpoint``, if any."""
    return getattr(endpoint, DIRECT, None)


class DirectRoute(APIRoute):
    """A route served by its endpoint's direct handler when it has one."""

    def get_route_handler(self) -> Handler:
        return direct_handler(self.endpoint) or super().get_route_handler()


async def json_body(request: Request) -> Any:
    """The request's body decoded as FastAPI decodes a JSON body (strict about the content
    type), before any dependency: the parsed JSON when the body is declared JSON, the raw
    bytes otherwise (then refused by :func:`validated_body`: 415). Invalid JSON is FastAPI's
    ``json_invalid`` error (answered 400)."""
    raw = await request.body()
    if not raw:
        return _NO_BODY
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    main_type, _, subtype = media_type.partition("/")
    if main_type != "application" or not (subtype == "json" or subtype.endswith("+json")):
        return raw
    try:
        return json.loads(raw)
    except ValueError as error:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", getattr(error, "pos", 0)),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": str(error)},
                }
            ],
            body=raw.decode(errors="replace"),
        ) from None


def validated_body(model: type[ModelT], body: Any) -> ModelT:
    """``body`` (from :func:`json_body`) as ``model``, or FastAPI's own validation error, its
    locations under ``body`` as FastAPI reports them."""
    if body is _NO_BODY:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise RequestValidationError(
            [
                {**detail, "loc": ("body", *detail["loc"])}
                for detail in error.errors(include_url=False)
            ],
            body=body,
        ) from None
