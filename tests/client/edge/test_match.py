"""Route matching: which route answers, the same for the gateway and a service's middleware."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from keel_client.edge._match import (
    MethodMismatch,
    RouteMatch,
    RouteTable,
    is_normalized,
    normalize_host,
)
from keel_client.edge._model import EdgePolicy, Route


def route(name: str, path: str = "/", **fields: object) -> Route:
    return Route.model_validate({"name": name, "path": path, **fields})


def matched(
    table: RouteTable, path: str, method: str = "GET", host: str | None = "api.example.com"
) -> str | None:
    found = table.match(host, path, method)
    return found.route.name if isinstance(found, RouteMatch) else None


def test_a_prefix_takes_its_segment_and_below_but_not_a_longer_name() -> None:
    table = RouteTable([route("orders", "/orders")])
    assert matched(table, "/orders") == "orders"
    assert matched(table, "/orders/7/items") == "orders"
    assert matched(table, "/orders-archive") is None
    assert matched(table, "/") is None


def test_the_longer_prefix_wins_whatever_the_order() -> None:
    for routes in (
        [route("all", "/"), route("v1", "/api/v1")],
        [route("v1", "/api/v1"), route("all", "/")],
    ):
        table = RouteTable(routes)
        assert matched(table, "/api/v1/x") == "v1"
        assert matched(table, "/api/v2/x") == "all"


def test_exact_beats_pattern_beats_prefix() -> None:
    table = RouteTable(
        [
            route("prefix", "/orders"),
            route("pattern", "/orders/{id}", match="pattern"),
            route("exact", "/orders/export", match="exact"),
        ]
    )
    assert matched(table, "/orders/export") == "exact"
    assert matched(table, "/orders/42") == "pattern"
    assert matched(table, "/orders/42/items") == "prefix"


def test_between_patterns_the_first_literal_segment_decides() -> None:
    table = RouteTable(
        [
            route("by-id", "/{tenant}/orders/{id}", match="pattern"),
            route("literal", "/acme/{kind}/{id}", match="pattern"),
        ]
    )
    assert matched(table, "/acme/orders/1") == "literal"
    assert matched(table, "/other/orders/1") == "by-id"


def test_pattern_parameters_and_a_trailing_path_parameter() -> None:
    table = RouteTable([route("files", "/files/{bucket}/{key:path}", match="pattern")])
    found = table.match(None, "/files/b1/a/b/c.txt", "GET")
    assert isinstance(found, RouteMatch)
    assert found.params == {"bucket": "b1", "key": "a/b/c.txt"}
    assert table.match(None, "/files/b1", "GET") is None


def test_exact_host_beats_wildcard_beats_any_host() -> None:
    table = RouteTable(
        [
            route("any", "/"),
            route("wild", "/", hosts=["*.example.com"]),
            route("deeper", "/", hosts=["*.eu.example.com"]),
            route("exact", "/", hosts=["api.example.com"]),
        ]
    )
    assert matched(table, "/x", host="api.example.com") == "exact"
    assert matched(table, "/x", host="API.Example.com:8443") == "exact"
    assert matched(table, "/x", host="shop.example.com") == "wild"
    assert matched(table, "/x", host="shop.eu.example.com") == "deeper"
    assert matched(table, "/x", host="example.com") == "any"  # *.example.com needs a label
    assert matched(table, "/x", host=None) == "any"


def test_a_service_view_ignores_hosts() -> None:
    table = RouteTable([route("orders", "/orders", hosts=["api.example.com"])], ignore_hosts=True)
    assert matched(table, "/orders", host="orders.internal:8000") == "orders"


def test_methods_pass_over_a_route_and_answer_405_when_no_route_takes_the_method() -> None:
    table = RouteTable(
        [
            route("read", "/orders", methods=["GET", "HEAD"]),
            route("write", "/orders", methods=["post"]),
        ]
    )
    assert matched(table, "/orders", "GET") == "read"
    assert matched(table, "/orders", "POST") == "write"
    found = table.match(None, "/orders", "DELETE")
    assert found == MethodMismatch(("GET", "HEAD", "POST"))


@pytest.mark.parametrize(
    "path", ["/public/../admin", "/public/./x", "//admin", "/a//b", "/..", "relative"]
)
def test_paths_with_dot_or_empty_segments_match_nothing(path: str) -> None:
    assert not is_normalized(path)
    assert RouteTable([route("all", "/")]).match(None, path, "GET") is None


def test_strip_prefix_and_rewrite_keep_the_raw_escapes() -> None:
    table = RouteTable(
        [
            route("strip", "/orders", strip_prefix=True),
            route("rewrite", "/legacy", rewrite="/v2/api"),
            route("kept", "/files"),
        ]
    )
    strip = table.match(None, "/orders/a b", "GET", raw_path="/orders/a%20b")
    assert isinstance(strip, RouteMatch)
    assert strip.upstream_path == "/a%20b"
    root = table.match(None, "/orders", "GET", raw_path="/orders")
    assert isinstance(root, RouteMatch)
    assert root.upstream_path == "/"
    rewrite = table.match(None, "/legacy/x", "GET", raw_path="/legacy/x")
    assert isinstance(rewrite, RouteMatch)
    assert rewrite.upstream_path == "/v2/api/x"
    kept = table.match(None, "/files/a/b", "GET", raw_path="/files/a%2Fb")
    assert isinstance(kept, RouteMatch)
    assert kept.upstream_path == "/files/a%2Fb"


def test_normalize_host() -> None:
    assert normalize_host("Example.COM:443") == "example.com"
    assert normalize_host("example.com.") == "example.com"
    assert normalize_host("[::1]:8080") == "[::1]"
    assert normalize_host(None) == ""


def pool(name: str) -> dict[str, object]:
    return {"name": name, "targets": [{"url": "http://127.0.0.1:9000"}]}


def test_routes_that_tie_are_refused_with_the_later_one_named() -> None:
    document = {
        "upstreams": [pool("a")],
        "routes": [
            {"name": "one", "path": "/orders/{id}", "match": "pattern", "upstream": "a"},
            {
                "name": "two",
                "path": "/orders/{order}",
                "match": "pattern",
                "upstream": "a",
                "methods": ["GET"],
            },
        ],
    }
    with pytest.raises(ValidationError) as refused:
        EdgePolicy.model_validate(document)
    assert "routes.1.path" in str(refused.value)
    assert "'two'" in str(refused.value)
    assert "'one'" in str(refused.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"path": "/a"}, {"path": "/a", "methods": ["POST"]} | {"hosts": ["x.example.com"]}),
        ({"path": "/a", "methods": ["GET"]}, {"path": "/a", "methods": ["POST"]}),
        ({"path": "/a", "hosts": ["x.example.com"]}, {"path": "/a", "hosts": ["y.example.com"]}),
        ({"path": "/a", "match": "exact"}, {"path": "/a"}),
        ({"path": "/a/{x}", "match": "pattern"}, {"path": "/{y}/b", "match": "pattern"}),
    ],
)
def test_routes_where_one_is_more_specific_are_accepted(
    first: dict[str, object], second: dict[str, object]
) -> None:
    EdgePolicy.model_validate(
        {
            "upstreams": [pool("a")],
            "routes": [
                {"name": "one", "upstream": "a", **first},
                {"name": "two", "upstream": "a", **second},
            ],
        }
    )


def test_cross_reference_errors_are_located() -> None:
    from keel_client.edge._model import cross_reference_errors

    policy = EdgePolicy.model_validate(
        {
            "upstreams": [pool("a"), pool("a")],
            "routes": [
                {"name": "r", "path": "/r", "upstream": "missing"},
                {
                    "name": "r",
                    "path": "/s",
                    "upstream": "a",
                    "versions": [{"upstream": "nope", "weight": 5}],
                },
            ],
        },
        context={"cross_checks": False},
    )
    locations = {loc for loc, _ in cross_reference_errors(policy)}
    assert locations == {
        ("upstreams", 1, "name"),
        ("routes", 0, "upstream"),
        ("routes", 1, "name"),
        ("routes", 1, "versions", 0, "upstream"),
    }
