"""A/B tests of a message template, run by a flags experiment (issue 19, point 6).

A template names a flag and a flags environment (:func:`set_experiment`); the flag's
variations' values are version numbers of the template. When a message of the template is
accepted through the message API, the flag is evaluated by the flags service's own engine
for the context ``{"key": <the recipient's id, or the address>}`` — sticky, since the
engine buckets by that key — and the version it serves is the one sent; the message keeps
the variation's id. A variation served by the experiment's rollout is recorded as an
exposure, as the SDK would send it, in the send's transaction. The first open and the first
click of such a message are recorded as the tracked events ``notify.open`` and
``notify.click`` of the same context, so the flag's experiment results
(``GET /flags/v1/envs/{env}/flags/{flag}/results?event=notify.open``) count them as
conversions per variation.

Context keys reach the flags service only as the keyed hash its event API stores
(``hash_context_key``: the keyring's ``token_hash``, as the flags router passes it), so an
event a service's SDK tracks for the same user (a purchase after the email) counts as a
conversion of the email's variation too.

Falls back to the published version, and records no exposure, when the flag is off, missing
or archived, the environment is gone, or the served value is not a version of the template.
Test sends and Keel's own account mail pass no ``hash_context_key``: they use the published
version (or the one asked for) and take no part in the experiment.

Tracked events are per environment, not per flag: two templates running experiments in one
environment count each other's opens for a recipient exposed to both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import utcnow
from keel.core.errors import Conflict, NotFound, ValidationFailed
from keel.core.lazy import lazy_module
from keel.flags import service as flags
from keel.notify.models import (
    NotifyMessage,
    NotifyMessageEvent,
    NotifyRecipient,
    NotifyTemplate,
    NotifyTemplateVersion,
)
from keel.notify.service.templates import TemplateKind, get_template

if TYPE_CHECKING:
    from keel.notify import templating
else:
    templating = lazy_module("keel.notify.templating")


#: The flags' keyed hash of a context key (``Keyring.token_hash``).
ContextKeyHasher = Callable[[str], str]

#: The tracked event a message's first open and first click record.
OPEN_METRIC = "notify.open"
CLICK_METRIC = "notify.click"
CONVERSION_METRICS: Mapping[str, str] = {"opened": OPEN_METRIC, "clicked": CLICK_METRIC}

#: The longest variation id: what the flags service's events and a message keep.
MAX_VARIATION_ID = 128
#: Exposures handed to the flags service's event API at once: one insert each, well inside
#: the database's command timeout (a batch of 100,000 is twenty).
EVENTS_PER_CALL = 5000


@dataclass(frozen=True)
class Variant:
    """What the experiment's flag served one recipient."""

    version: NotifyTemplateVersion
    variation: str
    #: Served by the experiment's rollout (not a target or a fixed rule): an exposure.
    in_experiment: bool


# -- events as the flags service's event API takes them (``ingest_events``) ------------------


@dataclass(frozen=True)
class _Exposure:
    flag: str
    variation: str
    context_key: str
    time: datetime
    kind: str = "exposure"


@dataclass(frozen=True)
class _Track:
    event: str
    context_key: str
    time: datetime
    value: float | None = None
    kind: str = "track"


def version_number(value: Any) -> int | None:
    """A variation's value as a version number: an integer (``2`` or ``2.0``), never a
    boolean, a string or a fraction."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def context_key(recipient: str | None, address: str | None) -> str | None:
    """Who the experiment buckets: the recipient's own id, else the address."""
    return recipient if recipient is not None else address


# -- the template's experiment -----------------------------------------------------------------


