"""The storage service's own work on the jobs engine (``keel.jobs.runner`` runs it):
``storage.scan``, a job per stored version of a scanning bucket, and ``storage.lifecycle``."""

from __future__ import annotations

from collections.abc import Sequence

from keel.core.context import BackgroundTask
from keel.storage.service.runtime import LIFECYCLE, SCAN

TASKS = (SCAN, LIFECYCLE)
#: Loops ``keel worker`` runs (the lifecycle sweep's scheduler joins here).
BACKGROUND: Sequence[BackgroundTask] = ()
