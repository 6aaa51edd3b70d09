"""``keel gateway export nginx`` and :func:`render_nginx`: a policy using every feature renders
to a configuration ``nginx -t`` accepts, each route becomes the locations nginx matches as
Keel does, Keel decides only where there is something to decide, and what nginx cannot
express is named rather than dropped in silence."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keel.gateway.nginx import render_nginx
from keel_client.edge._model import EdgePolicy
from tests.support.keel_cli import Deployment, initialised_deployment

NGINX = os.environ.get("KEEL_TEST_NGINX", "/usr/sbin/nginx")
KEEL_URL = "http://127.0.0.1:8000"

EVERY_FEATURE: dict[str, Any] = {
    "upstreams": [
        {
            "name": "orders",
            "targets": [
                {"url": "http://127.0.0.1:9001/v2", "weight": 3},
                {"url": "http://127.0.0.1:9002/v2"},
            ],
            "balance": "least_inflight",
            "health": {"path": "/health"},
            "passive": {"consecutive_failures": 4, "ejection_seconds": 12.5},
        },
        {
            "name": "users",
            "targets": [{"url": "http://127.0.0.1:9003"}],
            "balance": "consistent_hash",
            "hash_on": "header:X-User-Id",
        },
        {
            "name": "sessions",
            "targets": [{"url": "https://[::1]:9443"}],
            "balance": "consistent_hash",
            "hash_on": "principal",
        },
    ],
    "routes": [
        {
            "name": "orders",
            "path": "/orders",
            "upstream": "orders",
            "strip_prefix": True,
            "rewrite": "/api",
            "methods": ["GET", "POST"],
            "auth": {"mode": "jwt", "audience": "shop", "roles": ["clerk"]},
            "rate_limits": [{"name": "per-ip", "limit": 10, "period_seconds": 60}],
            "cors": {"allow_origins": ["https://app.example"], "allow_credentials": True},
            "headers": {"profile": "web", "set": {"X-Price": '$5 "net"'}},
            "request_headers": {"set": {"X-From": "edge"}, "remove": ["cookie"]},
            "response_headers": {"set": {"X-Served-By": "nginx"}, "remove": ["x-internal"]},
            "ssrf": [
                {"location": "query", "name": "callback"},
                {"location": "json", "name": "hooks.*.url"},
            ],
            "max_body_bytes": 2048,
            "timeouts": {"connect_seconds": 0.5, "read_seconds": 30, "write_seconds": 15},
            "retries": {"attempts": 1, "on": ["connect_error", "timeout", "503"]},
            "cache": {"enabled": True},
            "versions": [{"upstream": "users", "weight": 5}],
        },
        {
            "name": "items",
            "path": "/orders/{id}/items",
            "match": "pattern",
            "upstream": "orders",
            "hosts": ["shop.example", "*.shop.example"],
        },
        {
            "name": "item",
            "path": "/orders/{id}/{rest:path}",
            "match": "pattern",
            "upstream": "users",
        },
        {"name": "export", "path": "/orders/{id}/export", "match": "pattern", "upstream": "users"},
        {
            "name": "health",
            "path": "/health",
            "match": "exact",
            "upstream": "users",
            "auth": {"mode": "none"},
            "headers": {"profile": "none"},
            "max_body_bytes": 0,
            "retries": {"attempts": 0},
        },
        {"name": "root", "path": "/", "upstream": "sessions", "hosts": ["shop.example"]},
        {"name": "service-only", "path": "/internal"},
    ],
}


def rendered(document: dict[str, Any] = EVERY_FEATURE, listen: str = "127.0.0.1:18080") -> str:
    return render_nginx(EdgePolicy.model_validate(document), keel_url=KEEL_URL, listen=listen)


def location_block(text: str, selector: str, server_name: str = "_") -> str:
    """The body of ``location <selector> {…}`` in the server named ``server_name``."""
    server = text[text.index(f"server_name {server_name};") :]
    start = server.index(f"location {selector} {{")
    return server[start : server.index("\n    }", start)]


def nginx_test(directory: Path, config_text: str) -> subprocess.CompletedProcess[str]:
    if not os.access(NGINX, os.X_OK):
        message = f"nginx not found at {NGINX}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true requires it", pytrace=False)
        pytest.skip(f"{message}; install Debian's nginx or set KEEL_TEST_NGINX")
    (directory / "logs").mkdir(exist_ok=True)
    (directory / "keel.conf").write_text(config_text)
    temp = " ".join(
        f"{kind}_temp_path {directory}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (directory / "nginx.conf").write_text(
        f"events {{}}\nhttp {{ {temp} include {directory}/keel.conf; }}\n"
    )
    return subprocess.run(
        [
            NGINX,
            "-t",
            "-p",
            str(directory),
            "-e",
            str(directory / "logs" / "error.log"),
            "-c",
            str(directory / "nginx.conf"),
            "-g",
            f"pid {directory}/nginx.pid;",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class TestNginxAccepts:
    def test_a_policy_using_every_feature(self, tmp_path: Path) -> None:
        checked = nginx_test(tmp_path, rendered())
        assert checked.returncode == 0, checked.stderr
        assert "test is successful" in checked.stderr
        assert "[warn]" not in checked.stderr

    def test_the_empty_policy(self, tmp_path: Path) -> None:
        text = rendered({"upstreams": [], "routes": []})
        checked = nginx_test(tmp_path, text)
        assert checked.returncode == 0, checked.stderr
        assert "return 404" in text

    def test_routes_sharing_a_location_write_it_once(self, tmp_path: Path) -> None:
        pools = [{"name": name, "targets": [{"url": "http://127.0.0.1:9001"}]} for name in "ab"]
        text = rendered(
            {
                "upstreams": pools,
                "routes": [
                    {"name": "cart", "path": "/cart", "upstream": "a"},
                    {"name": "cart-exact", "path": "/cart", "match": "exact", "upstream": "b"},
                    {"name": "read", "path": "/m", "upstream": "a", "methods": ["GET"]},
                    {"name": "write", "path": "/m", "upstream": "b", "methods": ["POST"]},
                ],
            }
        )
        checked = nginx_test(tmp_path, text)
        assert checked.returncode == 0, checked.stderr
        assert "proxy_pass http://keel_b;" in location_block(text, "= /cart")
        assert "location = /cart is the exact route cart-exact's, as in Keel" in text
        assert "location /m/ is route read's; not carried over: routing by method" in text


class TestUpstreams:
    def test_pools_keep_weights_balancing_and_passive_checks(self) -> None:
        text = rendered()
        orders = text[text.index("upstream keel_orders {") :]
        orders = orders[: orders.index("}")]
        assert "least_conn;" in orders
        assert "server 127.0.0.1:9001 weight=3 max_fails=4 fail_timeout=13s" in orders
        assert "# not carried over: active health checks" in orders
        assert "hash $http_x_user_id consistent;" in text
        assert "hash $keel_subject consistent;" in text
        assert "server [::1]:9443 weight=1" in text

    def test_the_base_path_and_rewrite_reach_proxy_pass(self) -> None:
        text = rendered()
        assert "proxy_pass http://keel_orders/v2/api/;" in location_block(text, "/orders/")
        assert "proxy_pass http://keel_orders/v2/api;" in location_block(text, "= /orders")
        assert "proxy_pass https://keel_sessions;" in location_block(text, "/", "shop.example")


class TestLocations:
    def test_prefix_exact_and_pattern_routes_take_their_nginx_forms(self) -> None:
        text = rendered()
        assert "location /orders/ {" in text
        assert "location = /orders {" in text
        assert "location = /health {" in text
        assert "location = /health/ {" in text
        assert 'location ~ "^/orders/[^/]+/items$" {' in text
        assert 'location ~ "^/orders/[^/]+/.+$" {' in text

    def test_patterns_are_written_most_specific_first(self) -> None:
        text = rendered()
        export = text.index('location ~ "^/orders/[^/]+/export$"')
        rest = text.index('location ~ "^/orders/[^/]+/.+$"')
        assert export < rest

    def test_hosts_get_their_server_with_the_any_host_routes(self) -> None:
        text = rendered()
        assert "server_name shop.example *.shop.example;" not in text  # different route sets
        assert "server_name shop.example;" in text
        assert "server_name *.shop.example;" in text
        assert "listen 127.0.0.1:18080 default_server;" in text
        shop = text[text.index("server_name shop.example;") :]
        shop = shop[: shop.index("\nserver {") if "\nserver {" in shop else len(shop)]
        assert "# route orders" in shop
        assert "# route root" in shop
        assert "location /internal" not in text
        assert "# route service-only: no upstream (enforced by services only), left out" in text


class TestDecisions:
    def test_a_route_with_something_to_decide_asks_keel_and_maps_refusals_back(self) -> None:
        orders = location_block(rendered(), "/orders/")
        assert "auth_request /_keel_authz;" in orders
        assert "error_page 403 = @keel_refused;" in orders
        assert "proxy_set_header Keel-Identity $keel_identity;" in orders
        assert "add_header RateLimit $keel_ratelimit always;" in orders
        assert "add_header Access-Control-Allow-Origin $keel_cors_origin always;" in orders
        assert "proxy_hide_header access-control-allow-origin;" in orders

    def test_an_anonymous_route_without_limits_is_not_sent_to_keel_and_clears_identity(
        self,
    ) -> None:
        health = location_block(rendered(), "= /health")
        assert "auth_request" not in health
        assert 'proxy_set_header Keel-Identity "";' in health
        assert "RateLimit" not in health

    def test_the_decision_location_describes_the_original_request(self) -> None:
        text = rendered()
        authz = text[text.index("location = /_keel_authz {") :]
        authz = authz[: authz.index("}")]
        assert f"proxy_pass {KEEL_URL}/gateway/v1/authz/nginx;" in authz
        for line in (
            "internal;",
            "proxy_pass_request_body off;",
            'proxy_set_header Content-Length "";',
            "proxy_set_header X-Original-URI $request_uri;",
            "proxy_set_header X-Original-Method $request_method;",
            "proxy_set_header X-Original-Host $host;",
        ):
            assert line in authz
        assert "auth_request_set $keel_status $upstream_http_x_keel_status;" in text
        assert "if ($keel_status = 429) { return 429 " in text
        assert "if ($keel_status = 204) { return 204; }" in text


class TestPerRouteSettings:
    def test_limits_timeouts_retries_and_headers(self) -> None:
        orders = location_block(rendered(), "/orders/")
        assert "client_max_body_size 2048;" in orders
        assert "proxy_connect_timeout 500ms;" in orders
        assert "proxy_read_timeout 30000ms;" in orders
        assert "proxy_send_timeout 15000ms;" in orders
        assert "proxy_next_upstream error timeout http_503;" in orders
        assert "proxy_next_upstream_tries 2;" in orders
        assert 'proxy_set_header cookie "";' in orders
        assert 'proxy_set_header x-from "edge";' in orders
        assert "proxy_hide_header x-internal;" in orders
        assert "proxy_hide_header x-powered-by;" in orders
        assert 'add_header x-served-by "nginx" always;' in orders
        assert 'add_header x-content-type-options "nosniff" always;' in orders
        # '$' stays literal (nginx would read a variable) and quotes are escaped.
        assert 'add_header x-price "${keel_dollar}5 \\"net\\"" always;' in orders

    def test_what_nginx_cannot_express_is_named(self) -> None:
        text = rendered()
        orders = location_block(text, "/orders/")
        for missing in (
            "version routing",
            "response caching",
            "the retry budget",
            "URL parameters in the body",
        ):
            assert f"# not carried over: {missing}" in orders
        health = location_block(text, "= /health")
        assert "# not carried over: max_body_bytes 0" in health
        assert "proxy_next_upstream off;" in health
        assert re.search(r"upstream keel_orders \{\n    # not carried over: active health", text)


# -- the command ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    name = f"keel_gwx_{uuid.uuid4().hex[:12]}"
    with initialised_deployment(
        request, tmp_path, name, KEEL_SERVICES="auth,audit,gateway"
    ) as found:
        yield found


def test_keel_gateway_export_nginx_renders_the_stored_policy(
    deployment: Deployment, tmp_path: Path
) -> None:
    document = tmp_path / "policy.json"
    document.write_text(json.dumps(EVERY_FEATURE))
    deployment.ok("gateway", "apply", str(document))

    printed = deployment.ok(
        "gateway", "export", "nginx", "--keel-url", "http://keel.internal:8000/", "--listen", "9000"
    )
    assert printed == render_nginx(
        EdgePolicy.model_validate(EVERY_FEATURE),
        keel_url="http://keel.internal:8000",
        listen="9000",
    )

    target = tmp_path / "keel.conf"
    result = deployment.keel("gateway", "export", "nginx", "--output", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"wrote {target} (revision 1, 7 routes)" in result.stderr
    assert "proxy_pass http://127.0.0.1:8000/gateway/v1/authz/nginx;" in target.read_text()

    missing = deployment.refused("gateway", "export", "nginx", "--tenant", "no-such-tenant")
    assert "no-such-tenant" in missing or "not found" in missing.lower()
