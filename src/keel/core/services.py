"""The registry of Keel services: what each one mounts, checks and runs in the background.

Each service package ``keel.<name>`` exposes ``service: ServiceSpec`` in ``keel/<name>/spec.py``.
``keel serve --services a,b`` mounts only those; ``keel worker`` runs only their background
work; ``/health/ready`` and ``keel doctor`` run each enabled service's readiness check.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module

from keel.core.context import BackgroundTask, ReadyCheck, ServiceSpec
from keel.settings import Settings

__all__ = [
    "BackgroundTask",
    "ReadyCheck",
    "ServiceSpec",
    "ServiceUnavailableInBuild",
    "available_services",
    "load_service",
    "resolve_services",
]


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


def resolve_services(settings: Settings) -> list[ServiceSpec]:
    """The services to run: all this build has, or exactly those named in ``services``."""
    if "services" not in settings.model_fields_set:
        return available_services(settings.services)
    specs = []
    for name in settings.services:
        try:
            specs.append(load_service(name))
        except ServiceUnavailableInBuild:
            raise ServiceUnavailableInBuild(
                f"service {name!r} is not part of this Keel build yet"
            ) from None
    return specs
