"""Feature flags: the evaluation engine the SDK and the server share.

Example::

    from keel_client.flags import FlagStore

    store = FlagStore(snapshot)     # {"environment", "version", "flags", "segments"}
    detail = store.evaluate("checkout-v2", {"key": "user-1", "email": "a@corp.com"}, False)
    detail.value, detail.variation, detail.reason.to_dict()

The server validates writes with :func:`validate_flag` and :func:`validate_segment`.
See ``docs/flags.md`` (section "Evaluation engine").
"""

from keel_client.flags._engine import (
    ErrorKind,
    EvaluationDetail,
    EvaluationReason,
    FlagStore,
    ReasonKind,
    bucket,
    evaluate,
)
from keel_client.flags._model import FlagType, validate_flag, validate_segment

__all__ = [
    "ErrorKind",
    "EvaluationDetail",
    "EvaluationReason",
    "FlagStore",
    "FlagType",
    "ReasonKind",
    "bucket",
    "evaluate",
    "validate_flag",
    "validate_segment",
]
