"""An SSRF-safe transport for services that fetch URLs their users supply.

Three rules make it safe, each closing a known bypass:

1. **Every textual form is read the way the OS would read it.** ``2130706433``, ``0177.0.0.1``,
   ``0x7f.1`` and ``127.1`` all mean 127.0.0.1 to ``inet_aton``; ``[::ffff:127.0.0.1]``,
   NAT64 ``64:ff9b::7f00:1`` and 6to4 ``2002:7f00:1::`` embed it. ``parse_ip_literal`` and
   ``embedded_ipv4`` decode all of them, so the policy judges the address, not the spelling.
2. **The checked address is the connected address.** The network backend resolves the host
   once, checks every answer, and connects to the checked IP; the URL keeps the hostname, so
   the Host header and TLS SNI stay correct. A DNS answer that changes between check and
   connect (rebinding) cannot reach a different address.
3. **Every redirect hop is checked again.** The transport follows redirects itself, up to
   ``max_redirects``, and each new destination goes through rules 1 and 2.
"""

from __future__ import annotations

import ipaddress
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import anyio.to_thread
import httpcore
import httpx

from keel_client._addresses import (
    BLOCKED_HOSTNAMES,
    CLOUD_METADATA_ADDRESSES,
    IPAddress,
    Resolver,
    blocked_reason,
    default_resolver,
    embedded_ipv4,
    parse_ip_literal,
)
from keel_client._addresses import normalize_host as _normalize_host
from keel_client.http._asyncio_backend import AsyncioBackend, AsyncioHTTPTransport, pool_options
from keel_client.http._exceptions import SSRFBlockedError

__all__ = [
    "IPAddress",
    "Resolver",
    "SSRFPolicy",
    "SSRFSafeTransport",
    "SyncSSRFSafeTransport",
    "blocked_reason",
    "default_resolver",
    "embedded_ipv4",
    "parse_ip_literal",
]


def _host_matches(host: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def _split_rules(
    entries: Iterable[str],
) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], tuple[str, ...]]:
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    names: list[str] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.append(_normalize_host(entry))
    return tuple(networks), tuple(names)


