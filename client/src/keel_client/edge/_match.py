"""Which route answers a request: the one rule both the gateway and ``use_keel_edge`` follow.

Preference, first difference deciding:

1. the host: a route listing the request's host exactly, then one listing a ``*.domain``
   wildcard that covers it (the longer domain first), then one listing no host;
2. the path: ``exact`` over ``pattern`` over ``prefix``; between prefixes the longer; between
   patterns the one with a literal segment where the other has a parameter, segment by
   segment (``/orders/export`` over ``/orders/{id}``);
3. the method: a route whose path fits but whose methods do not is passed over; when every
   route whose path fits lists other methods the answer is :class:`MethodMismatch` (405
   with ``Allow``), not a miss.

Two routes that could tie are refused when the policy is written
(:func:`keel_client.edge._model.ambiguous_routes`), so the order of the routes never decides.

A request path holding a ``.`` or ``..`` segment, or an empty one (``//``), matches nothing:
servers behind the gateway would resolve ``/public/../admin`` to ``/admin`` after the policy
of ``/public`` had been applied to it. The caller answers 400 (:func:`is_normalized`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from keel_client.edge._model import Route

__all__ = ["MethodMismatch", "RouteMatch", "RouteTable", "is_normalized", "normalize_host"]


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The route that answers, its path parameters, and the path to send upstream."""

    route: Route
    params: dict[str, str]
    upstream_path: str


@dataclass(frozen=True, slots=True)
class MethodMismatch:
    """Routes take this path, but none this method: answer 405 with ``Allow``."""

    allowed: tuple[str, ...]


def normalize_host(host: str | None) -> str:
    """``Example.COM:8443.`` → ``example.com``; IPv6 literals keep their brackets."""
    if not host:
        return ""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


def is_normalized(path: str) -> bool:
    """Whether ``path`` is absolute and free of ``.``, ``..`` and empty segments."""
    if not path.startswith("/"):
        return False
    if "//" not in path and "/." not in path:
        # The common case, decided without splitting: an empty segment needs "//" (a single
        # trailing slash is ordinary), a "." or ".." segment needs "/.".
        return True
    segments = path[1:].split("/")
    if segments[-1] == "":  # a trailing slash is an ordinary path
        segments.pop()
    return all(segment not in ("", ".", "..") for segment in segments)


@dataclass(slots=True)
class _Entry:
    route: Route
    order: tuple[object, ...]
    prefix: str = ""
    regex: re.Pattern[str] | None = None
    methods: frozenset[str] = field(default_factory=frozenset)

    def match_path(self, path: str) -> dict[str, str] | None:
        route = self.route
        if route.match == "exact":
            return {} if path == route.path or path.rstrip("/") == route.path.rstrip("/") else None
        if route.match == "pattern":
            assert self.regex is not None
            found = self.regex.fullmatch(path)
            return None if found is None else found.groupdict()
        prefix = self.prefix
        if prefix == "" or path == prefix or path.startswith(prefix + "/"):
            return {}
        return None

    def upstream_path(self, path: str, raw_path: str | None) -> str:
        route = self.route
        if route.match != "prefix" or not (route.strip_prefix or route.rewrite):
            return raw_path if raw_path is not None else quote(path, safe="/:@!$&'()*+,;=~-._")
        # The prefix is literal and plain, so on an unescaped raw path it is the same bytes.
        source = raw_path if raw_path is not None and raw_path.startswith(self.prefix) else None
        if source is None:
            source = quote(path, safe="/:@!$&'()*+,;=~-._")
        rest = source[len(self.prefix) :]
        base = (route.rewrite or "").rstrip("/")
        joined = base + rest
        return joined if joined.startswith("/") else "/" + joined


def _path_order(route: Route) -> tuple[object, ...]:
    """A sort key, larger meaning more specific (see the module docstring)."""
    if route.match == "exact":
        return (3, len(route.path))
    if route.match == "pattern":
        kinds = tuple(
            0 if segment.endswith(":path}") else 1 if segment.startswith("{") else 2
            for segment in route.path.strip("/").split("/")
        )
        return (2, kinds, len(kinds))
    prefix = route.path.rstrip("/")
    return (1, len(prefix))


def _pattern_regex(path: str) -> re.Pattern[str]:
    parts = []
    for segment in path.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith(":path}"):
            parts.append(f"(?P<{segment[1:-6]}>.+)")
        elif segment.startswith("{"):
            parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(segment))
    return re.compile("/" + "/".join(parts) + "/?")


class RouteTable:
    """Routes compiled for matching. ``ignore_hosts=True`` is a service's view (its own
    host is not the public one the routes list): every route is then taken as host-less.

    Example::

        table = RouteTable(policy.routes)
        found = table.match("api.example.com", "/orders/7", "GET")
        if isinstance(found, RouteMatch):
            found.route.name, found.params, found.upstream_path
    """

    def __init__(self, routes: Sequence[Route], *, ignore_hosts: bool = False) -> None:
        self.routes = tuple(routes)
        self._exact: dict[str, list[_Entry]] = {}
        self._wildcards: list[tuple[str, list[_Entry]]] = []
        self._any: list[_Entry] = []
        wildcards: dict[str, list[_Entry]] = {}
        for route in routes:
            entry = _Entry(
                route=route,
                order=_path_order(route),
                prefix=route.path.rstrip("/") if route.match == "prefix" else "",
                regex=_pattern_regex(route.path) if route.match == "pattern" else None,
                methods=frozenset(route.methods),
            )
            if ignore_hosts or not route.hosts:
                self._any.append(entry)
                continue
            for host in route.hosts:
                if host.startswith("*."):
                    wildcards.setdefault(host[1:], []).append(entry)
                else:
                    self._exact.setdefault(host, []).append(entry)
        for entries in [*self._exact.values(), *wildcards.values(), self._any]:
            entries.sort(key=lambda entry: entry.order, reverse=True)
        # Longer domains first: ``*.eu.example.com`` before ``*.example.com``.
        self._wildcards = sorted(wildcards.items(), key=lambda item: len(item[0]), reverse=True)

    def _candidates(self, host: str) -> list[list[_Entry]]:
        lists = []
        exact = self._exact.get(host)
        if exact:
            lists.append(exact)
        for suffix, entries in self._wildcards:
            if host.endswith(suffix) and len(host) > len(suffix):
                lists.append(entries)
        lists.append(self._any)
        return lists

    def match(
        self, host: str | None, path: str, method: str, *, raw_path: str | None = None
    ) -> RouteMatch | MethodMismatch | None:
        """The route for a request, :class:`MethodMismatch`, or ``None`` (no route; also for
        a path that is not normalized). ``raw_path`` is the path as sent, percent-escapes
        kept, so the upstream gets what the client wrote."""
        if not is_normalized(path):
            return None
        allowed: set[str] = set()
        # No route lists a host (a service's view, most policies): skip reading the Host.
        candidates = (
            self._candidates(normalize_host(host))
            if self._exact or self._wildcards
            else [self._any]
        )
        for entries in candidates:
            for entry in entries:
                params = entry.match_path(path)
                if params is None:
                    continue
                if entry.methods and method not in entry.methods:
                    allowed |= entry.methods
                    continue
                return RouteMatch(entry.route, params, entry.upstream_path(path, raw_path))
        return MethodMismatch(tuple(sorted(allowed))) if allowed else None
