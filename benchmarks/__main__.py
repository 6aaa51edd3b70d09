"""Run every benchmark module (or those named: ``python -m benchmarks foundation``)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path


def main(selected: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(
        module.name
        for module in pkgutil.iter_modules([str(here)])
        if module.name.startswith("bench_")
    )
    if selected:
        names = [name for name in names if name.removeprefix("bench_") in selected]
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        result = module.main()
        if inspect.iscoroutine(result):
            asyncio.run(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
