"""Whether a policy document may be stored: the wire model's rules, the cross-references
between its parts, and the upstream address rule — every problem at once, each at its field.

The result of a refusal is one :class:`~keel.core.errors.ValidationFailed` (422) whose
``errors`` have the shape of :func:`keel.core.errors.describe_validation_errors`:
``{"location": ["routes", "2", "cors", "allow_origins", "0"], "message", "code"}``. The
offending input is never echoed: a header value of a transform may be a credential.

The upstream address rule refuses a pool target whose host is, or resolves to, an address in
``KEEL_GATEWAY__BLOCKED_UPSTREAM_NETWORKS`` (cloud metadata, link-local, multicast...), or a
loopback address when ``KEEL_GATEWAY__ALLOW_LOOPBACK_UPSTREAMS`` is false. Every textual form
of an address is read as the OS reads it (``0x7f.1``, ``0251.0376.0251.0376``,
``[::ffff:a9fe:a9fe]``: the SDK's SSRF parser), and an IPv6 address carrying an IPv4 one
(mapped, NAT64, 6to4...) is judged by both. A host name that does not resolve from here is
accepted with a warning: the gateway may sit in another network than the writer's Keel.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from keel.core.errors import ValidationFailed, describe_validation_errors
from keel.core.input_rules import InputRefused, check_json_value
from keel.settings import DEFAULT_BLOCKED_UPSTREAM_NETWORKS, GatewaySettings
from keel_client._addresses import (
    BLOCKED_HOSTNAMES,
    IPAddress,
    Resolver,
    default_resolver,
    embedded_ipv4,
    parse_ip_literal,
)
from keel_client.edge._model import EdgePolicy, Location, cross_reference_errors

#: The longest a write waits for one upstream host name to resolve...
RESOLVE_TIMEOUT_SECONDS = 2.0
#: ...and for all of them: a policy naming many slow names is still answered promptly (the
#: names left unresolved are accepted with a warning, as a name that does not resolve is).
RESOLVE_BUDGET_SECONDS = 5.0
#: Host names resolved at once while a policy is checked.
_CONCURRENT_RESOLUTIONS = 16
_LOOPBACK_NAMES = ("localhost", "*.localhost", "localhost.localdomain")
#: Names that mean a cloud metadata endpoint wherever they resolve: refused outright.
_METADATA_NAMES = tuple(name for name in BLOCKED_HOSTNAMES if name not in _LOOPBACK_NAMES)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def problem(location: Location | Sequence[str | int], message: str, code: str) -> dict[str, Any]:
    """One entry of a refusal's ``errors``, as ``describe_validation_errors`` writes them."""
    return {"location": [str(part) for part in location], "message": message, "code": code}


