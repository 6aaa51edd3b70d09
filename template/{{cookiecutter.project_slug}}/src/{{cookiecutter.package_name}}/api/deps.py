"""What the routes share: the Keel client, the settings, the clients the app started
{%- if cookiecutter.use_auth %},
and the caller{% endif %}."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from keel_client import Keel
{%- if cookiecutter.use_auth %}
from keel_client.auth import Principal
from keel_client.fastapi import require_auth, require_permission
{%- endif %}

from {{ cookiecutter.package_name }}.settings import Settings


def get_keel(request: Request) -> Keel:
    keel: Keel = request.app.state.keel
    return keel


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_state(request: Request) -> Any:
    """The clients the lifespan started (``flags``, ``audit``...)."""
    return request.app.state


KeelClient = Annotated[Keel, Depends(get_keel)]
AppSettings = Annotated[Settings, Depends(get_settings)]
AppState = Annotated[Any, Depends(get_state)]
{%- if cookiecutter.use_auth %}

#: The caller, authenticated by Keel (a user's JWT or an API key).
Caller = Annotated[Principal, Depends(require_auth)]
#: A caller allowed to create orders: the permission is granted by a role in Keel.
OrderWriter = Annotated[
    Principal, require_permission("{{ cookiecutter.project_slug }}:orders:write")
]
{%- endif %}
