"""The notification service's own work on the jobs engine (``keel.jobs.runner`` runs it):
``notify.deliver``, a job per message or per chunk of a batch."""

from __future__ import annotations

from keel.notify.service.runtime import DELIVER

TASKS = (DELIVER,)
