"""Feature flags: the SDK client, and the evaluation engine the SDK and the server share.

Example::

    from keel_client.flags import FlagsClient

    async with FlagsClient.from_env("production") as flags:   # KEEL_URL, KEEL_TOKEN
        if flags.is_enabled("checkout-v2", {"key": "user-1"}):
            ...
        flags.track("purchase", {"key": "user-1"}, 12.5)

The OpenFeature provider is ``keel_client.flags.openfeature.KeelProvider`` (needs
``keel-client[openfeature]``). The engine alone::

    from keel_client.flags import FlagStore

    store = FlagStore(snapshot)     # {"environment", "version", "flags", "segments"}
    detail = store.evaluate("checkout-v2", {"key": "user-1", "email": "a@corp.com"}, False)
    detail.value, detail.variation, detail.reason.to_dict()

The server validates writes with :func:`validate_flag` and :func:`validate_segment`.
See ``docs/flags.md`` (sections "Evaluation engine", "SDK" and "OpenFeature").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel_client._lazy import lazy_names
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

if TYPE_CHECKING:
    from keel_client.flags._client import (
        FlagsChange,
        FlagsChangeCallback,
        FlagsClient,
        SyncFlagsClient,
        default_flags_cache_path,
    )
    from keel_client.flags._events import EventStats

#: The client's names, imported on first use: it brings an HTTP stack that the engine alone
#: (the Keel server evaluates and validates with it) does without.
__getattr__ = lazy_names(
    __name__,
    {
        "_client": {
            "FlagsChange",
            "FlagsChangeCallback",
            "FlagsClient",
            "SyncFlagsClient",
            "default_flags_cache_path",
        },
        "_events": {"EventStats"},
        "_exceptions": {
            "FlagsError",
            "FlagsNotFound",
            "FlagsPermissionDenied",
            "FlagsUnavailable",
        },
    },
)


__all__ = [
    "ErrorKind",
    "EvaluationDetail",
    "EvaluationReason",
    "EventStats",
    "FlagStore",
    "FlagType",
    "FlagsChange",
    "FlagsChangeCallback",
    "FlagsClient",
    "FlagsError",
    "FlagsNotFound",
    "FlagsPermissionDenied",
    "FlagsUnavailable",
    "ReasonKind",
    "SyncFlagsClient",
    "bucket",
    "default_flags_cache_path",
    "evaluate",
    "validate_flag",
    "validate_segment",
]