async def set_experiment(
    session: AsyncSession, tenant_id: str, name: str, *, flag: str, environment: str
) -> NotifyTemplate:
    """Run template ``name``'s sends through ``flag`` in ``environment``: refused (422) unless
    the flag is an experiment whose every variation's value is a version of the template;
    409 when the flag already runs another template's."""
    template = await get_template(session, tenant_id, name)
    if template.kind != TemplateKind.message:
        raise ValidationFailed(f"Template {name!r} is a {template.kind}: only messages are sent.")
    try:
        await flags.get_environment(session, tenant_id, environment)
        definition = await flags.get_flag(session, tenant_id, flag)
    except NotFound as exc:
        raise ValidationFailed(str(exc.detail)) from None
    if definition.archived:
        raise ValidationFailed(f"Flag {flag!r} is archived.")
    if not definition.experiment:
        raise ValidationFailed(
            f"Flag {flag!r} is not an experiment: its rollouts would record no exposures."
        )
    numbers = set(
        await session.scalars(
            select(NotifyTemplateVersion.number).where(
                NotifyTemplateVersion.template_id == template.id
            )
        )
    )
    not_versions = [
        str(variation.get("id"))
        for variation in definition.variations
        if version_number(variation.get("value")) not in numbers
    ]
    if not_versions:
        raise ValidationFailed(
            f"Variations {', '.join(not_versions)} of flag {flag!r} are not version numbers "
            f"of template {name!r} (it has {', '.join(map(str, sorted(numbers))) or 'none'})."
        )
    if any(len(str(variation.get("id"))) > MAX_VARIATION_ID for variation in definition.variations):
        raise ValidationFailed(f"Variation ids are at most {MAX_VARIATION_ID} characters.")
    other = await session.scalar(
        select(NotifyTemplate.name).where(
            NotifyTemplate.experiment_flag == flag, NotifyTemplate.id != template.id
        )
    )
    if other is not None:
        raise Conflict(f"Flag {flag!r} already runs the experiment of template {other!r}.")
    template.experiment_flag = flag
    template.experiment_environment = environment
    template.version += 1
    template.updated_at = utcnow()
    await session.flush()
    return template


async def stop_experiment(session: AsyncSession, tenant_id: str, name: str) -> NotifyTemplate:
    """Sends of template ``name`` use its published version again. Messages already sent
    keep their variation, but their opens and clicks are no longer recorded."""
    template = await get_template(session, tenant_id, name)
    if template.experiment_flag is not None or template.experiment_environment is not None:
        template.experiment_flag = None
        template.experiment_environment = None
        template.version += 1
        template.updated_at = utcnow()
        await session.flush()
    return template


# -- sends -----------------------------------------------------------------------------------


def _served_version(detail: Mapping[str, Any]) -> int | None:
    reason = detail.get("reason") or {}
    if detail.get("variation") is None or reason.get("kind") in ("OFF", "ERROR"):
        return None  # off, missing or malformed: the published version
    return version_number(detail.get("value"))


async def assign_variants(
    session: AsyncSession,
    tenant_id: str,
    template: NotifyTemplate,
    keys: Sequence[str | None],
) -> list[Variant | None]:
    """The variant the template's experiment serves each context key (``None``: the
    published version), from one evaluation of the flag for every key: the flags engine
    is pure once its snapshot is compiled, so a batch of 100,000 costs one read of the
    environment's version, not one per recipient."""
    flag, environment = template.experiment_flag, template.experiment_environment
    if flag is None or environment is None or not any(key is not None for key in keys):
        return [None] * len(keys)
    evaluated = [key for key in keys if key is not None]
    try:
        _, results = await flags.evaluate(
            session, tenant_id, environment, [{"key": key} for key in evaluated], [flag]
        )
    except NotFound:  # the environment was deleted since: no experiment to run
        return [None] * len(keys)
    details = [result[flag] for result in results]
    numbers = {number for detail in details if (number := _served_version(detail)) is not None}
    versions: dict[int, NotifyTemplateVersion] = {}
    if numbers:
        versions = {
            version.number: version
            for version in await session.scalars(
                select(NotifyTemplateVersion).where(
                    NotifyTemplateVersion.template_id == template.id,
                    NotifyTemplateVersion.number.in_(numbers),
                )
            )
        }
    # One Variant per (variation, reason) rather than one per recipient.
    made: dict[tuple[str, bool], Variant | None] = {}
    served = iter(details)
    variants: list[Variant | None] = []
    for key in keys:
        if key is None:
            variants.append(None)
            continue
        detail = next(served)
        variation = str(detail.get("variation"))
        in_experiment = bool((detail.get("reason") or {}).get("in_experiment"))
        marker = (variation, in_experiment)
        if marker not in made:
            number = _served_version(detail)
            version = versions.get(number) if number is not None else None
            made[marker] = (
                Variant(version, variation, in_experiment)
                if version is not None and len(variation) <= MAX_VARIATION_ID
                else None
            )
        variants.append(made[marker])
    return variants


