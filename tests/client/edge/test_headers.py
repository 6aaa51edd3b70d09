"""Security-header profiles: the OWASP lists byte for byte, what each profile adds, what is
stripped from an upstream's response, and the rules a policy must pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from keel_client.edge._headers import (
    OWASP_HEADERS_ADD,
    OWASP_HEADERS_REMOVE,
    OWASP_LAST_UPDATE_UTC,
    HeaderRules,
    SecurityHeaders,
)

DATA = Path(__file__).parent / "data"
OWASP_ADD = json.loads((DATA / "owasp_headers_add.json").read_text())
OWASP_REMOVE = json.loads((DATA / "owasp_headers_remove.json").read_text())

API_HEADERS = [
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"referrer-policy", b"no-referrer"),
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"deny"),
]


def owasp_add_list() -> list[tuple[bytes, bytes]]:
    return [
        (entry["name"].lower().encode(), entry["value"].encode()) for entry in OWASP_ADD["headers"]
    ]


def apply(headers: list[tuple[bytes, bytes]], **rules: Any) -> list[tuple[bytes, bytes]]:
    return SecurityHeaders(HeaderRules(**rules)).apply(headers)


def error_locs(error: pytest.ExceptionInfo[ValidationError]) -> list[tuple[str | int, ...]]:
    return [tuple(item["loc"]) for item in error.value.errors()]


class TestOwaspData:
    def test_the_constants_are_the_owasp_files(self) -> None:
        assert [{"name": n, "value": v} for n, v in OWASP_HEADERS_ADD] == OWASP_ADD["headers"]
        assert list(OWASP_HEADERS_REMOVE) == OWASP_REMOVE["headers"]
        assert OWASP_ADD["last_update_utc"] == OWASP_REMOVE["last_update_utc"]
        assert OWASP_ADD["last_update_utc"] == OWASP_LAST_UPDATE_UTC

    def test_web_profile_is_the_owasp_add_list_byte_for_byte(self) -> None:
        assert apply([], profile="web") == owasp_add_list()

    def test_every_owasp_removal_name_is_stripped_from_every_profile(self) -> None:
        upstream = [(name.encode(), b"leak") for name in OWASP_REMOVE["headers"]]
        for profile in ("api", "web", "none"):
            result = apply([*upstream, (b"content-type", b"application/json")], profile=profile)
            assert result[0] == (b"content-type", b"application/json")
            assert not {name.lower() for name, _ in result} & {
                name.lower().encode() for name in OWASP_REMOVE["headers"]
            }


class TestProfiles:
    def test_api_profile_byte_for_byte(self) -> None:
        assert apply([(b"content-type", b"application/json")]) == [
            (b"content-type", b"application/json"),
            *API_HEADERS,
        ]

    def test_api_profile_values_come_from_owasp_where_it_has_one(self) -> None:
        owasp = dict(owasp_add_list())
        for name in (
            b"cross-origin-resource-policy",
            b"referrer-policy",
            b"strict-transport-security",
            b"x-content-type-options",
            b"x-frame-options",
        ):
            assert dict(API_HEADERS)[name] == owasp[name]

    def test_api_profile_never_clears_the_callers_site_data(self) -> None:
        assert b"clear-site-data" not in dict(apply([]))

    def test_none_profile_adds_nothing_but_still_removes(self) -> None:
        upstream = [(b"server", b"uvicorn"), (b"x-powered-by", b"PHP"), (b"etag", b'"1"')]
        assert apply(upstream, profile="none") == [(b"etag", b'"1"')]

    def test_upstream_security_headers_are_replaced_not_duplicated(self) -> None:
        upstream = [
            (b"content-security-policy", b"default-src *"),
            (b"cache-control", b"public, max-age=60"),
            (b"etag", b'"1"'),
        ]
        result = apply(upstream)
        assert result == [(b"etag", b'"1"'), *API_HEADERS]

    def test_hsts_off_leaves_it_out_and_lets_the_upstreams_through(self) -> None:
        result = apply([(b"strict-transport-security", b"max-age=60")], hsts=False)
        assert result[0] == (b"strict-transport-security", b"max-age=60")
        assert [name for name, _ in result].count(b"strict-transport-security") == 1
        assert apply([], hsts=False) == [
            h for h in API_HEADERS if h[0] != b"strict-transport-security"
        ]


class TestRemoval:
    def test_removal_is_case_insensitive_and_takes_every_duplicate(self) -> None:
        upstream = [
            (b"Server", b"a"),
            (b"SERVER", b"b"),
            (b"server", b"c"),
            (b"X-Powered-By", b"Express"),
            (b"x-powered-by", b"PHP"),
            (b"x-aspnet-version", b"4.0"),
            (b"content-type", b"text/html"),
        ]
        assert apply(upstream, profile="none") == [(b"content-type", b"text/html")]

    def test_deprecated_x_xss_protection_is_removed_and_never_sent(self) -> None:
        for profile in ("api", "web", "none"):
            result = apply([(b"X-XSS-Protection", b"1; mode=block")], profile=profile)
            assert all(name.lower() != b"x-xss-protection" for name, _ in result)

    def test_extra_remove_names_are_stripped_case_insensitively(self) -> None:
        upstream = [(b"X-Internal-Trace", b"1"), (b"x-internal-trace", b"2"), (b"etag", b"x")]
        assert apply(upstream, profile="none", remove=["X-Internal-Trace"]) == [(b"etag", b"x")]

    def test_remove_also_drops_a_profile_header(self) -> None:
        result = apply([], profile="web", remove=["Clear-Site-Data"])
        assert result == [h for h in owasp_add_list() if h[0] != b"clear-site-data"]

    def test_apply_leaves_its_input_alone(self) -> None:
        upstream = [(b"server", b"x")]
        apply(upstream)
        assert upstream == [(b"server", b"x")]


class TestSet:
    def test_set_overrides_the_profile_in_place_and_appends_new_names(self) -> None:
        result = apply(
            [(b"content-security-policy", b"upstream")],
            set={"Content-Security-Policy": "default-src 'self'", "X-Team": "payments"},
        )
        expected = [
            (name, b"default-src 'self'" if name == b"content-security-policy" else value)
            for name, value in API_HEADERS
        ]
        assert result == [*expected, (b"x-team", b"payments")]

    def test_set_can_bring_back_a_header_on_the_removal_list(self) -> None:
        result = apply([(b"server", b"uvicorn")], profile="none", set={"Server": "keel"})
        assert result == [(b"server", b"keel")]

    def test_names_are_stored_lowercase(self) -> None:
        rules = HeaderRules(set={"X-Team": "a"}, remove=["X-Debug"])
        assert rules.set == {"x-team": "a"}
        assert rules.remove == ["x-debug"]


class TestValidation:
    @pytest.mark.parametrize("name", ["X Team", "X-Team:", "", "x" * 65, "é"])
    def test_a_name_that_is_not_a_token_is_refused_at_its_key(self, name: str) -> None:
        with pytest.raises(ValidationError) as error:
            HeaderRules(set={name: "v"})
        assert error_locs(error) == [("set", name, "[key]")]

    @pytest.mark.parametrize(
        "value", ["a\r\nSet-Cookie: x=1", "a\nb", "a\x00b", "a\x7fb", " padded", "€", "x" * 8193]
    )
    def test_a_bad_value_is_refused_at_its_name(self, value: str) -> None:
        with pytest.raises(ValidationError) as error:
            HeaderRules(set={"X-Team": value})
        assert error_locs(error) == [("set", "X-Team")]

    def test_a_value_of_8_kib_is_accepted(self) -> None:
        assert HeaderRules(set={"x-a": "v" * 8192}).set["x-a"] == "v" * 8192

    @pytest.mark.parametrize(
        "name",
        [
            "X-XSS-Protection",
            "Content-Length",
            "Transfer-Encoding",
            "Set-Cookie",
            "Access-Control-Allow-Origin",
        ],
    )
    def test_set_refuses_names_it_must_not_own(self, name: str) -> None:
        with pytest.raises(ValidationError) as error:
            HeaderRules(set={name: "x"})
        assert error_locs(error) == [("set", name, "[key]")]

    def test_remove_refuses_framing_headers_at_their_index(self) -> None:
        with pytest.raises(ValidationError) as error:
            HeaderRules(remove=["x-debug", "Content-Length"])
        assert error_locs(error) == [("remove", 1)]

    def test_a_name_both_set_and_removed_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="both set and removed"):
            HeaderRules(set={"X-A": "1"}, remove=["x-a"])

    def test_a_name_set_twice_in_different_case_is_refused(self) -> None:
        with pytest.raises(ValidationError) as error:
            HeaderRules(set={"X-A": "1", "x-a": "2"})
        assert error_locs(error) == [("set",)]

    def test_unknown_profile_and_unknown_field_are_refused(self) -> None:
        with pytest.raises(ValidationError) as error:
            HeaderRules.model_validate({"profile": "strict", "hstss": False})
        assert sorted(error_locs(error)) == [("hstss",), ("profile",)]

    def test_rules_are_frozen(self) -> None:
        rules = HeaderRules()
        with pytest.raises(ValidationError):
            rules.hsts = False  # type: ignore[misc]
