"""What delivery keeps in a process, and the names the rest of the service shares with it,
without importing delivery: ``keel serve`` imports the service's routes at every start, and
delivery brings Jinja, DKIM, MIME and the providers' HTTP and SMTP clients, which a process
needs only once it delivers (:mod:`keel.core.lazy`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keel.core.context import PlatformTask, ResourceKey
from keel.core.logging import get_logger

if TYPE_CHECKING:
    import httpx

log = get_logger(__name__)

#: The change stream of new inbox items (subject: the recipient's row id).
INBOX_STREAM = "notify-inbox"
#: The sender of email (``From``, DKIM) until templates choose theirs.
DEFAULT_SENDER = "default"

#: The ``notify.deliver`` task: a job per message, or per chunk of a batch; its handler is
#: :func:`keel.notify.service.delivery.deliver_messages`, imported when a job first runs.
DELIVER = PlatformTask(
    "notify",
    "deliver",
    "keel.notify.service.delivery:deliver_messages",
    max_attempts=5,
    timeout_seconds=600,
)


@dataclass
class ProviderChain:
    """A tenant's providers of one channel, built with their credentials."""

    signature: tuple[tuple[str, int], ...]
    read_at: float
    providers: list[Any]


def _new_http_client() -> httpx.AsyncClient:
    import httpx

    return httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0))


@dataclass
class NotifyRuntime:
    """What delivery keeps between jobs in one process: one HTTP client for every HTTP
    provider (made at the first delivery), and each tenant's providers (with their
    credentials) for a short while."""

    chains: dict[tuple[str, str], ProviderChain] = field(default_factory=dict)
    dkim_keys: dict[tuple[str, str], tuple[float, bytes]] = field(default_factory=dict)
    _http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = _new_http_client()
        return self._http

    async def aclose(self) -> None:
        for chain in self.chains.values():
            for provider in chain.providers:
                try:
                    await provider.aclose()
                except Exception:  # closing must not stop the others closing
                    log.warning("notify.provider_close_failed", exc_info=True)
        self.chains.clear()
        if self._http is not None:
            await self._http.aclose()


NOTIFY_RUNTIME: ResourceKey[NotifyRuntime] = ResourceKey("notify.runtime")