@dataclass(frozen=True)
class UpstreamAddressRules:
    """Which addresses a pool target may not have. Build with :meth:`from_settings`."""

    blocked_networks: tuple[Network, ...]
    allow_loopback: bool = True
    #: ``resolver(host, port)``: the host's addresses (the system resolver by default).
    resolver: Resolver = field(default=default_resolver, compare=False)

    @classmethod
    def from_settings(
        cls, settings: GatewaySettings, resolver: Resolver = default_resolver
    ) -> UpstreamAddressRules:
        return cls(
            tuple(ipaddress.ip_network(cidr) for cidr in settings.blocked_upstream_networks),
            settings.allow_loopback_upstreams,
            resolver,
        )

    @classmethod
    def default(cls) -> UpstreamAddressRules:
        return cls(tuple(ipaddress.ip_network(cidr) for cidr in DEFAULT_BLOCKED_UPSTREAM_NETWORKS))

    def blocked_reason(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be an upstream (``None``: it may)."""
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            embedded = embedded_ipv4(address)
            if embedded is not None:
                candidates.append(embedded[1])
        for candidate in candidates:
            for network in self.blocked_networks:
                if candidate.version == network.version and candidate in network:
                    return f"{candidate} is in the blocked network {network}"
            if not self.allow_loopback and candidate.is_loopback:
                return f"{candidate} is a loopback address (loopback upstreams are not allowed)"
        return None


@dataclass(frozen=True)
class CheckedPolicy:
    """A policy that may be stored, and what was noticed without refusing it."""

    policy: EdgePolicy
    #: ``{"location", "message", "code"}`` entries, e.g. a host name that did not resolve.
    warnings: list[dict[str, Any]]


async def check_policy(document: Any, rules: UpstreamAddressRules) -> CheckedPolicy:
    """The policy ``document`` describes, or one 422 listing every problem found.

    The wire model's errors come first; when the document does not even parse as a policy,
    they are all there is (the later checks need the parsed parts)."""
    if not isinstance(document, dict):
        raise ValidationFailed(
            "The policy is a JSON object.", errors=[problem([], "must be an object", "dict_type")]
        )
    try:
        check_json_value(document)
    except InputRefused as refused:
        raise ValidationFailed(str(refused)) from None
    # In a worker thread: a policy of a thousand routes takes seconds to cross-check (every
    # pair of routes is compared), which must not stall the other requests of this process.
    policy, errors = await asyncio.to_thread(_parse_and_cross_check, document)
    if policy is None:
        raise _refusal(errors)
    address_errors, warnings = await upstream_address_problems(policy, rules)
    errors += address_errors
    if errors:
        raise _refusal(errors)
    return CheckedPolicy(policy, warnings)


def _parse_and_cross_check(
    document: dict[str, Any],
) -> tuple[EdgePolicy | None, list[dict[str, Any]]]:
    """The policy and its cross-reference errors, or ``None`` and the wire model's errors."""
    try:
        policy = EdgePolicy.model_validate(document, context={"cross_checks": False})
    except ValidationError as error:
        return None, describe_validation_errors(error.errors(include_input=False))
    errors = [
        problem(location, message, "cross_reference")
        for location, message in cross_reference_errors(policy)
    ]
    return policy, errors


def _refusal(errors: list[dict[str, Any]]) -> ValidationFailed:
    count = len(errors)
    return ValidationFailed(
        f"The policy is not valid: {count} problem{'s' if count != 1 else ''}.", errors=errors
    )


async def upstream_address_problems(
    policy: EdgePolicy, rules: UpstreamAddressRules
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The errors and warnings of the upstream address rule, at each target's ``url``."""
    targets = [
        (("upstreams", pool_index, "targets", target_index, "url"), target.url)
        for pool_index, pool in enumerate(policy.upstreams)
        for target_index, target in enumerate(pool.targets)
    ]
    names = {_host_and_port(url) for _, url in targets}
    resolved = await _resolve_all(
        [(host, port) for host, port in names if parse_ip_literal(host) is None], rules.resolver
    )
    errors: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    for location, url in targets:
        host, port = _host_and_port(url)
        address = parse_ip_literal(host)
        if address is not None:
            reason = rules.blocked_reason(address)
            if reason is not None:
                errors.append(problem(location, f"refused upstream address: {reason}", _BLOCKED))
            continue
        reason = _blocked_name_reason(host, rules)
        if reason is not None:
            errors.append(problem(location, f"refused upstream host: {reason}", _BLOCKED))
            continue
        answers = resolved.get((host, port))
        if answers is None:
            warnings.append(
                problem(
                    location,
                    f"the host {host!r} did not resolve from Keel; its addresses were not checked",
                    "unresolved_host",
                )
            )
            continue
        for answer in answers:
            reason = rules.blocked_reason(answer)
            if reason is not None:
                message = f"refused upstream host: {host!r} resolves to {reason}"
                errors.append(problem(location, message, _BLOCKED))
                break
    return errors, warnings


_BLOCKED = "upstream_address_blocked"


def _host_and_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (parts.hostname or "").lower().rstrip("."), port


def _blocked_name_reason(host: str, rules: UpstreamAddressRules) -> str | None:
    """Names refused whatever they resolve to here: metadata endpoints, and localhost when
    loopback upstreams are not allowed (the gateway's resolver, not ours, decides later)."""
    if _name_matches(host, _METADATA_NAMES):
        return f"{host!r} names a cloud metadata endpoint"
    if not rules.allow_loopback and _name_matches(host, _LOOPBACK_NAMES):
        return f"{host!r} is a loopback name (loopback upstreams are not allowed)"
    return None


def _name_matches(host: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


async def _resolve_all(
    names: Sequence[tuple[str, int]], resolver: Resolver
) -> dict[tuple[str, int], list[IPAddress]]:
    """Each name's addresses; a name that fails, or is not answered within the write's budget
    (:data:`RESOLVE_BUDGET_SECONDS` for all names together), is left out."""
    if not names:
        return {}
    gate = asyncio.Semaphore(_CONCURRENT_RESOLUTIONS)

    async def resolve(host: str, port: int) -> list[IPAddress] | None:
        async with gate:
            try:
                answers = await asyncio.wait_for(
                    asyncio.to_thread(resolver, host, port), RESOLVE_TIMEOUT_SECONDS
                )
            except (OSError, TimeoutError, ValueError):  # UnicodeError is a ValueError
                return None
        addresses = [parse_ip_literal(answer) for answer in answers]
        return [address for address in addresses if address is not None] or None

    tasks = {asyncio.create_task(resolve(host, port)): (host, port) for host, port in names}
    done, pending = await asyncio.wait(tasks, timeout=RESOLVE_BUDGET_SECONDS)
    for task in pending:
        task.cancel()
    resolved = {}
    for task in done:
        addresses = task.result()
        if addresses is not None:
            resolved[tasks[task]] = addresses
    return resolved
