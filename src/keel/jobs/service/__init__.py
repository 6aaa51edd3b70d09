"""The jobs engine's logic, one module per concept. Plain arguments in, plain objects out;
functions take the caller's session and never commit.

- :mod:`.enqueue`: one job or a batch; unique jobs;
- :mod:`.claims`: claim (leases, within queue limits), heartbeat, complete, fail, and the
  rescue of lapsed leases; the engine's invariants are written there;
- :mod:`.rounds`: a worker's round (its acks and its next claim) in one call to the database;
- :mod:`.retry`: the backoff policy (pure);
- :mod:`.queues`: pause, resume, concurrency and rate limits, the queues' overview;
- :mod:`.schedules`: cron schedules and their firing;
- :mod:`.stats`: jobs per queue and state;
- :mod:`.retention`: deleting ended jobs in batches;
- :mod:`.admin`: read, list, cancel, requeue;
- :mod:`.platform`: Keel's own tasks onto the engine (:mod:`keel.jobs.runner` runs them).
"""

from __future__ import annotations

from keel.jobs.models import JobState
from keel.jobs.service.admin import (
    cancel,
    get_job,
    list_jobs,
    requeue,
    requeue_dead,
)
from keel.jobs.service.claims import (
    Ack,
    AckedJob,
    AckOutcome,
    Claim,
    HeartbeatResult,
    RefusedAck,
    claim,
    complete,
    complete_many,
    fail,
    heartbeat,
    release,
    rescue_lapsed,
)
from keel.jobs.service.enqueue import (
    BatchEntry,
    Enqueued,
    NewJob,
    enqueue,
    enqueue_at_once,
    enqueue_batch,
    enqueue_many,
    enqueue_one,
    open_queues,
)
from keel.jobs.service.platform import (
    enqueue_signalled,
    enqueue_task,
    enqueue_tasks,
    live_task_args,
)
from keel.jobs.service.queues import (
    KEEP,
    QueueOverview,
    configure_queue,
    get_queue_config,
    list_queues,
    pause_queue,
    resume_queue,
)
from keel.jobs.service.retention import prune
from keel.jobs.service.retry import MAX_BACKOFF_SECONDS, Backoff, backoff_seconds
from keel.jobs.service.rounds import Fetched, fetch_at_once
from keel.jobs.service.schedules import (
    SavedSchedule,
    delete_schedule,
    fire_due_schedules,
    get_schedule,
    list_schedules,
    next_tick,
    put_schedule,
    validate_cron,
    validate_timezone,
)
from keel.jobs.service.stats import QueueStateStats, StateStats, queue_stats

__all__ = [
    "KEEP",
    "MAX_BACKOFF_SECONDS",
    "Ack",
    "AckOutcome",
    "AckedJob",
    "Backoff",
    "BatchEntry",
    "Claim",
    "Enqueued",
    "Fetched",
    "HeartbeatResult",
    "JobState",
    "NewJob",
    "QueueOverview",
    "QueueStateStats",
    "RefusedAck",
    "SavedSchedule",
    "StateStats",
    "backoff_seconds",
    "cancel",
    "claim",
    "complete",
    "complete_many",
    "configure_queue",
    "delete_schedule",
    "enqueue",
    "enqueue_at_once",
    "enqueue_batch",
    "enqueue_many",
    "enqueue_one",
    "enqueue_signalled",
    "enqueue_task",
    "enqueue_tasks",
    "fail",
    "fetch_at_once",
    "fire_due_schedules",
    "get_job",
    "get_queue_config",
    "get_schedule",
    "heartbeat",
    "list_jobs",
    "list_queues",
    "list_schedules",
    "live_task_args",
    "next_tick",
    "open_queues",
    "pause_queue",
    "prune",
    "put_schedule",
    "queue_stats",
    "release",
    "requeue",
    "requeue_dead",
    "rescue_lapsed",
    "resume_queue",
    "validate_cron",
    "validate_timezone",
]
