"""The flags service's logic, one module per concept. Plain arguments in, plain objects
out: the router, the CLI and the tests call the same functions.

- :mod:`.documents`: key syntax, the definition, state and segment documents, merge patch,
  audit diff and validation by the SDK's engine (pure);
- :mod:`.rollouts`: what a state serves over time (pure);
- :mod:`.changes`: the environment's version and the ``flags`` change stream;
- :mod:`.environments`, :mod:`.definitions`, :mod:`.states`, :mod:`.segments`: the
  resources and their writes;
- :mod:`.snapshots` and :mod:`.evaluation`: what SDKs evaluate, and server-side evaluation;
- :mod:`.events`, :mod:`.experiments` with :mod:`.statistics` (pure), :mod:`.stale`: SDK
  events, experiment results and the stale listing.

Every write is validated by the engine of :mod:`keel_client.flags` (the one the SDKs
evaluate with), recorded as an audit event with a diff of the fields it changed, and
recorded as a change on the ``flags`` stream (subject: the environment's key, data
``{"version": n, "keys": [flag keys], "segments": [segment keys]}``) in the caller's unit of
work. ``version`` is the environment's own counter, bumped by every change of what its
snapshot holds: the snapshot's ``version`` and ETag.
"""

from __future__ import annotations

from keel.flags import audit_actions  # noqa: F401  (registers the catalogue entries)
from keel.flags.service.changes import FLAGS_STREAM
from keel.flags.service.definitions import (
    archive_flag,
    create_flag,
    get_flag,
    list_flags,
    update_flag,
)
from keel.flags.service.documents import definition_document, state_document
from keel.flags.service.environments import (
    create_environment,
    delete_environment,
    environment_version,
    get_environment,
    list_environments,
    update_environment,
)
from keel.flags.service.evaluation import evaluate, record_evaluations
from keel.flags.service.events import EventsOutcome, ingest_events
from keel.flags.service.experiments import (
    ExperimentResults,
    SampleRatio,
    VariationResult,
    experiment_results,
)
from keel.flags.service.segments import (
    create_segment,
    delete_segment,
    get_segment,
    list_segments,
    replace_segment,
)
from keel.flags.service.snapshots import snapshot
from keel.flags.service.stale import StaleFlag, stale_flags
from keel.flags.service.states import StateView, get_state, patch_state, replace_state, toggle

__all__ = [
    "FLAGS_STREAM",
    "EventsOutcome",
    "ExperimentResults",
    "SampleRatio",
    "StaleFlag",
    "StateView",
    "VariationResult",
    "archive_flag",
    "create_environment",
    "create_flag",
    "create_segment",
    "definition_document",
    "delete_environment",
    "delete_segment",
    "environment_version",
    "evaluate",
    "experiment_results",
    "get_environment",
    "get_flag",
    "get_segment",
    "get_state",
    "ingest_events",
    "list_environments",
    "list_flags",
    "list_segments",
    "patch_state",
    "record_evaluations",
    "replace_segment",
    "replace_state",
    "snapshot",
    "stale_flags",
    "state_document",
    "toggle",
    "update_environment",
    "update_flag",
]
