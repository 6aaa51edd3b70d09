"""CORS: origins match exactly, preflights and actual responses byte for byte, and policies a
browser would turn into an open door are refused when written."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from keel_client.edge._cors import Cors, CorsPolicy, normalize_origin

APP = "https://app.example.com"
LOCAL = "http://localhost:5173"
VARY_PREFLIGHT = (
    b"vary",
    b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
)


def cors(**policy: Any) -> Cors:
    policy.setdefault("allow_origins", [APP, LOCAL])
    return Cors(CorsPolicy(**policy))


def preflight_request(
    origin: bytes = APP.encode(), method: bytes = b"POST", headers: bytes | None = None
) -> list[tuple[bytes, bytes]]:
    request = [(b"origin", origin), (b"access-control-request-method", method)]
    if headers is not None:
        request.append((b"access-control-request-headers", headers))
    return request


def error_locs(error: pytest.ExceptionInfo[ValidationError]) -> list[tuple[str | int, ...]]:
    return [tuple(item["loc"]) for item in error.value.errors()]


def has_allow_field(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.startswith(b"access-control-allow-") for name, _ in headers)


class TestOriginNormalisation:
    @pytest.mark.parametrize(
        ("written", "stored"),
        [
            ("https://app.example.com", "https://app.example.com"),
            ("HTTPS://App.Example.COM", "https://app.example.com"),
            ("https://app.example.com:443", "https://app.example.com"),
            ("http://app.example.com:80", "http://app.example.com"),
            ("http://app.example.com:443", "http://app.example.com:443"),
            ("https://app.example.com:8443", "https://app.example.com:8443"),
            ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
            ("http://[0:0:0:0:0:0:0:1]:8080", "http://[::1]:8080"),
            ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
        ],
    )
    def test_origins_are_stored_as_browsers_serialise_them(self, written: str, stored: str) -> None:
        assert normalize_origin(written) == stored
        assert CorsPolicy(allow_origins=[written]).allow_origins == [stored]

    @pytest.mark.parametrize(
        "origin",
        [
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://app.example.com?x=1",
            "https://app.example.com#top",
            "https://user@app.example.com",
            "https://user:pw@app.example.com",
            "https://app.example.com.",
            "https://*.example.com",
            "https://bücher.example",
            "ftp://app.example.com",
            "app.example.com",
            "//app.example.com",
            "https://",
            "https://app.example.com:0",
            "https://app.example.com:65536",
            "https://app.example.com:",
            "https://-app.example.com",
            "https://app..example.com",
            "http://127.1",
            "http://0x7f.0.0.1",
            "http://[::g]",
            "https://app.example.com ",
            "null",
            "",
        ],
    )
    def test_a_malformed_origin_is_refused_at_its_index(self, origin: str) -> None:
        with pytest.raises(ValidationError) as error:
            CorsPolicy(allow_origins=[APP, origin])
        assert error_locs(error) == [("allow_origins", 1)]


class TestPolicyValidation:
    def test_wildcard_with_credentials_is_refused(self) -> None:
        with pytest.raises(ValidationError) as error:
            CorsPolicy(allow_origins=["*"], allow_credentials=True)
        assert error_locs(error) == [("allow_credentials",)]

    def test_wildcard_beside_other_origins_is_refused(self) -> None:
        with pytest.raises(ValidationError) as error:
            CorsPolicy(allow_origins=[APP, "*"])
        assert error_locs(error) == [("allow_origins",)]

    def test_an_origin_listed_twice_after_normalisation_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="listed twice"):
            CorsPolicy(allow_origins=[APP, "HTTPS://APP.EXAMPLE.COM:443"])

    def test_no_origins_is_refused(self) -> None:
        with pytest.raises(ValidationError) as error:
            CorsPolicy(allow_origins=[])
        assert error_locs(error) == [("allow_origins",)]

    @pytest.mark.parametrize("max_age", [-1, 86401])
    def test_max_age_out_of_range_is_refused(self, max_age: int) -> None:
        with pytest.raises(ValidationError) as error:
            CorsPolicy(allow_origins=[APP], max_age_seconds=max_age)
        assert error_locs(error) == [("max_age_seconds",)]

    @pytest.mark.parametrize(
        ("field", "values"),
        [
            ("allow_methods", ["GET", "*"]),
            ("allow_methods", ["GET", "PO ST"]),
            ("allow_headers", ["content-type", "*"]),
            ("allow_headers", ["content-type", "x:y"]),
            ("expose_headers", ["etag", "bad header"]),
        ],
    )
    def test_a_bad_method_or_header_is_refused_at_its_index(
        self, field: str, values: list[str]
    ) -> None:
        with pytest.raises(ValidationError) as error:
            CorsPolicy.model_validate({"allow_origins": [APP], field: values})
        assert error_locs(error) == [(field, 1)]

    def test_standard_methods_are_upper_cased_and_others_kept(self) -> None:
        policy = CorsPolicy(allow_origins=[APP], allow_methods=["get", "delete", "PATCH", "patch"])
        assert policy.allow_methods == ["GET", "DELETE", "PATCH", "patch"]

    def test_unknown_field_is_refused(self) -> None:
        with pytest.raises(ValidationError) as error:
            CorsPolicy.model_validate({"allow_origins": [APP], "allow_origin": [APP]})
        assert error_locs(error) == [("allow_origin",)]


class TestPreflight:
    def test_is_preflight_needs_options_origin_and_request_method(self) -> None:
        engine = cors()
        assert engine.is_preflight("OPTIONS", preflight_request())
        assert not engine.is_preflight("POST", preflight_request())
        assert not engine.is_preflight("OPTIONS", [(b"origin", APP.encode())])
        assert not engine.is_preflight("OPTIONS", [(b"access-control-request-method", b"GET")])

    def test_allowed_preflight_byte_for_byte(self) -> None:
        engine = cors(
            allow_methods=["GET", "POST", "PATCH"],
            allow_headers=["Authorization", "Content-Type"],
            allow_credentials=True,
            max_age_seconds=3600,
        )
        status, headers = engine.preflight(
            preflight_request(method=b"PATCH", headers=b"content-type,authorization")
        )
        assert status == 204
        assert headers == [
            (b"access-control-allow-origin", b"https://app.example.com"),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-allow-methods", b"GET, POST, PATCH"),
            (b"access-control-allow-headers", b"authorization, content-type"),
            (b"access-control-max-age", b"3600"),
            VARY_PREFLIGHT,
        ]

    def test_default_policy_preflight_byte_for_byte(self) -> None:
        status, headers = cors().preflight(preflight_request(origin=LOCAL.encode()))
        assert (status, headers) == (
            204,
            [
                (b"access-control-allow-origin", b"http://localhost:5173"),
                (b"access-control-allow-methods", b"GET, HEAD, POST"),
                (b"access-control-max-age", b"600"),
                VARY_PREFLIGHT,
            ],
        )

    def test_wildcard_preflight_answers_star(self) -> None:
        status, headers = cors(allow_origins=["*"]).preflight(
            preflight_request(origin=b"https://anyone.example")
        )
        assert status == 204
        assert headers[0] == (b"access-control-allow-origin", b"*")

    @pytest.mark.parametrize(
        "request_headers",
        [
            preflight_request(origin=b"https://evil.example"),
            preflight_request(method=b"DELETE"),
            preflight_request(method=b"post"),
            preflight_request(headers=b"content-type, x-secret"),
            [*preflight_request(), (b"origin", b"https://evil.example")],
            [(b"access-control-request-method", b"POST")],
        ],
        ids=["origin", "method", "method-case", "header", "two-origins", "no-origin"],
    )
    def test_disallowed_preflight_is_403_without_allow_fields(
        self, request_headers: list[tuple[bytes, bytes]]
    ) -> None:
        engine = cors(allow_headers=["content-type"], allow_credentials=True)
        assert engine.preflight(request_headers) == (403, [VARY_PREFLIGHT])

    def test_requested_headers_match_case_insensitively_across_fields(self) -> None:
        engine = cors(allow_headers=["X-Request-ID", "Content-Type"])
        request = [
            *preflight_request(headers=b" X-Request-Id ,"),
            (b"access-control-request-headers", b"CONTENT-TYPE"),
        ]
        assert engine.preflight(request)[0] == 204

    def test_private_network_preflight(self) -> None:
        request = [*preflight_request(), (b"access-control-request-private-network", b"true")]
        assert cors().preflight(request) == (403, [VARY_PREFLIGHT])
        status, headers = cors(allow_private_network=True).preflight(request)
        assert status == 204
        assert (b"access-control-allow-private-network", b"true") in headers
        status, headers = cors(allow_private_network=True).preflight(preflight_request())
        assert b"access-control-allow-private-network" not in dict(headers)


class TestActualResponses:
    def test_allowed_origin_byte_for_byte(self) -> None:
        engine = cors(allow_credentials=True, expose_headers=["ETag", "RateLimit"])
        assert engine.response_headers(APP.encode()) == [
            (b"access-control-allow-origin", b"https://app.example.com"),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-expose-headers", b"etag, ratelimit"),
            (b"vary", b"Origin"),
        ]

    def test_origin_is_matched_case_insensitively_and_echoed_as_listed(self) -> None:
        assert cors().response_headers(b"HTTPS://APP.Example.com")[0] == (
            b"access-control-allow-origin",
            b"https://app.example.com",
        )

    def test_disallowed_or_missing_origin_gets_only_vary(self) -> None:
        engine = cors(allow_credentials=True)
        assert engine.response_headers(b"https://evil.example") == [(b"vary", b"Origin")]
        assert engine.response_headers(None) == [(b"vary", b"Origin")]

    def test_wildcard_answers_star_even_to_null(self) -> None:
        engine = cors(allow_origins=["*"])
        assert engine.response_headers(b"null") == [
            (b"access-control-allow-origin", b"*"),
            (b"vary", b"Origin"),
        ]

    def test_apply_strips_upstream_cors_fields_and_merges_vary(self) -> None:
        upstream = [
            (b"content-type", b"application/json"),
            (b"Access-Control-Allow-Origin", b"https://evil.example"),
            (b"access-control-allow-credentials", b"true"),
            (b"vary", b"Accept-Encoding"),
        ]
        assert cors().apply(upstream, APP.encode()) == [
            (b"content-type", b"application/json"),
            (b"vary", b"Accept-Encoding, Origin"),
            (b"access-control-allow-origin", b"https://app.example.com"),
        ]
        assert cors().apply(upstream, b"https://evil.example") == [
            (b"content-type", b"application/json"),
            (b"vary", b"Accept-Encoding, Origin"),
        ]

    @pytest.mark.parametrize("vary", [b"*", b"origin", b"Accept, Origin"])
    def test_apply_leaves_a_vary_that_already_covers_origin(self, vary: bytes) -> None:
        assert cors().apply([(b"vary", vary)], None) == [(b"vary", vary)]

    def test_apply_adds_vary_when_the_upstream_has_none(self) -> None:
        assert cors().apply([(b"etag", b'"1"')], None) == [(b"etag", b'"1"'), (b"vary", b"Origin")]


ATTACKS = [
    "https://app.example.com.evil.com",
    "https://evil.com/https://app.example.com",
    "https://evil.com?https://app.example.com",
    "http://app.example.com",
    "https://app.example.com:8443",
    "https://app.example.com:443",
    "https://app.example.com.",
    "https://app.example.com/",
    "https://sub.app.example.com",
    "https://example.com",
    "https://app.example.co",
    "https://app-example.com",
    "https://evilapp.example.com",
    " https://app.example.com",
    "https://app.example.com ",
    "https://app.example.com\x00",
    "https://app.example.com, https://evil.com",
    "https://user@app.example.com",
    "null",
    "",
]


class TestOriginAttacks:
    @pytest.mark.parametrize("origin", ATTACKS)
    def test_near_misses_are_refused_for_actual_requests(self, origin: str) -> None:
        engine = cors(allow_credentials=True)
        headers = engine.response_headers(origin.encode("latin-1"))
        assert not has_allow_field(headers)

    @pytest.mark.parametrize("origin", ATTACKS)
    def test_near_misses_are_refused_for_preflights(self, origin: str) -> None:
        engine = cors(allow_credentials=True)
        status, headers = engine.preflight(preflight_request(origin=origin.encode("latin-1")))
        assert status == 403
        assert not has_allow_field(headers)


ALLOWED = {APP.encode(), LOCAL.encode()}
origin_values = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=80).map(lambda text: text.encode("utf-8")),
    # Near misses: an allowed origin with something before or after it.
    st.tuples(st.sampled_from(sorted(ALLOWED)), st.binary(min_size=1, max_size=20)).map(
        lambda pair: pair[0] + pair[1]
    ),
    st.tuples(st.binary(min_size=1, max_size=20), st.sampled_from(sorted(ALLOWED))).map(
        lambda pair: pair[0] + pair[1]
    ),
)


@given(origin_values)
def test_an_origin_not_in_the_list_never_gets_allow_origin(origin: bytes) -> None:
    engine = cors(allow_credentials=True)
    if origin.lower() in ALLOWED:
        return
    assert not has_allow_field(engine.response_headers(origin))
    assert not has_allow_field(engine.apply([(b"vary", b"Accept")], origin))
    assert engine.preflight(preflight_request(origin=origin))[0] == 403
