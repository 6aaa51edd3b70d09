"""The browser side of the authorization code flow: ``/auth/v1/oauth/authorize``.

``GET`` validates the request and shows the login form; ``POST`` checks the credentials and
redirects back to the client with a code. Errors go back to the client as ``error=...``
(RFC 6749 §4.1.2.1) once its redirect URI is known to be registered; before that, the user
sees an error page and is sent nowhere.
"""

from __future__ import annotations

import secrets
from functools import cache
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from keel.auth.dependencies import AnonymousActor, Auth, limit_by_address
from keel.auth.service import AuthFailure
from keel.auth.service.account_notices import deliver_later
from keel.auth.service.authorize import (
    BROWSER_COOKIE,
    MAX_STATE_LENGTH,
    AuthorizationCodeFlow,
    AuthorizationRequest,
    AuthorizeError,
    new_browser_binding,
    redirect_with,
    valid_browser_binding,
)
from keel.auth.service.mfa import MfaCheck
from keel.core.deps import DbSession
from keel.core.errors import RateLimited

#: The whole query of an authorization request; its parts are bounded one by one too.
MAX_QUERY_LENGTH = 8192

router = APIRouter(tags=["auth", "oauth"])


@cache
def _templates() -> Any:
    # Built on the first login page, not at import: jinja2 costs a tenth of a cold start.
    from jinja2 import Environment, PackageLoader

    return Environment(
        loader=PackageLoader("keel.auth", "templates"),
        autoescape=True,  # every value is escaped, whatever the template's name
        auto_reload=False,
    )


def _page(template: str, status: int, **values: Any) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = _templates().get_template(template).render(style_nonce=nonce, **values)
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            # No script at all; the one inline style block is allowed by its nonce. No
            # form-action: browsers apply it to the redirect back to the client.
            "Content-Security-Policy": (
                f"default-src 'none'; style-src 'nonce-{nonce}'; "
                "frame-ancestors 'none'; base-uri 'none'"
            ),
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


def _error_page(error: str, message: str, status: int = 400) -> HTMLResponse:
    return _page("authorize_error.html", status, error=error, message=message)


def _redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=302, headers={"Cache-Control": "no-store"})


def _refusal(exc: AuthorizeError, params: dict[str, list[str]]) -> Response:
    if not exc.redirectable:
        return _error_page(exc.error, exc.description)
    state_values = params.get("state", [])
    state = state_values[0] if len(state_values) == 1 else None
    if state is not None and len(state) > MAX_STATE_LENGTH:
        state = None
    redirect_uri = params["redirect_uri"][0]  # validated before any redirectable error
    return _redirect(
        redirect_with(
            redirect_uri,
            {"error": exc.error, "error_description": exc.description, "state": state},
        )
    )


def _login_form(
    request: Request,
    flow: AuthorizationCodeFlow,
    authorization: AuthorizationRequest,
    client_name: str,
    browser_binding: str,
    *,
    status: int = 200,
    username: str = "",
    message: str | None = None,
) -> HTMLResponse:
    page = _page(
        "authorize.html",
        status,
        client_name=client_name,
        action=request.url.path,
        form_token=flow.form_token(authorization, browser_binding),
        username=username,
        message=message,
    )
    page.set_cookie(
        BROWSER_COOKIE,
        browser_binding,
        max_age=3600,
        path=request.url.path,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return page


@router.get("/oauth/authorize", response_class=HTMLResponse)
async def authorize(request: Request, session: DbSession, auth: Auth) -> Response:
    """OAuth 2.0 authorization endpoint: ``response_type=code`` with PKCE (S256) only.

    Shows a login form; signing in redirects to ``redirect_uri`` with ``code`` and
    ``state``.
    """
    if len(request.url.query) > MAX_QUERY_LENGTH:
        return _error_page("invalid_request", "The request is too long.")
    params = {key: request.query_params.getlist(key) for key in request.query_params}
    flow = AuthorizationCodeFlow(auth)
    try:
        client, authorization = await flow.validate(session, params)
    except AuthorizeError as exc:
        return _refusal(exc, params)
    binding = request.cookies.get(BROWSER_COOKIE)
    if not valid_browser_binding(binding):
        binding = new_browser_binding()
    assert binding is not None
    return _login_form(request, flow, authorization, client.name, binding)


@router.post("/oauth/authorize", response_class=HTMLResponse)
async def authorize_sign_in(
    request: Request,
    session: DbSession,
    auth: Auth,
    actor: AnonymousActor,
    form_token: Annotated[str, Form(max_length=8192)] = "",
    username: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    totp_code: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """The login form's submission: on success, a redirect carrying the code."""
    flow = AuthorizationCodeFlow(auth)
    binding = request.cookies.get(BROWSER_COOKIE)
    authorization = flow.read_form_token(form_token, binding)
    if authorization is None or binding is None:
        return _error_page(
            "invalid_request",
            "This sign-in form has expired or was not sent from this browser's page.",
        )
    try:
        client = await flow.find_client(session, authorization.client_id)
    except AuthorizeError as exc:
        return _error_page(exc.error, exc.description)
    if authorization.redirect_uri not in client.redirect_uris:
        return _error_page("invalid_request", "The redirect URI is no longer registered.")
    if not username or not password:
        return _login_form(
            request,
            flow,
            authorization,
            client.name,
            binding,
            status=400,
            username=username,
            message="Enter your username and password.",
        )
    try:
        await limit_by_address(request, "login")  # the same budget as the login API
    except RateLimited as exc:
        return _error_page("temporarily_unavailable", str(exc), status=429)
    checked = await auth.check_credentials(
        session,
        tenant_slug=await flow.tenant_slug(session, client),
        identifier=username,
        password=password,
        totp_code=totp_code or None,
        actor=actor,
    )
    if isinstance(checked, AuthFailure):
        await session.commit()  # the failure counts towards the lockout
        deliver_later(auth.deliver_account_notice, checked.notice)
        mfa_required = checked.reason == MfaCheck.required
        return _login_form(
            request,
            flow,
            authorization,
            client.name,
            binding,
            status=401,
            username=username,
            message=(
                "Enter the code from your authenticator app."
                if mfa_required
                else "Invalid username, password or code."
            ),
        )
    code = await flow.issue_code(session, client, authorization, checked, actor)
    deliver_later(
        auth.deliver_account_notice, await auth.note_login_device(session, checked, actor)
    )
    return _redirect(
        redirect_with(
            authorization.redirect_uri,
            # RFC 9207: the issuer lets a client tell which server answered.
            {"code": code, "state": authorization.state, "iss": auth.issuer},
        )
    )
