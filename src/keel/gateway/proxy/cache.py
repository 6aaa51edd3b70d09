"""The gateway proxy's response cache: RFC 9111 as a *shared* cache, in memory.

The proxy (raw ASGI, headers as ``list[tuple[bytes, bytes]]``) calls this engine around each
upstream exchange::

    lookup = cache.lookup(method, key, request_headers, authorized=principal is not None)
    if lookup.kind is LookupKind.FRESH:          # answer lookup.response (Age set); 304 if
        ...                                      # lookup.not_modified (the client's validator)
    elif lookup.kind is LookupKind.ONLY_IF_CACHED_MISS:
        ...                                      # answer 504 (RFC 9111 §5.2.1.7)
    else:                                        # MISS or STALE: go upstream
        headers = lookup.upstream_headers(request_headers)   # adds If-None-Match / -Modified-Since
        status, response_headers = await upstream(...)
        if lookup.kind is LookupKind.STALE and status == 304:
            served = cache.revalidated(key, lookup, response_headers)   # None: ask again, plainly
        elif cache.store_decision(method, key, request_headers, status, response_headers, ...):
            ...                                  # capture the body while streaming it, then
            cache.store(key, request_headers, status, response_headers, body, requested_at=t0)
    if is_invalidating(method, status):
        cache.invalidate(key)                    # §4.4, after an unsafe method succeeded

Why not hishel's state machine, which the SDK's client cache uses: hishel 2.0's ``_core`` is
sans-I/O, but it is private API, it reads ``time.time()`` inside (no clock to pass, so
freshness cannot be tested without sleeping), computes age as ``now - Date`` (ignoring the
upstream's ``Age`` and the resident time, §4.2.3), always applies heuristic freshness (the
policy keeps it off by default), keeps ``Vary: *`` and ``Set-Cookie`` responses, has no
request ``max-age``/``min-fresh``/``only-if-cached`` handling, and needs its own header objects
built per request. The rules below are short enough to own; each names its section.

Shared-cache choices beyond the RFC's minimum, for a gateway serving many callers:
``private`` (even qualified) and ``Set-Cookie`` responses are never stored; an authorised
request (``Authorization``, or any request the proxy authenticated: ``authorized=True``)
neither reads nor fills the cache unless the policy's ``cache_authorized`` is set, and then
only §3.5's ``public`` / ``s-maxage`` / ``must-revalidate`` responses are stored. Only GET
responses are stored; a HEAD is answered from a stored GET (RFC 9110 §9.3.2). Range requests
bypass the cache. The engine is synchronous and not thread-safe: it runs on the proxy's event
loop, where each call is atomic.
"""

from __future__ import annotations

import enum
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formatdate, mktime_tz, parsedate_tz

from keel_client.edge._caching import CachePolicy

__all__ = [
    "CacheLookup",
    "CachedResponse",
    "LookupKind",
    "ResponseCache",
    "http_date",
    "is_invalidating",
]

Headers = Sequence[tuple[bytes, bytes]]
Clock = Callable[[], float]

