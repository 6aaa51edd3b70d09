"""The one shape every benchmark figure takes."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    peer: str | None = None
    #: ``value / peer value`` (or the inverse where lower is better, as the name says).
    ratio: float | None = None
    extra: dict[str, Any] | None = None

    def line(self) -> str:
        data = asdict(self)
        if data["extra"] is None:
            del data["extra"]
        return json.dumps(data, sort_keys=False)


def emit(figure: Figure) -> Figure:
    print(figure.line(), flush=True)
    return figure


def machine() -> str:
    return f"{platform.machine()} {platform.processor() or ''} Python {sys.version.split()[0]}"
