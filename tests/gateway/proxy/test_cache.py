"""The gateway proxy's response cache (RFC 9111, shared): what it stores, for how long, how
it revalidates and what it forgets.

Most tests drive the engine directly with a clock of their own (the engine's ``clock``
parameter), so freshness is tested without sleeping; the last ones put it in front of a real
HTTP upstream (the SDK tests' fault server) the way the proxy does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from keel.gateway.proxy.cache import (
    CachedResponse,
    CacheLookup,
    LookupKind,
    ResponseCache,
    http_date,
    is_invalidating,
)
from keel_client.edge._caching import CachePolicy
from tests.client.http.faultserver import FaultServer

KEY = "http://orders.internal/v1/items?page=2"
START = 1_800_000_000.0
H = list[tuple[bytes, bytes]]


class Clock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_cache(clock: Clock, **policy: object) -> ResponseCache:
    return ResponseCache(CachePolicy.model_validate({"enabled": True, **policy}), clock=clock)


def headers(**fields: str) -> H:
    return [(name.replace("_", "-").encode(), value.encode()) for name, value in fields.items()]


def respond(
    cache: ResponseCache,
    clock: Clock,
    response: H,
    *,
    request: H | None = None,
    status: int = 200,
    body: bytes = b"items",
    key: str = KEY,
) -> bool:
    """The proxy's miss path: store the upstream's response if the cache may; say whether."""
    request = request or []
    response = [(b"date", http_date(clock.now)), *response]
    if not cache.store_decision("GET", key, request, status, response):
        return False
    cache.store(key, request, status, response, body)
    return True


def field(response: CachedResponse, name: bytes) -> bytes | None:
    return dict(response.headers).get(name)


# -- the policy -----------------------------------------------------------------------------------


class TestCachePolicy:
    def test_defaults_are_off_and_conservative(self) -> None:
        policy = CachePolicy()
        assert (policy.enabled, policy.heuristic, policy.cache_authorized) == (False, False, False)
        assert policy.max_body_bytes == 1024 * 1024

    def test_body_limit_above_64_mib_is_refused_naming_the_field(self) -> None:
        with pytest.raises(ValidationError) as raised:
            CachePolicy(max_body_bytes=65 * 1024 * 1024)
        assert raised.value.errors()[0]["loc"] == ("max_body_bytes",)

    def test_unknown_field_is_refused(self) -> None:
        with pytest.raises(ValidationError) as raised:
            CachePolicy.model_validate({"enabled": True, "ttl": 5})
        assert raised.value.errors()[0]["loc"] == ("ttl",)

    def test_key_headers_must_be_header_names_and_are_lower_cased(self) -> None:
        assert CachePolicy(key_headers=["Accept-Language"]).key_headers == ("accept-language",)
        with pytest.raises(ValidationError) as raised:
            CachePolicy(key_headers=["Bad Header:"])
        assert raised.value.errors()[0]["loc"][0] == "key_headers"

    def test_disabled_policy_never_stores(self, clock: Clock) -> None:
        cache = ResponseCache(CachePolicy(), clock=clock)
        assert not respond(cache, clock, headers(cache_control="max-age=60"))
        assert cache.lookup("GET", KEY, []).kind is LookupKind.MISS


# -- storing (§3) ---------------------------------------------------------------------------------


class TestStorable:
    def test_max_age_response_is_stored_and_served_fresh(self, clock: Clock) -> None:
        cache = make_cache(clock)
        assert respond(cache, clock, headers(cache_control="max-age=60"))
        lookup = cache.lookup("GET", KEY, [])
        assert lookup.kind is LookupKind.FRESH
        assert lookup.response is not None
        assert lookup.response.body == b"items"

    @pytest.mark.parametrize(
        "cache_control", ["no-store", "private", 'private="x-user"', "max-age=60, private"]
    )
    def test_no_store_and_private_responses_are_not_stored(
        self, clock: Clock, cache_control: str
    ) -> None:
        cache = make_cache(clock)
        assert not respond(cache, clock, headers(cache_control=cache_control))
        assert len(cache) == 0

    def test_set_cookie_response_is_not_stored(self, clock: Clock) -> None:
        cache = make_cache(clock)
        response = headers(cache_control="public, max-age=60", set_cookie="session=abc")
        assert not respond(cache, clock, response)

    def test_vary_star_is_not_stored(self, clock: Clock) -> None:
        cache = make_cache(clock)
        assert not respond(cache, clock, headers(cache_control="max-age=60", vary="*"))

    def test_request_no_store_prevents_storing(self, clock: Clock) -> None:
        cache = make_cache(clock)
        request = headers(cache_control="no-store")
        assert not respond(cache, clock, headers(cache_control="max-age=60"), request=request)

    @pytest.mark.parametrize("status", [206, 500, 503, 201, 303])
    def test_statuses_outside_rfc_9110_cacheable_set_are_not_stored(
        self, clock: Clock, status: int
    ) -> None:
        cache = make_cache(clock)
        assert not respond(cache, clock, headers(cache_control="max-age=60"), status=status)

    def test_404_with_max_age_is_stored(self, clock: Clock) -> None:
        cache = make_cache(clock)
        assert respond(cache, clock, headers(cache_control="max-age=60"), status=404)
        lookup = cache.lookup("GET", KEY, [])
        assert lookup.response is not None
        assert lookup.response.status == 404

    def test_response_without_freshness_or_validator_is_not_kept(self, clock: Clock) -> None:
        cache = make_cache(clock)
        assert not respond(cache, clock, [])

    def test_body_over_the_limit_is_not_stored(self, clock: Clock) -> None:
        cache = make_cache(clock, max_body_bytes=4)
        response = headers(cache_control="max-age=60", content_length="5")
        assert not respond(cache, clock, response, body=b"12345")
        # Without Content-Length the decision is yes, and store() itself refuses the body.
        assert respond(cache, clock, headers(cache_control="max-age=60"), body=b"12345")
        assert cache.lookup("GET", KEY, []).kind is LookupKind.MISS

    def test_head_and_post_responses_are_not_stored(self, clock: Clock) -> None:
        cache = make_cache(clock)
        response = headers(cache_control="max-age=60")
        assert not cache.store_decision("HEAD", KEY, [], 200, response)
        assert not cache.store_decision("POST", KEY, [], 200, response)

    def test_head_is_answered_from_the_stored_get_without_body(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=60", content_length="5"))
        lookup = cache.lookup("HEAD", KEY, [])
        assert lookup.kind is LookupKind.FRESH
        assert lookup.response is not None
        assert lookup.response.body == b""
        assert field(lookup.response, b"content-length") == b"5"

    def test_hop_by_hop_fields_are_not_stored(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=60", connection="close"))
        lookup = cache.lookup("GET", KEY, [])
        assert lookup.response is not None
        assert field(lookup.response, b"connection") is None

    def test_range_requests_bypass_the_cache(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=60"))
        assert cache.lookup("GET", KEY, headers(range="bytes=0-1")).kind is LookupKind.MISS


# -- authorised requests (§3.5) -------------------------------------------------------------------


class TestAuthorization:
    AUTHORIZED = headers(authorization="Bearer abc")

    def test_authorized_request_is_not_stored_by_default_even_if_public(self, clock: Clock) -> None:
        cache = make_cache(clock)
        response = headers(cache_control="public, max-age=60")
        assert not respond(cache, clock, response, request=self.AUTHORIZED)

    def test_authorized_request_does_not_read_the_cache_by_default(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=60"))
        assert cache.lookup("GET", KEY, self.AUTHORIZED).kind is LookupKind.MISS
        assert cache.lookup("GET", KEY, [], authorized=True).kind is LookupKind.MISS

    @pytest.mark.parametrize(
        ("cache_control", "stored"),
        [
            ("max-age=60", False),
            ("public, max-age=60", True),
            ("s-maxage=60", True),
            ("max-age=60, must-revalidate", True),
        ],
    )
    def test_cache_authorized_stores_only_what_section_3_5_allows(
        self, clock: Clock, cache_control: str, stored: bool
    ) -> None:
        cache = make_cache(clock, cache_authorized=True)
        response = headers(cache_control=cache_control)
        assert respond(cache, clock, response, request=self.AUTHORIZED) is stored

    def test_proxy_authenticated_request_counts_as_authorized_without_header(
        self, clock: Clock
    ) -> None:
        # A caller who signed in by cookie or API key carries no Authorization header; the
        # proxy says authorized=True and the per-user response stays out of the shared cache.
        cache = make_cache(clock)
        response = headers(cache_control="max-age=60")
        assert not cache.store_decision("GET", KEY, [], 200, response, authorized=True)


# -- freshness and age (§4.2) ---------------------------------------------------------------------


class TestFreshness:
    def test_stale_after_max_age(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=60", etag='"1"'))
        clock.advance(59)
        assert cache.lookup("GET", KEY, []).kind is LookupKind.FRESH
        clock.advance(2)
        assert cache.lookup("GET", KEY, []).kind is LookupKind.STALE

    def test_s_maxage_wins_over_max_age(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=600, s-maxage=10", etag='"1"'))
        clock.advance(11)
        assert cache.lookup("GET", KEY, []).kind is LookupKind.STALE

    def test_max_age_wins_over_expires(self, clock: Clock) -> None:
        cache = make_cache(clock)
        response = headers(cache_control="max-age=10", expires=http_date(START + 600).decode())
        respond(cache, clock, [*response, (b"etag", b'"1"')])
        clock.advance(11)
        assert cache.lookup("GET", KEY, []).kind is LookupKind.STALE

    def test_expires_minus_date_gives_the_lifetime(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(expires=http_date(START + 30).decode(), etag='"1"'))
        clock.advance(29)
        assert cache.lookup("GET", KEY, []).kind is LookupKind.FRESH
        clock.advance(2)
        assert cache.lookup("GET", KEY, []).kind is LookupKind.STALE

    def test_invalid_expires_means_already_expired(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(expires="0", etag='"1"'))
        assert cache.lookup("GET", KEY, []).kind is LookupKind.STALE

    def test_age_header_on_hits_counts_resident_time_and_upstream_age(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=60", age="15"))
        clock.advance(20)
        lookup = cache.lookup("GET", KEY, [])
        assert lookup.response is not None
        assert field(lookup.response, b"age") == b"35"
        clock.advance(30)  # 65 s old: stale although stored only 50 s ago
        assert cache.lookup("GET", KEY, []).kind is LookupKind.MISS  # and no validator
        assert len(cache) == 0  # so it is dropped

    def test_heuristic_freshness_is_off_by_default(self, clock: Clock) -> None:
        modified = headers(last_modified=http_date(START - 10_000).decode())
        cache = make_cache(clock)
        respond(cache, clock, modified)
        assert cache.lookup("GET", KEY, []).kind is LookupKind.STALE

    def test_heuristic_freshness_is_a_tenth_of_the_time_since_modification(
        self, clock: Clock
    ) -> None:
        modified = headers(last_modified=http_date(START - 10_000).decode())
        cache = make_cache(clock, heuristic=True)
        respond(cache, clock, modified)
        clock.advance(999)
        assert cache.lookup("GET", KEY, []).kind is LookupKind.FRESH
        clock.advance(2)
        assert cache.lookup("GET", KEY, []).kind is LookupKind.STALE


# -- request directives (§5.2.1) ------------------------------------------------------------------


class TestRequestDirectives:
    @pytest.mark.parametrize("cache_control", ["no-cache", "max-age=0"])
    def test_client_can_force_revalidation(self, clock: Clock, cache_control: str) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=60", etag='"1"'))
        lookup = cache.lookup("GET", KEY, headers(cache_control=cache_control))
        assert lookup.kind is LookupKind.STALE
        assert lookup.conditional_headers == ((b"if-none-match", b'"1"'),)

    def test_request_max_age_refuses_older_responses(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=600", etag='"1"'))
        clock.advance(30)
        assert cache.lookup("GET", KEY, headers(cache_control="max-age=40")).kind is (
            LookupKind.FRESH
        )
        assert cache.lookup("GET", KEY, headers(cache_control="max-age=20")).kind is (
            LookupKind.STALE
        )

    def test_min_fresh(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=60", etag='"1"'))
        clock.advance(30)
        lookup = cache.lookup("GET", KEY, headers(cache_control="min-fresh=40"))
        assert lookup.kind is LookupKind.STALE

    def test_max_stale_serves_stale_unless_response_must_revalidate(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=10", etag='"1"'))
        respond(
            cache,
            clock,
            headers(cache_control="max-age=10, must-revalidate", etag='"2"'),
            key=KEY + "&strict",
        )
        clock.advance(20)
        request = headers(cache_control="max-stale=30")
        assert cache.lookup("GET", KEY, request).kind is LookupKind.FRESH
        assert cache.lookup("GET", KEY + "&strict", request).kind is LookupKind.STALE

    def test_only_if_cached_answers_504_when_absent_or_stale(self, clock: Clock) -> None:
        cache = make_cache(clock)
        request = headers(cache_control="only-if-cached")
        assert cache.lookup("GET", KEY, request).kind is LookupKind.ONLY_IF_CACHED_MISS
        respond(cache, clock, headers(cache_control="max-age=10", etag='"1"'))
        assert cache.lookup("GET", KEY, request).kind is LookupKind.FRESH
        clock.advance(11)
        assert cache.lookup("GET", KEY, request).kind is LookupKind.ONLY_IF_CACHED_MISS

    def test_client_validator_matching_a_fresh_entry_gets_not_modified(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=60", etag='"1"'))
        assert cache.lookup("GET", KEY, headers(if_none_match='W/"1"')).not_modified
        assert not cache.lookup("GET", KEY, headers(if_none_match='"2"')).not_modified


# -- Vary (§4.1) ----------------------------------------------------------------------------------


class TestVary:
    def test_vary_keeps_one_variant_per_selecting_value(self, clock: Clock) -> None:
        cache = make_cache(clock)
        english, german = headers(accept_language="en"), headers(accept_language="de")
        vary = headers(cache_control="max-age=60", vary="Accept-Language")
        respond(cache, clock, vary, request=english, body=b"hello")
        assert cache.lookup("GET", KEY, german).kind is LookupKind.MISS
        respond(cache, clock, vary, request=german, body=b"hallo")
        for request, body in ((english, b"hello"), (german, b"hallo")):
            lookup = cache.lookup("GET", KEY, request)
            assert lookup.response is not None
            assert lookup.response.body == body
        assert len(cache) == 2

    def test_vary_compares_values_ignoring_whitespace_and_name_case(self, clock: Clock) -> None:
        cache = make_cache(clock)
        vary = headers(cache_control="max-age=60", vary="accept")
        respond(cache, clock, vary, request=[(b"Accept", b"text/html ")])
        assert cache.lookup("GET", KEY, [(b"accept", b"text/html")]).kind is LookupKind.FRESH

    def test_policy_key_headers_split_the_key_without_vary(self, clock: Clock) -> None:
        cache = make_cache(clock, key_headers=["X-Tenant"])
        response = headers(cache_control="max-age=60")
        respond(cache, clock, response, request=headers(x_tenant="a"), body=b"a")
        assert cache.lookup("GET", KEY, headers(x_tenant="b")).kind is LookupKind.MISS
        lookup = cache.lookup("GET", KEY, headers(x_tenant="a"))
        assert lookup.response is not None
        assert lookup.response.body == b"a"

    def test_a_new_response_replaces_the_variant_it_selects(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=60"), body=b"old")
        respond(cache, clock, headers(cache_control="max-age=60"), body=b"new")
        lookup = cache.lookup("GET", KEY, [])
        assert len(cache) == 1
        assert lookup.response is not None
        assert lookup.response.body == b"new"


# -- revalidation (§4.3) --------------------------------------------------------------------------


class TestRevalidation:
    def test_stale_entry_gives_its_validators_replacing_the_clients(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(
            cache,
            clock,
            headers(cache_control="max-age=10", etag='"7"', last_modified=http_date(0).decode()),
        )
        clock.advance(11)
        lookup = cache.lookup("GET", KEY, [])
        assert lookup.kind is LookupKind.STALE
        forwarded = lookup.upstream_headers([(b"if-none-match", b'"x"'), (b"accept", b"*/*")])
        assert forwarded == [(b"accept", b"*/*"), (b"if-none-match", b'"7"')]

    def test_last_modified_is_the_validator_without_etag(self, clock: Clock) -> None:
        cache = make_cache(clock)
        stamp = http_date(START - 100)
        respond(cache, clock, headers(cache_control="no-cache", last_modified=stamp.decode()))
        lookup = cache.lookup("GET", KEY, [])
        assert lookup.conditional_headers == ((b"if-modified-since", stamp),)

    def test_304_refreshes_the_stored_headers_and_freshness(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=10", etag='"7"', x_version="1"))
        clock.advance(11)
        lookup = cache.lookup("GET", KEY, [])
        not_modified = headers(cache_control="max-age=100", etag='"7"', x_version="2")
        served = cache.revalidated(KEY, lookup, not_modified)
        assert served is not None
        assert served.status == 200
        assert served.body == b"items"
        assert field(served, b"x-version") == b"2"
        assert field(served, b"age") == b"0"
        clock.advance(50)
        assert cache.lookup("GET", KEY, []).kind is LookupKind.FRESH  # the 304's max-age=100

    def test_304_for_another_etag_is_not_merged(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="no-cache", etag='"7"'))
        lookup = cache.lookup("GET", KEY, [])
        assert cache.revalidated(KEY, lookup, headers(etag='"8"')) is None
        assert len(cache) == 0

    def test_no_cache_response_is_always_revalidated(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="no-cache, max-age=600", etag='"1"'))
        assert cache.lookup("GET", KEY, []).kind is LookupKind.STALE


# -- bounds and invalidation ----------------------------------------------------------------------


class TestBoundsAndInvalidation:
    def test_least_recently_used_entry_goes_past_max_entries(self, clock: Clock) -> None:
        cache = make_cache(clock, max_entries=2)
        fresh = headers(cache_control="max-age=60")
        for name in ("a", "b"):
            respond(cache, clock, fresh, key=name)
        cache.lookup("GET", "a", [])  # a is now more recent than b
        respond(cache, clock, fresh, key="c")
        kinds = {name: cache.lookup("GET", name, []).kind for name in ("a", "b", "c")}
        assert kinds == {"a": LookupKind.FRESH, "b": LookupKind.MISS, "c": LookupKind.FRESH}

    def test_total_bytes_are_bounded(self, clock: Clock) -> None:
        policy = CachePolicy(enabled=True)
        cache = ResponseCache(policy, max_total_bytes=5_000, clock=clock)
        for index in range(10):
            respond(
                cache, clock, headers(cache_control="max-age=60"), key=str(index), body=b"x" * 1_000
            )
        assert 0 < len(cache) < 10
        assert cache.total_bytes <= 5_000
        assert cache.lookup("GET", "9", []).kind is LookupKind.FRESH
        assert cache.lookup("GET", "0", []).kind is LookupKind.MISS

    def test_invalidate_drops_every_variant(self, clock: Clock) -> None:
        cache = make_cache(clock)
        vary = headers(cache_control="max-age=60", vary="accept")
        respond(cache, clock, vary, request=headers(accept="a"))
        respond(cache, clock, vary, request=headers(accept="b"))
        cache.invalidate(KEY)
        assert len(cache) == 0
        assert cache.total_bytes == 0

    @pytest.mark.parametrize(
        ("method", "status", "invalidates"),
        [
            ("POST", 201, True),
            ("DELETE", 204, True),
            ("PUT", 303, True),
            ("POST", 500, False),
            ("POST", 404, False),
            ("GET", 200, False),
        ],
    )
    def test_unsafe_methods_success_invalidates(
        self, method: str, status: int, invalidates: bool
    ) -> None:
        assert is_invalidating(method, status) is invalidates

    def test_unsafe_methods_never_hit(self, clock: Clock) -> None:
        cache = make_cache(clock)
        respond(cache, clock, headers(cache_control="max-age=60"))
        assert cache.lookup("POST", KEY, []).kind is LookupKind.MISS


# -- in front of a real upstream ------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultServer]:
    server = FaultServer().start()
    yield server
    server.stop()


def fetch(cache: ResponseCache, http: httpx.Client, method: str, url: str) -> tuple[int, bytes]:
    """What the proxy does around one exchange, with httpx standing in for its upstream call."""
    request: H = []
    lookup: CacheLookup = cache.lookup(method, url, request)
    if lookup.kind is LookupKind.FRESH and lookup.response is not None:
        return lookup.response.status, lookup.response.body
    if lookup.kind is LookupKind.ONLY_IF_CACHED_MISS:
        return 504, b""
    requested_at = time.time()
    answer = http.request(method, url, headers=lookup.upstream_headers(request))
    response = [(name, value) for name, value in answer.headers.raw]
    if lookup.kind is LookupKind.STALE and answer.status_code == 304:
        served = cache.revalidated(url, lookup, response)
        assert served is not None
        return served.status, served.body
    if cache.store_decision(method, url, request, answer.status_code, response):
        cache.store(
            url, request, answer.status_code, response, answer.content, requested_at=requested_at
        )
    if is_invalidating(method, answer.status_code):
        cache.invalidate(url)
    return answer.status_code, answer.content


class TestAgainstUpstream:
    def test_etag_revalidation_turns_the_upstreams_304_into_the_stored_body(
        self, upstream: FaultServer
    ) -> None:
        cache = ResponseCache(CachePolicy(enabled=True))
        url = f"{upstream.url}/etag/gateway-cache-etag"
        with httpx.Client() as http:
            first = fetch(cache, http, "GET", url)
            second = fetch(cache, http, "GET", url)
        assert first == second == (200, b'{"version":1}')
        assert upstream.cache_answers["gateway-cache-etag"] == {200: 1, 304: 1}

    def test_last_modified_revalidation(self, upstream: FaultServer) -> None:
        cache = ResponseCache(CachePolicy(enabled=True))
        url = f"{upstream.url}/last-modified/gateway-cache-lm"
        with httpx.Client() as http:
            bodies = [fetch(cache, http, "GET", url) for _ in range(3)]
        assert bodies == [(200, b'{"version":1}')] * 3
        assert upstream.cache_answers["gateway-cache-lm"] == {200: 1, 304: 2}

    def test_only_a_successful_unsafe_request_to_the_uri_invalidates_it(
        self, upstream: FaultServer
    ) -> None:
        cache = ResponseCache(CachePolicy(enabled=True))
        url = f"{upstream.url}/etag/gateway-cache-post"
        with httpx.Client() as http:
            fetch(cache, http, "GET", url)
            assert len(cache) == 1
            assert fetch(cache, http, "POST", f"{upstream.url}/ok")[0] == 200
            assert len(cache) == 1  # another URI
            assert fetch(cache, http, "POST", url)[0] == 405
            assert len(cache) == 1  # refused by the upstream: nothing changed there