@dataclass(frozen=True)
class SSRFPolicy:
    """Which destinations an SSRF-safe client may reach.

    By default only public (global unicast) addresses over http/https. ``allow`` and ``deny``
    take IP addresses, CIDR networks and host names (``"*.example.com"`` matches
    subdomains); ``hook(host, address)`` may return ``True`` (allow), ``False`` (refuse) or
    ``None`` (no opinion). Precedence: deny lists, hook, cloud metadata, allow lists, defaults.
    Cloud-metadata addresses stay refused inside an allowed network unless allowed one by one.

    ``resolver`` is injectable so tests (and service meshes) can control DNS.

    Example::

        fetcher = WebhookClient(ssrf=SSRFPolicy(deny=("*.corp.example",), max_redirects=3))
        # tests: SSRFPolicy(allow=("127.0.0.1",)) to reach a local server
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    hook: Callable[[str, IPAddress], bool | None] | None = None
    allowed_schemes: frozenset[str] = frozenset({"http", "https"})
    allowed_ports: frozenset[int] | None = None
    max_redirects: int = 5
    resolver: Resolver = default_resolver
    _allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        init=False, repr=False
    )
    _allow_names: tuple[str, ...] = field(init=False, repr=False)
    _deny_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        init=False, repr=False
    )
    _deny_names: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        allow_networks, allow_names = _split_rules(self.allow)
        deny_networks, deny_names = _split_rules(self.deny)
        object.__setattr__(self, "_allow_networks", allow_networks)
        object.__setattr__(self, "_allow_names", allow_names)
        object.__setattr__(self, "_deny_networks", deny_networks)
        object.__setattr__(self, "_deny_names", deny_names)

    def _refuse(self, host: str, reason: str) -> SSRFBlockedError:
        return SSRFBlockedError(f"destination {host!r} refused: {reason}", reason=reason)

    def _in(
        self,
        address: IPAddress,
        networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
    ) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address):
            embedded = embedded_ipv4(address)
            if embedded is not None:
                candidates.append(embedded[1])
        return any(
            candidate in network
            for candidate in candidates
            for network in networks
            if candidate.version == network.version
        )

    def check_name(self, host: str) -> None:
        """Refuse a host name on the deny list or one that is loopback/metadata by definition."""
        name = _normalize_host(host)
        if _host_matches(name, self._deny_names):
            raise self._refuse(host, "host on the deny list")
        if _host_matches(name, BLOCKED_HOSTNAMES) and not _host_matches(name, self._allow_names):
            raise self._refuse(host, "loopback or metadata host name")

    def check_address(self, host: str, address: IPAddress) -> None:
        """Refuse ``address`` (which ``host`` resolved to or spells) unless the policy allows it."""
        name = _normalize_host(host)
        if self._in(address, self._deny_networks):
            raise self._refuse(host, f"{address} is on the deny list")
        if self.hook is not None:
            verdict = self.hook(name, address)
            if verdict is True:
                return
            if verdict is False:
                raise self._refuse(host, f"{address} refused by the policy hook")
        reason = blocked_reason(address)
        exact = ipaddress.ip_network(address)
        if (
            reason is not None
            and (address in CLOUD_METADATA_ADDRESSES or reason.endswith("cloud metadata"))
            and exact not in self._allow_networks
        ):
            raise self._refuse(host, f"{address} is {reason}")
        if self._in(address, self._allow_networks) or _host_matches(name, self._allow_names):
            return
        if reason is not None:
            raise self._refuse(host, f"{address} is {reason}")

    def check_url(self, url: str) -> None:
        """Check what can be checked without DNS: scheme, port, literal address, host name.

        Runs before the URL is even parsed by httpx, so forms httpx would reject (``0177.0.0.1``)
        still get an ``SSRFBlockedError`` saying why.
        """
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise self._refuse(url, f"unparseable URL ({error})") from None
        scheme = parts.scheme.lower()
        if scheme not in self.allowed_schemes:
            raise self._refuse(url, f"scheme {scheme or '(none)'!r} not allowed")
        raw_host = parts.netloc.rpartition("@")[2]
        if raw_host.startswith("["):
            raw_host = raw_host[: raw_host.find("]") + 1]
        else:
            raw_host = raw_host.split(":", 1)[0]
        if not raw_host:
            raise self._refuse(url, "no host")
        effective_port = port if port is not None else (443 if scheme == "https" else 80)
        if self.allowed_ports is not None and effective_port not in self.allowed_ports:
            raise self._refuse(url, f"port {effective_port} not allowed")
        address = parse_ip_literal(raw_host)
        if address is not None:
            self.check_address(raw_host, address)
        else:
            self.check_name(raw_host)

    def literal_address(self, host: str) -> IPAddress | None:
        """``host`` as a checked address when it spells one; ``None`` for a name to resolve."""
        address = parse_ip_literal(host)
        if address is not None:
            self.check_address(host, address)
        return address

    def check_resolved(self, host: str, answers: Sequence[str]) -> list[IPAddress]:
        """Check every address ``host`` resolved to; one refused address refuses them all.

        All, not just the first: a name that resolves to a public and a private address is
        either misconfigured or an attack, and the OS could otherwise fall back to the second.
        """
        addresses: list[IPAddress] = []
        for answer in answers:
            address = parse_ip_literal(answer)
            if address is None:
                raise self._refuse(host, f"resolver returned {answer!r}, not an address")
            self.check_address(host, address)
            addresses.append(address)
        if not addresses:
            raise httpcore.ConnectError(f"{host!r} did not resolve to any address")
        return addresses


def _resolution_failed(host: str, error: OSError) -> httpcore.ConnectError:
    return httpcore.ConnectError(f"could not resolve {host!r}: {error}")


class _PinnedAsyncBackend(httpcore.AsyncNetworkBackend):
    """Resolves once, checks every answer, connects to a checked address (never the name)."""

    def __init__(self, policy: SSRFPolicy) -> None:
        self._policy = policy
        self._inner = AsyncioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        literal = self._policy.literal_address(host)
        if literal is not None:
            addresses = [literal]
        else:
            self._policy.check_name(host)
            try:
                # The resolver may block (getaddrinfo does), so it runs in a worker thread.
                answers = await anyio.to_thread.run_sync(self._policy.resolver, host, port)
            except OSError as error:
                raise _resolution_failed(host, error) from error
            addresses = self._policy.check_resolved(host, answers)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise SSRFBlockedError("unix sockets are not reachable", reason="unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PinnedSyncBackend(httpcore.NetworkBackend):
    """The blocking twin of ``_PinnedAsyncBackend``."""

    def __init__(self, policy: SSRFPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        literal = self._policy.literal_address(host)
        if literal is not None:
            addresses = [literal]
        else:
            self._policy.check_name(host)
            try:
                answers = self._policy.resolver(host, port)
            except OSError as error:
                raise _resolution_failed(host, error) from error
            addresses = self._policy.check_resolved(host, answers)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error
        assert last_error is not None
        raise last_error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise SSRFBlockedError("unix sockets are not reachable", reason="unix socket")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Sent only to the origin they were meant for (what browsers and httpx itself do).
_ORIGIN_BOUND_HEADERS = ("authorization", "proxy-authorization", "cookie")


def redirect_request(request: httpx.Request, response: httpx.Response) -> httpx.Request | None:
    """The request a redirect asks for, or ``None`` when ``response`` is not a redirect."""
    location = response.headers.get("location")
    if response.status_code not in _REDIRECT_STATUSES or location is None:
        return None
    url = request.url.join(location)
    method = request.method
    if (response.status_code == 303 and method != "HEAD") or (
        response.status_code in (301, 302) and method == "POST"
    ):
        method = "GET"
    headers = httpx.Headers(request.headers)
    # httpx only fills in Host for requests it builds without a stream.
    headers["Host"] = url.netloc.decode("ascii")
    if (url.scheme, url.host, url.port) != (request.url.scheme, request.url.host, request.url.port):
        for name in _ORIGIN_BOUND_HEADERS:
            headers.pop(name, None)
    if method != request.method:
        for name in ("content-length", "content-type", "transfer-encoding", "content-digest"):
            headers.pop(name, None)
        return httpx.Request(method, url, headers=headers, extensions=request.extensions)
    return httpx.Request(
        method, url, headers=headers, stream=request.stream, extensions=request.extensions
    )


class SSRFSafeTransport(AsyncioHTTPTransport):
    """An httpx transport that only reaches destinations its ``SSRFPolicy`` allows.

    Use it through ``BaseAPIClient(ssrf=SSRFPolicy(...))`` or directly in any httpx client
    (keep that client's ``follow_redirects`` off: this transport follows them, checking each
    hop). Environment proxies are never used: a proxy would resolve the name itself.

    Example::

        async with httpx.AsyncClient(transport=SSRFSafeTransport(SSRFPolicy())) as http:
            await http.get(user_supplied_url)   # SSRFBlockedError for internal targets
    """

    def __init__(
        self,
        policy: SSRFPolicy | None = None,
        *,
        verify: ssl.SSLContext | bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
    ) -> None:
        self.policy = policy or SSRFPolicy()
        # Connects through the pinning backend: the only place addresses are used.
        super().__init__(
            verify=verify,
            http1=http1,
            http2=http2,
            limits=limits,
            trust_env=False,
            network_backend=_PinnedAsyncBackend(self.policy),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(self.policy.max_redirects + 1):
            self.policy.check_url(str(request.url))
            response = await super().handle_async_request(request)
            next_request = redirect_request(request, response)
            if next_request is None or self.policy.max_redirects == 0:
                return response
            await response.aread()
            await response.aclose()
            request = next_request
        raise httpx.TooManyRedirects(
            f"more than {self.policy.max_redirects} redirects", request=request
        )


class SyncSSRFSafeTransport(httpx.HTTPTransport):
    """The blocking twin of ``SSRFSafeTransport``, for ``SyncBaseAPIClient`` and ``httpx.Client``.

    Example::

        with httpx.Client(transport=SyncSSRFSafeTransport(SSRFPolicy())) as http:
            http.get(user_supplied_url)
    """

    def __init__(
        self,
        policy: SSRFPolicy | None = None,
        *,
        verify: ssl.SSLContext | bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
    ) -> None:
        super().__init__(verify=verify, http1=http1, http2=http2, limits=limits, trust_env=False)
        self.policy = policy or SSRFPolicy()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            http1=http1,
            http2=http2,
            network_backend=_PinnedSyncBackend(self.policy),
            **pool_options(limits),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(self.policy.max_redirects + 1):
            self.policy.check_url(str(request.url))
            response = super().handle_request(request)
            next_request = redirect_request(request, response)
            if next_request is None or self.policy.max_redirects == 0:
                return response
            response.read()
            response.close()
            request = next_request
        raise httpx.TooManyRedirects(
            f"more than {self.policy.max_redirects} redirects", request=request
        )
