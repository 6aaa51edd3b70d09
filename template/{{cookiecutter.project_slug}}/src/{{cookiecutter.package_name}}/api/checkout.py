"""A route whose answer depends on a feature flag, evaluated in the process on the snapshot
Keel keeps current: flipping the flag in Keel changes the answer within a moment, without a
restart.

The same flag through OpenFeature's standard API (the Keel provider is installed when the
app starts): evaluation details with the variant and the reason.
"""

from __future__ import annotations

from fastapi import APIRouter
from openfeature import api as openfeature
from openfeature.evaluation_context import EvaluationContext
from pydantic import BaseModel

from {{ cookiecutter.package_name }}.api.deps import AppState{% if cookiecutter.use_auth %}, Caller{% endif %}

router = APIRouter(tags=["checkout"])

#: The flag (keel.toml's [flags.{{ cookiecutter.project_slug }}-new-checkout]).
NEW_CHECKOUT = "{{ cookiecutter.project_slug }}-new-checkout"


class Checkout(BaseModel):
    flow: str
    #: Why the flag answered so (OpenFeature's reason: DISABLED, TARGETING_MATCH, ...).
    reason: str | None


@router.get("/checkout", response_model=Checkout)
async def checkout(state: AppState{% if cookiecutter.use_auth %}, caller: Caller{% endif %}) -> Checkout:
    """Which checkout flow the caller gets: ``new`` while the flag is on for them."""
{%- if cookiecutter.use_auth %}
    user = {"key": caller.subject, "tenant": caller.tenant_id}
{%- else %}
    user = {"key": "anonymous"}
{%- endif %}
    is_new = state.flags.is_enabled(NEW_CHECKOUT, user)  # no I/O: the local snapshot
    context = EvaluationContext(user["key"], {"tenant": user.get("tenant", "")})
    details = openfeature.get_client().get_boolean_details(NEW_CHECKOUT, False, context)
    return Checkout(flow="new" if is_new else "classic", reason=details.reason)
