"""An OpenFeature provider for Keel flags: services use the standard ``openfeature-sdk`` API
(evaluation details, hooks, context, tracking) on a :class:`FlagsClient`'s local evaluation.
Needs ``keel-client[openfeature]``.

Example::

    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from keel_client.flags import FlagsClient
    from keel_client.flags.openfeature import KeelProvider

    flags = await FlagsClient.from_env("production").start()
    api.set_provider(KeelProvider(flags))
    client = api.get_client()
    details = client.get_boolean_details(
        "checkout-v2", False, EvaluationContext("user-1", {"email": "ana@corp.com"})
    )
    details.value, details.variant, details.reason, details.flag_metadata

Reasons: ``TARGET_MATCH`` → ``TARGETING_MATCH``; ``RULE_MATCH`` → ``TARGETING_MATCH`` (with
``rule_id`` and ``rule_index`` in ``flag_metadata``); ``FALLTHROUGH`` → ``SPLIT`` when a
percentage rollout served it, else ``DEFAULT``; ``OFF`` → ``DISABLED``;
``PREREQUISITE_FAILED`` → ``"PREREQUISITE_FAILED"`` (with ``prerequisite_key``); ``ERROR`` →
``ERROR`` with ``FLAG_NOT_FOUND``, ``TYPE_MISMATCH``, ``PARSE_ERROR`` (a malformed flag),
``INVALID_CONTEXT``, ``TARGETING_KEY_MISSING`` or ``GENERAL``. ``flag_metadata`` always holds
Keel's own ``reason_kind`` and the snapshot ``version``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode, ProviderNotReadyError
from openfeature.flag_evaluation import FlagMetadata, FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider, Metadata
from openfeature.track import TrackingEventDetails

from keel_client.flags._client import FlagsChange, FlagsClient, SyncFlagsClient
from keel_client.flags._engine import ErrorKind, EvaluationDetail, ReasonKind
from keel_client.flags._model import FlagType

__all__ = ["KeelProvider", "keel_context"]

logger = logging.getLogger("keel_client.flags")

PROVIDER_NAME: Final = "keel"
#: The reason of a prerequisite that was not met (OpenFeature has no standard one for it).
PREREQUISITE_FAILED: Final = "PREREQUISITE_FAILED"

_ERROR_CODES: Final = {
    ErrorKind.FLAG_NOT_FOUND: ErrorCode.FLAG_NOT_FOUND,
    ErrorKind.WRONG_TYPE: ErrorCode.TYPE_MISMATCH,
    ErrorKind.MALFORMED_FLAG: ErrorCode.PARSE_ERROR,
    ErrorKind.INVALID_CONTEXT: ErrorCode.INVALID_CONTEXT,
    ErrorKind.EXCEPTION: ErrorCode.GENERAL,
}
_ERROR_MESSAGES: Final = {
    ErrorKind.FLAG_NOT_FOUND: "no such flag in the environment's snapshot",
    ErrorKind.WRONG_TYPE: "the flag's value is not of the type asked for",
    ErrorKind.MALFORMED_FLAG: "the flag (or a segment or prerequisite it uses) is malformed",
    ErrorKind.INVALID_CONTEXT: "the context is not an object with a string key",
    ErrorKind.EXCEPTION: "the evaluation failed (see the log)",
}

T = TypeVar("T")


def _plain(value: Any) -> Any:
    """An OpenFeature attribute as the JSON-like value Keel's clauses compare."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.isoformat()
    if isinstance(value, Mapping):
        return {str(name): _plain(item) for name, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(item) for item in value]
    return value


def keel_context(context: EvaluationContext | None) -> dict[str, Any] | None:
    """The Keel context of an evaluation context: its attributes, with ``key`` the targeting
    key (or a ``key`` attribute); ``None`` without a non-empty key. Dates become RFC 3339
    strings (a naive one is read as UTC), which the ``before``/``after`` clauses take."""
    context = context or EvaluationContext()
    keel = {str(name): _plain(value) for name, value in context.attributes.items()}
    key = context.targeting_key or keel.get("key")
    if not isinstance(key, str) or not key:
        return None
    keel["key"] = key
    return keel


