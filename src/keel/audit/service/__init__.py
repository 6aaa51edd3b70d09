"""The audit service's logic: a tamper-evident log of every tenant's events.

One module per concept, behind :class:`AuditLog`, the front the API, the CLI and the jobs
call:

- :mod:`~keel.audit.service.log`: :class:`AuditLog`, appending and sequencing events into each
  tenant's Merkle tree, and signing its heads;
- :mod:`~keel.audit.service.tree`: an append planned in memory (leaf indexes, nodes, root);
- :mod:`~keel.audit.service.storage`: the tree's rows in the database (fast inserts, locks);
- :mod:`~keel.audit.service.heads`: signed tree heads and the log's signing key;
- :mod:`~keel.audit.service.proofs`: inclusion and consistency proofs;
- :mod:`~keel.audit.service.reads`: reading events back, filtered;
- :mod:`~keel.audit.service.catalogue`: the action catalogue, and appended events checked
  against it;
- :mod:`~keel.audit.service.writer`: group commit of events recorded "now";
- :mod:`~keel.audit.service.export`: exports with a proof per event;
- :mod:`~keel.audit.service.retention`: erasing expired documents, keeping their leaves;
- :mod:`~keel.audit.service.verify`: ``keel audit verify``, the log recomputed from its rows.

The last three are imported where they are used (the CLI and the jobs), not here.
"""

from __future__ import annotations

from keel.audit.service.catalogue import is_reserved
from keel.audit.service.log import AUDIT_RESOURCE, SEQUENCE_BATCH, AuditLog, request_hashes
from keel.audit.service.reads import EventFilter, StoredEvent, events_query
from keel.audit.service.storage import LogCorrupted
from keel.audit.service.tree import Receipt, event_columns

__all__ = [
    "AUDIT_RESOURCE",
    "SEQUENCE_BATCH",
    "AuditLog",
    "EventFilter",
    "LogCorrupted",
    "Receipt",
    "StoredEvent",
    "event_columns",
    "events_query",
    "is_reserved",
    "request_hashes",
]
