"""The gateway service's logic: a tenant's edge policy, stored as immutable revisions. Plain
arguments in, plain objects out: the router, the CLI and the tests call the same functions.

One module per concept:

===================  ==============================================================
``validation``       whether a document may be stored (model, references, addresses)
``policy``           read, write (a new revision), revisions, rollback; change stream
``parts``            routes and upstream pools one at a time, each a new revision
``last_known_good``  the policy kept on disk for a replica started without its database
===================  ==============================================================
"""

from __future__ import annotations

from keel.gateway import audit_actions  # noqa: F401  (registers the catalogue entries)
from keel.gateway.service.last_known_good import load_last_known_good, save_last_known_good
from keel.gateway.service.parts import (
    delete_route,
    delete_upstream,
    get_route,
    get_upstream,
    put_route,
    put_upstream,
)
from keel.gateway.service.policy import (
    GATEWAY_STREAM,
    MAX_COMMENT_LENGTH,
    POLICY_SUBJECT,
    PolicySnapshot,
    RevisionInfo,
    WriteOutcome,
    current_revision,
    list_revisions,
    read_policy,
    read_revision,
    rollback,
    validate_policy,
    write_built_policy,
    write_policy,
)
from keel.gateway.service.validation import CheckedPolicy, UpstreamAddressRules, check_policy

__all__ = [
    "GATEWAY_STREAM",
    "MAX_COMMENT_LENGTH",
    "POLICY_SUBJECT",
    "CheckedPolicy",
    "PolicySnapshot",
    "RevisionInfo",
    "UpstreamAddressRules",
    "WriteOutcome",
    "check_policy",
    "current_revision",
    "delete_route",
    "delete_upstream",
    "get_route",
    "get_upstream",
    "list_revisions",
    "load_last_known_good",
    "put_route",
    "put_upstream",
    "read_policy",
    "read_revision",
    "rollback",
    "save_last_known_good",
    "validate_policy",
    "write_built_policy",
    "write_policy",
]
