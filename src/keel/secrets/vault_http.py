"""How the secrets API speaks HashiCorp Vault's HTTP protocol, shared by its routers.

Vault's clients (``hvac``, the ``vault`` CLI, Vault Agent) expect Vault's envelope around
data, ``{"errors": [...]}`` around failures and ``LIST`` as a method, not Keel's
problem+json. A secrets router declares ``router = APIRouter(route_class=VaultRoute)`` and
registers each handler with :func:`add_vault_route`; the handler declares the request's
unit of work (:data:`VaultSession`, or :data:`keel.secrets.auth.VaultCaller` which holds it).

:class:`VaultRoute` ends that unit of work itself, before answering: it commits what the
handler did, rolls it back when the handler raised (a denial's audit record is kept), runs a
call again that lost a unique key to a concurrent request, and answers every Keel error, its
dependencies' included, in Vault's shape.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Coroutine, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.deps import DbSession
from keel.core.direct import direct_handler
from keel.core.errors import BadRequest, KeelError, NotFound, Unauthorized
from keel.core.ids import new_id
from keel.secrets.engines.kv import SecretUnreadable

#: Vault's answer to a caller without the capability (or without a valid token).
PERMISSION_DENIED = "1 error occurred:\n\t* permission denied\n\n"
#: Runs of a Vault call that keeps losing a unique key to concurrent requests. A call can lose
#: each row it creates once (an AppRole's first write creates three: its role, its service
#: account and the assignment), and the losers then race each other again on the rows they
#: replace. Three, then five immediate runs let one of five concurrent first writes of an
#: AppRole answer 409 now and then on the loaded CI machine; the runs after a loss now wait a
#: random moment first (:data:`RACE_BACKOFF_SECONDS` times the run's number at most), so that
#: the losers do not collide again in step.
RACE_ATTEMPTS = 8
RACE_BACKOFF_SECONDS = 0.01

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class Denied(Exception):
    """The caller may not do this: Vault's 403, after the denial is recorded."""


def vault_errors(
    status: int, *errors: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"errors": list(errors)}, status_code=status, headers=headers)


def vault_data(data: Any, **fields: Any) -> JSONResponse:
    """Vault's envelope around ``data``; ``fields`` set others (``lease_id``, ``auth``...)."""
    return JSONResponse(
        {
            "request_id": new_id(),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": data,
            "wrap_info": None,
            "warnings": None,
            "auth": None,
            **fields,
        }
    )


def no_content() -> Response:
    return Response(status_code=204)


def is_listing(request: Request) -> bool:
    """``LIST``, or ``GET …?list=true`` as clients that cannot send ``LIST`` write it."""
    return request.method == "LIST" or request.query_params.get("list") in ("true", "1")


async def read_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; an empty body is an empty object, as Vault takes it."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise BadRequest(f"failed to parse JSON input: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body is a JSON object")
    return body


async def vault_unit_of_work(request: Request, session: DbSession) -> AsyncSession:
    """The request's session, handed to :class:`VaultRoute` to end: Vault's errors are
    answered, not raised, so the dependency's own exit would commit what an error left."""
    request.state.vault_session = session
    return session


#: The unit of work of a Vault call, committed by :class:`VaultRoute` before the answer.
VaultSession = Annotated[AsyncSession, Depends(vault_unit_of_work)]


class VaultRoute(APIRoute):
    """A route of the Vault API: its handler's unit of work ends before the answer, and
    Keel's errors are answered in Vault's shape (see the module's docstring)."""

    def get_route_handler(self) -> Handler:
        # A hot route served directly (keel.core.direct): its handler does by hand what the
        # endpoint's declared dependencies would; this route still ends its unit of work
        # and answers its errors in Vault's shape.
        handle = direct_handler(self.endpoint) or super().get_route_handler()

        async def handle_as_vault(request: Request) -> Response:
            return await _answer_as_vault(handle, request)

        return handle_as_vault


def add_vault_route(router: APIRouter, path: str, endpoint: Any, methods: list[str]) -> None:
    """One route a method, so each has its own OpenAPI operation; ``LIST`` (not an OpenAPI
    method; ``GET …?list=true`` is documented instead) is left out of the schema."""
    for method in methods:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            name=f"{endpoint.__name__}_{method.lower()}",
            include_in_schema=method != "LIST",
        )


async def _answer_as_vault(handle: Handler, request: Request) -> Response:
    try:
        for attempt in range(RACE_ATTEMPTS):
            try:
                return await _in_unit_of_work(handle, request)
            except IntegrityError:
                # Another request created the same row between this one's read and its
                # write; nothing of this one was stored. Vault's writes are upserts (a
                # check-and-set is checked again), so the call runs again, a moment later
                # (a random one: timing jitter, not a secret).
                pause = random.uniform(0, RACE_BACKOFF_SECONDS * (attempt + 1))  # noqa: S311
                await asyncio.sleep(pause)
                continue
        return vault_errors(409, "changed by another request at the same time; retry")
    except (Denied, Unauthorized):  # Vault answers a missing or invalid token alike
        return vault_errors(403, PERMISSION_DENIED)
    except NotFound:
        return vault_errors(404)
    except SecretUnreadable:
        return vault_errors(
            500,
            "the stored value does not open: it was altered, or sealed under a master key "
            "this server does not hold",
        )
    except KeelError as error:  # its headers too: Retry-After of a 429 or a 503
        return vault_errors(error.status, str(error.detail or error), headers=error.headers)


async def _in_unit_of_work(handle: Handler, request: Request) -> Response:
    """One run of the handler, its unit of work committed when it answers and rolled back
    when it raises, except for a denial: its audit record is kept (nothing else was
    written before the check)."""
    request.state.vault_session = None
    try:
        response = await handle(request)
    except Denied:
        await _end_unit_of_work(request, commit=True)
        raise
    except BaseException:
        await _end_unit_of_work(request, commit=False)
        raise
    await _end_unit_of_work(request, commit=True)
    return response


async def _end_unit_of_work(request: Request, *, commit: bool) -> None:
    session: AsyncSession | None = getattr(request.state, "vault_session", None)
    if session is None:
        return
    if commit:
        await session.commit()
    else:
        await session.rollback()
