"""The registry of Keel services: what each one mounts, checks and runs in the background.

Each service package ``keel.<name>`` exposes ``service: ServiceSpec`` in ``keel/<name>/spec.py``.
``keel serve --services a,b`` mounts only those; ``keel worker`` runs only their background
work; ``/health/ready`` and ``keel doctor`` run each enabled service's readiness check.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

if TYPE_CHECKING:
    from keel.core.context import AppContext

ReadyCheck = Callable[["AppContext"], Coroutine[Any, Any, None]]
BackgroundTask = Callable[["AppContext"], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    #: Mounted at ``/<name>``; the router's own paths start with ``/v1/...``.
    router: Callable[[], APIRouter] | None = None
    #: Routes mounted at the root, for paths standards fix (``/.well-known/...``).
    root_router: Callable[[], APIRouter] | None = None
    ready_check: ReadyCheck | None = None
    #: Builds the service's runtime objects into ``context.resources`` before serving.
    startup: ReadyCheck | None = None
    #: Long-running loops started by ``keel worker`` (and by ``keel serve`` on the
    #: embedded default, where there is no separate worker).
    background: Sequence[BackgroundTask] = field(default_factory=tuple)
    #: Loops every process serving the service runs alongside its requests (``keel serve``
    #: on any database), such as sequencing what those requests recorded.
    companions: Sequence[BackgroundTask] = field(default_factory=tuple)
    #: Modules with tables, for the migration history.
    model_modules: Sequence[str] = field(default_factory=tuple)


class ServiceUnavailableInBuild(LookupError):
    """The service is known but not part of this build of Keel."""


def load_service(name: str) -> ServiceSpec:
    try:
        module = import_module(f"keel.{name}.spec")
    except ModuleNotFoundError as exc:
        if exc.name in {f"keel.{name}", f"keel.{name}.spec"}:
            raise ServiceUnavailableInBuild(name) from None
        raise
    spec = module.service
    assert isinstance(spec, ServiceSpec)
    return spec


def available_services(names: Sequence[str]) -> list[ServiceSpec]:
    """The services among ``names`` that this build provides, in order."""
    specs = []
    for name in names:
        try:
            specs.append(load_service(name))
        except ServiceUnavailableInBuild:
            continue
    return specs