class KeelProvider(AbstractProvider):
    """The OpenFeature provider of a :class:`FlagsClient` (or :class:`SyncFlagsClient`).

    Example::

        flags = await FlagsClient.from_env("production").start()
        api.set_provider(KeelProvider(flags))

        # a service without an event loop: the provider starts (and shuts down) the client
        api.set_provider_and_wait(KeelProvider(SyncFlagsClient.from_env("production")))

    ``initialize`` waits (at most ``init_timeout`` seconds) until the client has a snapshot,
    starting a :class:`SyncFlagsClient` that is not started yet; an async client is started
    by its owner (``await client.start()``, before ``set_provider_and_wait`` when that is
    called on the client's event loop). ``shutdown`` closes only a client the provider
    started. Each new snapshot emits ``PROVIDER_CONFIGURATION_CHANGED`` with the flags that
    changed. ``track`` sends a conversion with the client's events.
    """

    def __init__(self, client: FlagsClient | SyncFlagsClient, *, init_timeout: float = 10.0):
        super().__init__()
        self._sync = client if isinstance(client, SyncFlagsClient) else None
        self.client: FlagsClient = client.client if isinstance(client, SyncFlagsClient) else client
        self._init_timeout = init_timeout
        self._started_client = False
        self.client.on_change(self._changed)

    def get_metadata(self) -> Metadata:
        return Metadata(name=PROVIDER_NAME)

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        if self._sync is not None and not self._sync.is_started:
            self._sync.start()
            self._started_client = True
            return
        if not self.client.ready.wait(self._init_timeout):
            raise ProviderNotReadyError(
                f"the Keel flags client of {self.client.environment!r} has no snapshot after "
                f"{self._init_timeout:g} s (is it started?)"
            )

    def shutdown(self) -> None:
        if self._started_client and self._sync is not None:
            self._started_client = False
            self._sync.close()

    def _changed(self, change: FlagsChange) -> None:
        # A changed segment can change every flag that uses it.
        keys = list(change.keys) if not change.segments else self.client.keys()
        self.emit_provider_configuration_changed(
            ProviderEventDetails(flags_changed=keys, metadata={"version": change.version})
        )

    # -- resolution -----------------------------------------------------------------------

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, evaluation_context, "boolean")

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, evaluation_context, "string")

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        resolved = self._resolve(flag_key, default_value, evaluation_context, "number")
        value = resolved.value
        if resolved.error_code is None and (isinstance(value, bool) or not isinstance(value, int)):
            return self._mismatch(default_value, "the flag's value is not an integer")
        return resolved

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        resolved = self._resolve(flag_key, default_value, evaluation_context, "number")
        if resolved.error_code is None:
            resolved.value = float(resolved.value)  # 2 is the float 2.0 here
        return resolved

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        resolved = self._resolve(flag_key, default_value, evaluation_context, "json")
        if resolved.error_code is None and not isinstance(resolved.value, dict | list):
            return self._mismatch(default_value, "the flag's value is not an object or a list")
        return resolved

    def track(
        self,
        tracking_event_name: str,
        evaluation_context: EvaluationContext | None = None,
        tracking_event_details: TrackingEventDetails | None = None,
    ) -> None:
        context = keel_context(evaluation_context)
        if context is None:
            logger.warning("keel flags: track(%r) dropped: no targeting key", tracking_event_name)
            return
        value = tracking_event_details.value if tracking_event_details is not None else None
        self.client.track(tracking_event_name, context, value)

    def _resolve(
        self,
        key: str,
        default: T,
        evaluation_context: EvaluationContext | None,
        value_type: FlagType,
    ) -> FlagResolutionDetails[T]:
        context = keel_context(evaluation_context)
        if context is None:
            return FlagResolutionDetails(
                default,
                error_code=ErrorCode.TARGETING_KEY_MISSING,
                error_message="the evaluation context has no targeting key",
                reason=Reason.ERROR,
            )
        detail = self.client.variation_detail(key, context, default, value_type=value_type)
        return self._resolution(key, detail, default)

    def _resolution(
        self, key: str, detail: EvaluationDetail, default: T
    ) -> FlagResolutionDetails[T]:
        reason = detail.reason
        metadata: dict[str, bool | int | float | str] = {
            "reason_kind": reason.kind.value,
            "version": self.client.version,
        }
        if reason.rule_id is not None:
            metadata["rule_id"] = reason.rule_id
            if reason.rule_index is not None:
                metadata["rule_index"] = reason.rule_index
        if reason.prerequisite_key is not None:
            metadata["prerequisite_key"] = reason.prerequisite_key
        if reason.in_experiment:
            metadata["in_experiment"] = True
        flag_metadata: FlagMetadata = metadata
        if reason.kind is ReasonKind.ERROR:
            error_kind = reason.error_kind or ErrorKind.EXCEPTION
            metadata["error_kind"] = error_kind.value
            return FlagResolutionDetails(
                default,
                error_code=_ERROR_CODES[error_kind],
                error_message=f"flag {key!r}: {_ERROR_MESSAGES[error_kind]}",
                reason=Reason.ERROR,
                flag_metadata=flag_metadata,
            )
        of_reason: str
        if reason.kind is ReasonKind.OFF:
            of_reason = Reason.DISABLED
        elif reason.kind is ReasonKind.PREREQUISITE_FAILED:
            of_reason = PREREQUISITE_FAILED
        elif reason.kind is ReasonKind.FALLTHROUGH:
            of_reason = (
                Reason.SPLIT if self.client.served_by_rollout(key, detail) else Reason.DEFAULT
            )
        else:  # TARGET_MATCH, RULE_MATCH
            of_reason = Reason.TARGETING_MATCH
            if reason.kind is ReasonKind.RULE_MATCH and self.client.served_by_rollout(key, detail):
                metadata["split"] = True
        value: T = detail.value if detail.variation is not None else default
        return FlagResolutionDetails(
            value, reason=of_reason, variant=detail.variation, flag_metadata=flag_metadata
        )

    @staticmethod
    def _mismatch(default: T, message: str) -> FlagResolutionDetails[T]:
        return FlagResolutionDetails(
            default, error_code=ErrorCode.TYPE_MISMATCH, error_message=message, reason=Reason.ERROR
        )
