"""A manifest's problems and a checked manifest: what :mod:`.load` makes, :mod:`.checks` and
:mod:`.kinds` read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from keel.core.errors import KeelError
from keel.manifest.locate import line_of
from keel.manifest.schemas import Manifest


@dataclass(frozen=True)
class Problem:
    """One problem of a manifest, at a field (a path into the document)."""

    path: tuple[str | int, ...]
    message: str
    line: int | None = None

    @property
    def field(self) -> str:
        text = ""
        for part in self.path:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text or "(manifest)"

    def describe(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        return f"{where}: {self.field}: {self.message}"


class ManifestError(Exception):
    """A manifest refused: its problems, each to be printed on one line."""

    def __init__(self, file: str, problems: Sequence[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s) in {file}")
        self.file = file
        self.problems = list(problems)

    def lines(self) -> list[str]:
        return [problem.describe(self.file) for problem in self.problems]


@dataclass
class LoadedManifest:
    """A checked manifest: the model and what :mod:`keel.manifest.load` resolved from it."""

    file: str
    manifest: Manifest
    lines: dict[tuple[str | int, ...], int]
    #: The config application's JSON Schema (the file read), if any.
    json_schema: dict[str, Any] | None = None
    #: The service's pool and routes as the gateway stores them (JSON documents).
    upstream: dict[str, Any] | None = None
    routes: list[dict[str, Any]] = field(default_factory=list)
    #: Bucket policies as the storage service's model.
    buckets: dict[str, BaseModel] = field(default_factory=dict)
    #: Template contents as the notify service stores them.
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Job schedules as the jobs API's body (cron normalised).
    schedules: dict[str, BaseModel] = field(default_factory=dict)
    #: The tenant's audit actions as the audit API's body.
    audit_actions: dict[str, BaseModel] = field(default_factory=dict)

    def problem(self, path: Sequence[str | int], message: str) -> Problem:
        return Problem(tuple(path), message, line_of(self.lines, path))

    @property
    def config_app(self) -> str | None:
        config = self.manifest.config
        if config is None:
            return None
        return config.app or self.manifest.service.name


def describe_error(error: KeelError) -> str:
    """One line for a service's refusal: its detail and the problems it lists, if any."""
    text = str(error.detail or error)
    for name in ("problems", "errors"):
        listed = error.extensions.get(name)
        if isinstance(listed, list) and listed:
            parts = []
            for entry in listed[:5]:
                if isinstance(entry, dict):
                    where = entry.get("path") or entry.get("location") or ""
                    if isinstance(where, list):
                        where = ".".join(str(part) for part in where)
                    message = entry.get("message") or entry
                    parts.append(f"{where}: {message}" if where else str(message))
                else:
                    parts.append(str(entry))
            text = f"{text} ({'; '.join(parts)})"
    return text