#: RFC 9110 §15.1: cacheable by default, so storable with heuristic freshness or a validator.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
#: Statuses stored only with explicit freshness (§3): redirects whose target may change.
_EXPLICITLY_CACHEABLE = HEURISTICALLY_CACHEABLE | {302, 307}
#: §4.2.2: a heuristic lifetime is a fraction of the time since Last-Modified, capped (a day,
#: as common caches do) so a years-old file is not served unchecked for months.
_HEURISTIC_FRACTION = 0.1
_HEURISTIC_CAP_SECONDS = 86_400.0
#: §3.1 and RFC 9110 §7.6.1: hop-by-hop fields are never stored.
_NOT_STORED = frozenset(
    {
        b"age",
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authentication-info",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: §3.2: fields a 304 must not overwrite in the stored response.
_NOT_UPDATED = frozenset({b"content-length", b"content-encoding", b"content-range", b"age"})
_CONDITIONAL = frozenset({b"if-none-match", b"if-modified-since"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
#: Bytes an entry costs beyond its body and header bytes (objects, dict slots), roughly.
_ENTRY_OVERHEAD = 512
_DIRECTIVE = re.compile(rb'\s*([^\s=,]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,]*))?\s*(?:,|$)')


class LookupKind(enum.Enum):
    """What the cache can do for a request."""

    #: A stored response may be served as it is.
    FRESH = "fresh"
    #: A stored response exists but must be revalidated upstream first (§4.3).
    STALE = "stale"
    #: Nothing usable: forward the request.
    MISS = "miss"
    #: ``only-if-cached`` and nothing usable: answer 504 (§5.2.1.7).
    ONLY_IF_CACHED_MISS = "only_if_cached_miss"


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A response to send from the cache; ``headers`` already carry ``Age``."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(slots=True)
class _Entry:
    key: str
    #: The selecting request fields (Vary's and the policy's ``key_headers``) and their values.
    selecting: tuple[tuple[bytes, bytes | None], ...]
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    request_time: float
    response_time: float
    #: §4.2.3's corrected initial age, fixed when stored or revalidated.
    initial_age: float
    freshness_lifetime: float
    directives: dict[bytes, bytes | None]
    etag: bytes | None
    last_modified: bytes | None
    size: int

    def current_age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.response_time)


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """The outcome of :meth:`ResponseCache.lookup`."""

    kind: LookupKind
    #: FRESH: the response to serve. STALE: the stored response being revalidated.
    response: CachedResponse | None = None
    #: FRESH: the client's own ``If-None-Match``/``If-Modified-Since`` matched; answer 304.
    not_modified: bool = False
    #: STALE: the validators to send upstream (§4.3.1).
    conditional_headers: tuple[tuple[bytes, bytes], ...] = ()
    #: The request's method: a HEAD is answered without the stored body.
    method: str = "GET"
    _entry: _Entry | None = None

    def upstream_headers(self, request_headers: Headers) -> list[tuple[bytes, bytes]]:
        """The request headers to forward: the client's, with our validators replacing theirs.

        Replacing is safe: a 304 to our validators is turned into the full stored response.
        """
        if not self.conditional_headers:
            return list(request_headers)
        kept = [
            (name, value) for name, value in request_headers if name.lower() not in _CONDITIONAL
        ]
        return kept + list(self.conditional_headers)


_MISS = CacheLookup(LookupKind.MISS)
_ONLY_IF_CACHED_MISS = CacheLookup(LookupKind.ONLY_IF_CACHED_MISS)


def is_invalidating(method: str, status: int) -> bool:
    """§4.4: an unsafe method's non-error response invalidates the stored target URI."""
    return method.upper() not in _SAFE_METHODS and 200 <= status < 400


class ResponseCache:
    """An in-memory, LRU-bounded shared HTTP cache for one route (or one proxy).

    Example::

        cache = ResponseCache(CachePolicy(enabled=True))
        lookup = cache.lookup("GET", "https://orders.internal/v1/items?page=2", headers)

    ``key`` is chosen by the caller (scheme, host, path and query of the target). Bounds:
    ``policy.max_entries`` entries and ``max_total_bytes`` of bodies and headers; the least
    recently used entries go first. ``clock`` is wall-clock seconds (``Date`` is compared to
    it); tests pass their own.
    """

    def __init__(
        self,
        policy: CachePolicy,
        *,
        max_total_bytes: int = 256 * 1024 * 1024,
        clock: Clock = time.time,
    ) -> None:
        self.policy = policy
        self.max_total_bytes = max_total_bytes
        self._clock = clock
        #: key -> its stored variants (one per selecting-field values), in LRU order overall.
        self._variants: dict[str, list[_Entry]] = {}
        self._lru: OrderedDict[int, _Entry] = OrderedDict()
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._lru)

    # -- reading --------------------------------------------------------------------------------

    def lookup(
        self, method: str, key: str, request_headers: Headers, *, authorized: bool | None = None
    ) -> CacheLookup:
        """Whether a stored response answers this request, must be revalidated, or neither."""
        method = method.upper()
        if method not in ("GET", "HEAD") or not self.policy.enabled:
            return _MISS
        if _field(request_headers, b"range") is not None:
            return _MISS
        if self._is_authorized(request_headers, authorized) and not self.policy.cache_authorized:
            return _MISS
        request_directives = _directives(_field(request_headers, b"cache-control"))
        entry = self._find(key, request_headers)
        if entry is None:
            return _only_if_cached_or_miss(request_directives)
        now = self._clock()
        self._lru.move_to_end(id(entry))
        age = entry.current_age(now)
        if _usable_without_validation(entry, age, request_directives):
            response = _served(entry, age, method)
            return CacheLookup(
                LookupKind.FRESH,
                response,
                not_modified=_client_has_it(entry, request_headers),
                method=method,
                _entry=entry,
            )
        if b"only-if-cached" in request_directives:
            return _ONLY_IF_CACHED_MISS
        validators = _validators(entry)
        if not validators:
            # Nothing to revalidate with: the upstream must send the whole response again,
            # and an expired entry of that kind can never be used again.
            if entry.freshness_lifetime <= age:
                self._remove(entry)
            return _MISS
        return CacheLookup(
            LookupKind.STALE,
            _served(entry, age, method),
            conditional_headers=validators,
            method=method,
            _entry=entry,
        )

    # -- writing --------------------------------------------------------------------------------

    def store_decision(
        self,
        method: str,
        key: str,
        request_headers: Headers,
        status: int,
        response_headers: Headers,
        *,
        authorized: bool | None = None,
    ) -> bool:
        """Whether the response may be stored (§3), so the proxy should capture its body."""
        if method.upper() != "GET" or not self.policy.enabled:
            return False
        if _field(request_headers, b"range") is not None:
            return False
        request_directives = _directives(_field(request_headers, b"cache-control"))
        if b"no-store" in request_directives:
            return False
        if _field(response_headers, b"set-cookie") is not None:
            return False  # a cookie is one caller's; a shared cache must not hand it to others
        vary = _vary(response_headers)
        if vary is None:
            return False  # Vary: * never matches a later request (§4.1)
        length = _field(response_headers, b"content-length")
        if length is not None and (
            not length.isdigit() or int(length) > self.policy.max_body_bytes
        ):
            return False
        directives = _directives(_field(response_headers, b"cache-control"))
        if b"no-store" in directives or b"private" in directives:
            return False
        if self._is_authorized(request_headers, authorized) and not _authorized_storable(
            self.policy, directives
        ):
            return False
        return self._is_worth_storing(status, response_headers, directives)

    def store(
        self,
        key: str,
        request_headers: Headers,
        status: int,
        response_headers: Headers,
        body: bytes,
        *,
        requested_at: float | None = None,
    ) -> None:
        """Keep a response :meth:`store_decision` accepted, replacing the variant it selects.

        ``requested_at`` is the clock's reading when the request went upstream (§4.2.3's
        request_time); without it the response is taken to have arrived at once.
        """
        if len(body) > self.policy.max_body_bytes:
            return
        vary = _vary(response_headers)
        if vary is None:
            return
        now = self._clock()
        names = tuple(dict.fromkeys((*vary, *(name.encode() for name in self.policy.key_headers))))
        selecting = tuple((name, _field(request_headers, name)) for name in names)
        headers = [(name.lower(), value) for name, value in response_headers]
        stored_headers = [(name, value) for name, value in headers if name not in _NOT_STORED]
        entry = _Entry(
            key=key,
            selecting=selecting,
            status=status,
            headers=stored_headers,
            body=body,
            request_time=now if requested_at is None else requested_at,
            response_time=now,
            initial_age=0.0,
            freshness_lifetime=0.0,
            directives={},
            etag=None,
            last_modified=None,
            size=_ENTRY_OVERHEAD + len(body) + sum(len(n) + len(v) for n, v in stored_headers),
        )
        _refresh_metadata(entry, headers, self.policy)
        self._remove_selected(key, request_headers)
        self._add(entry)

    def revalidated(
        self, key: str, lookup: CacheLookup, not_modified_headers: Headers
    ) -> CachedResponse | None:
        """Merge a 304 into the stored response (§4.3.4) and return the response to serve.

        ``None`` when the 304 names another representation than the stored one (its strong
        ``ETag`` differs) or the entry is gone: the proxy then repeats the request without
        validators.
        """
        entry = lookup._entry
        if entry is None or id(entry) not in self._lru:
            return None
        now = self._clock()
        headers = [(name.lower(), value) for name, value in not_modified_headers]
        if _field(headers, b"date") is None:
            # RFC 9110 §6.6.1: a missing Date may be taken as the time of receipt; keeping the
            # stored one would make the just-validated response look old.
            headers.append((b"date", http_date(now)))
        etag = _field(headers, b"etag")
        if etag is not None and entry.etag is not None and not _weak_equal(etag, entry.etag):
            self._remove(entry)
            return None
        updated = {
            name for name, _ in headers if name not in _NOT_UPDATED and name not in _NOT_STORED
        }
        merged = [(n, v) for n, v in entry.headers if n not in updated]
        merged += [(n, v) for n, v in headers if n in updated]
        entry.headers = merged
        entry.request_time = entry.response_time = now
        _refresh_metadata(
            entry, merged + [(b"age", v) for n, v in headers if n == b"age"], self.policy
        )
        self._lru.move_to_end(id(entry))
        return _served(entry, entry.current_age(now), lookup.method)

    def invalidate(self, key: str) -> None:
        """Forget every stored variant of ``key`` (§4.4)."""
        for entry in list(self._variants.get(key, ())):
            self._remove(entry)

    def clear(self) -> None:
        self._variants.clear()
        self._lru.clear()
        self.total_bytes = 0

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _is_authorized(request_headers: Headers, authorized: bool | None) -> bool:
        if authorized is not None:
            return authorized
        return _field(request_headers, b"authorization") is not None

    def _is_worth_storing(
        self, status: int, headers: Headers, directives: dict[bytes, bytes | None]
    ) -> bool:
        """§3's storable statuses, kept only if the entry could ever be reused."""
        if status not in _EXPLICITLY_CACHEABLE:
            return False
        explicit = _explicit_lifetime(headers, directives, self._clock())
        if (
            explicit is None
            and status not in HEURISTICALLY_CACHEABLE
            and b"public" not in directives
        ):
            return False
        has_validator = _field(headers, b"etag") is not None or (
            _field(headers, b"last-modified") is not None
        )
        if b"no-cache" in directives:
            return has_validator  # always revalidated: useless without a validator
        if explicit is not None:
            return explicit > 0 or has_validator
        heuristic = self.policy.heuristic and _field(headers, b"last-modified") is not None
        return heuristic or has_validator

    def _find(self, key: str, request_headers: Headers) -> _Entry | None:
        for entry in reversed(self._variants.get(key, ())):
            if all(_field(request_headers, name) == value for name, value in entry.selecting):
                return entry
        return None

    def _remove_selected(self, key: str, request_headers: Headers) -> None:
        """Drop the variants a new response supersedes: those its request selects (§4.1)."""
        for entry in list(self._variants.get(key, ())):
            if all(_field(request_headers, name) == value for name, value in entry.selecting):
                self._remove(entry)

    def _add(self, entry: _Entry) -> None:
        self._variants.setdefault(entry.key, []).append(entry)
        self._lru[id(entry)] = entry
        self.total_bytes += entry.size
        while len(self._lru) > self.policy.max_entries or self.total_bytes > self.max_total_bytes:
            _, oldest = self._lru.popitem(last=False)
            self._forget(oldest)

    def _remove(self, entry: _Entry) -> None:
        if self._lru.pop(id(entry), None) is not None:
            self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        self.total_bytes -= entry.size
        variants = self._variants.get(entry.key)
        if variants is not None:
            variants.remove(entry)
            if not variants:
                del self._variants[entry.key]


# -- pure helpers ---------------------------------------------------------------------------------


def _field(headers: Headers, name: bytes) -> bytes | None:
    """A field's combined value (lines joined by ``, ``, RFC 9110 §5.3), ``None`` if absent.

    Whitespace around list members is normalised so equivalent Vary values compare equal
    (§4.1).
    """
    values = [value.strip() for field_name, value in headers if field_name.lower() == name]
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return b", ".join(values)


def _directives(value: bytes | None) -> dict[bytes, bytes | None]:
    """Cache-Control directives, names lower-cased, quoted values unquoted (§5.2)."""
    if not value:
        return {}
    directives: dict[bytes, bytes | None] = {}
    for match in _DIRECTIVE.finditer(value):
        name, argument = match.group(1).lower(), match.group(2)
        if argument is not None:
            argument = argument.strip()
            if argument.startswith(b'"') and argument.endswith(b'"') and len(argument) >= 2:
                argument = argument[1:-1]
        # §4.2.1: with duplicates, the first value is used.
        directives.setdefault(name, argument)
    return directives


def _seconds(value: bytes | None) -> int | None:
    """A delta-seconds argument (§1.2.2); ``None`` when missing or malformed."""
    if value is None or not value.isdigit():
        return None
    return int(value)


def _http_date(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        parsed = parsedate_tz(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    return None if parsed is None else float(mktime_tz(parsed))


def _vary(headers: Headers) -> tuple[bytes, ...] | None:
    """Vary's field names, lower-cased; ``None`` for ``Vary: *``."""
    value = _field(headers, b"vary")
    if value is None:
        return ()
    names = tuple(name.strip().lower() for name in value.split(b",") if name.strip())
    return None if b"*" in names else names


def _explicit_lifetime(
    headers: Headers, directives: dict[bytes, bytes | None], now: float
) -> float | None:
    """§4.2.1 for a shared cache: s-maxage, then max-age, then Expires minus Date."""
    for name in (b"s-maxage", b"max-age"):
        if name in directives:
            seconds = _seconds(directives[name])
            return 0.0 if seconds is None else float(seconds)  # malformed: stale (§4.2.1)
    expires = _field(headers, b"expires")
    if expires is None:
        return None
    expires_at = _http_date(expires)
    if expires_at is None:
        return 0.0  # §5.3: an invalid Expires, such as "0", means already expired
    date = _http_date(_field(headers, b"date"))
    return max(0.0, expires_at - (now if date is None else date))


def _refresh_metadata(entry: _Entry, headers: Headers, policy: CachePolicy) -> None:
    """Recompute what freshness and validation need from the (new or merged) headers."""
    directives = _directives(_field(headers, b"cache-control"))
    entry.directives = directives
    entry.etag = _field(headers, b"etag")
    entry.last_modified = _field(headers, b"last-modified")
    # §4.2.3: apparent age from Date, corrected by the upstream's Age and the response delay.
    date = _http_date(_field(headers, b"date"))
    apparent_age = 0.0 if date is None else max(0.0, entry.response_time - date)
    age_value = _seconds(_field(headers, b"age")) or 0
    response_delay = max(0.0, entry.response_time - entry.request_time)
    entry.initial_age = max(apparent_age, age_value + response_delay)
    lifetime = _explicit_lifetime(headers, directives, entry.response_time)
    if lifetime is None:
        lifetime = _heuristic_lifetime(entry, date, policy)
    entry.freshness_lifetime = lifetime


def _heuristic_lifetime(entry: _Entry, date: float | None, policy: CachePolicy) -> float:
    """§4.2.2: a tenth of the time since Last-Modified, when the policy allows heuristics."""
    if not policy.heuristic or entry.status not in HEURISTICALLY_CACHEABLE:
        return 0.0
    modified = _http_date(entry.last_modified)
    if modified is None:
        return 0.0
    since = (entry.response_time if date is None else date) - modified
    return min(_HEURISTIC_CAP_SECONDS, max(0.0, since * _HEURISTIC_FRACTION))


def _authorized_storable(policy: CachePolicy, directives: dict[bytes, bytes | None]) -> bool:
    """§3.5: a shared cache stores a response to an authorised request only if it says so."""
    if not policy.cache_authorized:
        return False
    return any(name in directives for name in (b"public", b"s-maxage", b"must-revalidate"))


def _usable_without_validation(
    entry: _Entry, age: float, request: dict[bytes, bytes | None]
) -> bool:
    """§4.2 and §5.2.1: fresh enough for the response's and the request's directives."""
    if b"no-cache" in entry.directives or b"no-cache" in request:
        return False
    max_age = _seconds(request.get(b"max-age")) if b"max-age" in request else None
    if max_age is not None and (max_age == 0 or age > max_age):
        return False  # max-age=0 is how clients ask for revalidation (a browser's reload)
    remaining = entry.freshness_lifetime - age
    min_fresh = _seconds(request.get(b"min-fresh")) if b"min-fresh" in request else None
    if min_fresh is not None and remaining < min_fresh:
        return False
    if remaining > 0:
        return True
    return _stale_allowed(entry, -remaining, request)


def _stale_allowed(entry: _Entry, staleness: float, request: dict[bytes, bytes | None]) -> bool:
    """§4.2.4: stale only if the client accepts it and the response does not forbid it."""
    if b"max-stale" not in request:
        return False
    forbidding = (b"must-revalidate", b"proxy-revalidate", b"s-maxage")
    if any(name in entry.directives for name in forbidding):
        return False  # s-maxage implies proxy-revalidate (§5.2.2.10)
    limit = _seconds(request[b"max-stale"])
    return limit is None or staleness <= limit


def _only_if_cached_or_miss(request: dict[bytes, bytes | None]) -> CacheLookup:
    return _ONLY_IF_CACHED_MISS if b"only-if-cached" in request else _MISS


def _validators(entry: _Entry) -> tuple[tuple[bytes, bytes], ...]:
    """§4.3.1: the stored ETag, else the stored Last-Modified, as preconditions."""
    if entry.etag is not None:
        return ((b"if-none-match", entry.etag),)
    if entry.last_modified is not None:
        return ((b"if-modified-since", entry.last_modified),)
    return ()


def _served(entry: _Entry, age: float, method: str) -> CachedResponse:
    headers = [*entry.headers, (b"age", str(int(age)).encode())]
    return CachedResponse(entry.status, headers, b"" if method == "HEAD" else entry.body)


def _client_has_it(entry: _Entry, request_headers: Headers) -> bool:
    """§4.3.2: the client's own validators against the stored response (only for a 200)."""
    if entry.status != 200:
        return False
    if_none_match = _field(request_headers, b"if-none-match")
    if if_none_match is not None:
        if entry.etag is None:
            return False
        candidates = [tag.strip() for tag in if_none_match.split(b",")]
        return b"*" in candidates or any(_weak_equal(tag, entry.etag) for tag in candidates)
    since = _http_date(_field(request_headers, b"if-modified-since"))
    modified = _http_date(entry.last_modified)
    return since is not None and modified is not None and modified <= since


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def _weak_equal(left: bytes, right: bytes) -> bool:
    return _opaque(left) == _opaque(right)


def http_date(seconds: float) -> bytes:
    """An IMF-fixdate for ``seconds`` since the epoch (tests and the proxy's ``Date``)."""
    return formatdate(seconds, usegmt=True).encode()
