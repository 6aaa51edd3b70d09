"""The config service's logic: applications, environments, revisions, promotion, secret
references. Plain arguments in, plain objects out: the router, the CLI and the tests call
the same functions.

Every change is a new immutable revision, written in the caller's unit of work together
with its audit event and its change event (stream ``config``, subject ``<app>/<env>``,
data ``{"revision": n, "keys": [...]}``: key names, never values).

One module per concept:

=====================  ================================================================
``state``              where an environment stands (revision, values, schema), the stream
``applications``       applications and their JSON Schema
``environments``       environments, snapshots, history, diffs
``writes``             change sets, key deletions, rollbacks: new revisions
``promotion``          copying values from one environment to another
``secret_references``  resolving ``$secret`` references through the secrets service
=====================  ================================================================
"""

from __future__ import annotations

from keel.config import audit_actions  # noqa: F401  (registers the catalogue entries)
from keel.config.service.applications import (
    create_application,
    get_application,
    list_applications,
    update_application,
)
from keel.config.service.environments import (
    create_environment,
    diff_revisions,
    environment_revision,
    get_revision,
    history,
    list_environments,
    read_snapshot,
)
from keel.config.service.promotion import Promotion, promote
from keel.config.service.secret_references import ResolvedReference, resolve_secret_references
from keel.config.service.state import (
    CONFIG_STREAM,
    EnvironmentState,
    Snapshot,
    change_subject,
    values_of_revision,
)
from keel.config.service.writes import (
    MAX_EVENT_VALUES_BYTES,
    WriteOutcome,
    delete_key,
    rollback,
    write_values,
)

__all__ = [
    "CONFIG_STREAM",
    "MAX_EVENT_VALUES_BYTES",
    "EnvironmentState",
    "Promotion",
    "ResolvedReference",
    "Snapshot",
    "WriteOutcome",
    "change_subject",
    "create_application",
    "create_environment",
    "delete_key",
    "diff_revisions",
    "environment_revision",
    "get_application",
    "get_revision",
    "history",
    "list_applications",
    "list_environments",
    "promote",
    "read_snapshot",
    "resolve_secret_references",
    "rollback",
    "update_application",
    "values_of_revision",
    "write_values",
]