async def record_exposures(
    session: AsyncSession,
    tenant_id: str,
    template: NotifyTemplate,
    exposed: Sequence[tuple[str | None, Variant | None]],
    *,
    hash_context_key: ContextKeyHasher,
) -> int:
    """Record the exposure of each (context key, variant) the experiment's rollout served,
    once per key and variation, with the flags service's event API; how many."""
    flag, environment = template.experiment_flag, template.experiment_environment
    if flag is None or environment is None:
        return 0
    now = utcnow()
    unique = {
        (key, variant.variation)
        for key, variant in exposed
        if key is not None and variant is not None and variant.in_experiment
    }
    events = [_Exposure(flag, variation, key, now) for key, variation in unique]
    for start in range(0, len(events), EVENTS_PER_CALL):
        await flags.ingest_events(
            session,
            tenant_id,
            environment,
            events[start : start + EVENTS_PER_CALL],
            hash_context_key=hash_context_key,
        )
    return len(events)


async def choose_version(
    session: AsyncSession,
    tenant_id: str,
    template: NotifyTemplate,
    key: str | None,
    *,
    hash_context_key: ContextKeyHasher | None,
) -> Variant | None:
    """One send's variant (``None``: the published version, or no experiment)."""
    if hash_context_key is None or template.experiment_flag is None:
        return None
    [variant] = await assign_variants(session, tenant_id, template, [key])
    return variant


async def assign_batch(
    session: AsyncSession,
    tenant_id: str,
    template: NotifyTemplate,
    rows: list[dict[str, Any]],
    keys: Sequence[str | None],
    *,
    library: templating.Library,
    channel: templating.Channel,
    hash_context_key: ContextKeyHasher | None,
) -> None:
    """Give each of a batch's message rows the version and variation its key is served, and
    record the exposures. An entry whose data lacks a variable of the version it is served
    refuses the batch (422), as one lacking the published version's does."""
    if hash_context_key is None or template.experiment_flag is None:
        return
    variants = await assign_variants(session, tenant_id, template, keys)
    wanted: dict[int, set[str]] = {}
    for index, (row, variant) in enumerate(zip(rows, variants, strict=True)):
        if variant is None:
            row["variation"] = None  # one bulk insert: every row has the same columns
            continue
        number = variant.version.number
        if number not in wanted:
            content = templating.TemplateContent.model_validate(variant.version.content)
            wanted[number] = templating.variables(content, library, channel=channel) - {"recipient"}
        absent = wanted[number] - set(row["data"] or ())
        if absent:
            raise ValidationFailed(
                f"Entry {index}: the data lacks variables of version {number} (variation "
                f"{variant.variation!r}): {', '.join(sorted(absent))}"
            )
        row["template_version"] = number
        row["variation"] = variant.variation
    await record_exposures(
        session,
        tenant_id,
        template,
        list(zip(keys, variants, strict=True)),
        hash_context_key=hash_context_key,
    )


# -- opens and clicks --------------------------------------------------------------------------


async def record_conversion(
    session: AsyncSession,
    message: NotifyMessage,
    status: str,
    *,
    hash_context_key: ContextKeyHasher,
) -> bool:
    """Record a message's first ``opened`` or ``clicked`` as the tracked event
    ``notify.open`` or ``notify.click`` of its context key, in its template's experiment
    environment; whether one was recorded. Call it before the status joins the message's
    history: a pixel loaded again, or a second click, counts nothing."""
    metric = CONVERSION_METRICS.get(status)
    if metric is None or message.variation is None:
        return False
    earlier = await session.scalar(
        select(NotifyMessageEvent.id)
        .where(NotifyMessageEvent.message_id == message.id, NotifyMessageEvent.status == status)
        .limit(1)
    )
    if earlier is not None:
        return False
    environment = await session.scalar(
        select(NotifyTemplate.experiment_environment).where(NotifyTemplate.name == message.template)
    )
    if environment is None:  # the experiment was stopped
        return False
    key = message.address
    if message.recipient_id is not None:
        key = await session.scalar(
            select(NotifyRecipient.external_id).where(NotifyRecipient.id == message.recipient_id)
        )
    if key is None:  # erased since
        return False
    try:
        await flags.ingest_events(
            session,
            message.tenant_id,
            environment,
            [_Track(metric, key, utcnow())],
            hash_context_key=hash_context_key,
        )
    except NotFound:  # the environment was deleted
        return False
    return True
