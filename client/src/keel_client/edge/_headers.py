"""Security-header profiles: the response headers a route adds and the ones it strips.

The values come from the **OWASP Secure Headers Project** (OSHP), whose CI publishes them as
``ci/headers_add.json`` (recommended headers and values) and ``ci/headers_remove.json``
(headers that disclose the stack and should not leave the server), both with
``"last_update_utc": "2026-07-19 05:44:10"`` — the newest copy found, read from the project
lead's repository ``righettod/www-project-secure-headers`` (commit ``0bdb31ee``); the copy of
``OWASP/www-project-secure-headers`` at hand was older (2024-09-02). The two files are kept
verbatim under ``tests/client/edge/data/`` and a test holds the constants below to them, so
a refresh is: replace the two files, run the test, copy what it reports.

Profiles (:data:`HeaderProfileName`):

- ``web``: exactly OSHP's add list, for HTML pages. Mind that the list includes
  ``Clear-Site-Data: "cache","cookies","storage"``, which makes a browser drop the site's
  cookies and storage on *every* response: a page with a cookie session drops it with
  ``remove=["clear-site-data"]``.
- ``api`` (the default), for JSON APIs, after the OWASP REST Security Cheat Sheet's "Security
  Headers" section: what it lists for every API response, with OSHP's value where OSHP has
  one, plus the few HTML-oriented ones that still matter when a browser opens a response
  directly. Each choice is documented at :data:`API_PROFILE`.
- ``none``: adds nothing. The removal list still applies: stripping stack-disclosing headers
  costs no client anything, and the deprecated ``X-XSS-Protection`` is never let through.

How :meth:`SecurityHeaders.apply` treats the upstream's headers:

1. Every header on OSHP's removal list, ``X-XSS-Protection`` (deprecated; its filter itself
   enabled attacks, and current browsers ignore it), and every name in ``remove`` is dropped,
   all occurrences, whatever the case of the name.
2. Every header the profile (or ``set``) adds *replaces* an upstream header of that name: an
   upstream's own ``Content-Security-Policy`` or ``Cache-Control`` is dropped, so the route's
   policy is what the browser sees, whatever the service behind it does. A route that wants
   an upstream's value through names it in ``set`` or lists it in ``remove`` (see below).
3. ``set`` overrides a profile value or adds a header; a name in ``remove`` is also left out
   of the profile's additions (``remove=["clear-site-data"]`` drops it from ``web``), and
   ``hsts=False`` leaves ``Strict-Transport-Security`` out (for a plain-HTTP deployment; an
   upstream's own HSTS then passes through untouched).

Everything is computed once, as bytes, when :class:`SecurityHeaders` is built; ``apply`` is
one pass over the response's ASGI header list.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "API_PROFILE",
    "OWASP_HEADERS_ADD",
    "OWASP_HEADERS_REMOVE",
    "OWASP_LAST_UPDATE_UTC",
    "HeaderProfileName",
    "HeaderRules",
    "SecurityHeaders",
]

HeaderProfileName = Literal["api", "web", "none"]

#: ``last_update_utc`` of the OSHP files the constants below were taken from.
OWASP_LAST_UPDATE_UTC: Final = "2026-07-19 05:44:10"

#: OSHP ``ci/headers_add.json``, in its order and spelling.
OWASP_HEADERS_ADD: Final[tuple[tuple[str, str], ...]] = (
    ("Cache-Control", "no-store, max-age=0"),
    ("Clear-Site-Data", '"cache","cookies","storage"'),
    (
        "Content-Security-Policy",
        "default-src 'self'; form-action 'self'; base-uri 'self'; object-src 'none'; "
        "frame-ancestors 'none'; upgrade-insecure-requests",
    ),
    ("Cross-Origin-Embedder-Policy", "require-corp"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    (
        "Permissions-Policy",
        "accelerometer=(), autoplay=(), camera=(), cross-origin-isolated=(), "
        "display-capture=(), encrypted-media=(), fullscreen=(), geolocation=(), gyroscope=(), "
        "keyboard-map=(), magnetometer=(), microphone=(), midi=(), payment=(), "
        "picture-in-picture=(), publickey-credentials-get=(), screen-wake-lock=(), "
        "sync-xhr=(self), usb=(), web-share=(), xr-spatial-tracking=(), clipboard-read=(), "
        "clipboard-write=(), gamepad=(), hid=(), idle-detection=(), interest-cohort=(), "
        "serial=(), unload=()",
    ),
    ("Referrer-Policy", "no-referrer"),
    ("Strict-Transport-Security", "max-age=63072000; includeSubDomains"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-DNS-Prefetch-Control", "off"),
    ("X-Frame-Options", "deny"),
    ("X-Permitted-Cross-Domain-Policies", "none"),
)

#: OSHP ``ci/headers_remove.json``, in its order and spelling.
OWASP_HEADERS_REMOVE: Final[tuple[str, ...]] = (
    "$wsep",
    "Host-Header",
    "K-Proxy-Request",
    "Liferay-Portal",
    "OracleCommerceCloud-Version",
    "Pega-Host",
    "Powered-By",
    "Product",
    "Server",
    "SourceMap",
    "X-AspNet-Version",
    "X-AspNetMvc-Version",
    "X-Atmosphere-error",
    "X-Atmosphere-first-request",
    "X-Atmosphere-tracking-id",
    "X-B3-ParentSpanId",
    "X-B3-Sampled",
    "X-B3-SpanId",
    "X-B3-TraceId",
    "X-BEServer",
    "X-Backside-Transport",
    "X-CF-Powered-By",
    "X-CMS",
    "X-CalculatedBETarget",
    "X-Cocoon-Version",
    "X-Content-Encoded-By",
    "X-Datadog-Origin",
    "X-Datadog-Parent-Id",
    "X-Datadog-Sampling-Priority",
    "X-Datadog-Tags",
    "X-Datadog-Trace-Id",
    "X-DiagInfo",
    "X-Envoy-Attempt-Count",
    "X-Envoy-External-Address",
    "X-Envoy-Internal",
    "X-Envoy-Original-Dst-Host",
    "X-Envoy-Upstream-Service-Time",
    "X-FEServer",
    "X-Framework",
    "X-Generated-By",
    "X-Generator",
    "X-Gitlab-Meta",
    "X-Jitsi-Release",
    "X-Joomla-Version",
    "X-Kong-Admin-Latency",
    "X-Kong-Client-Latency",
    "X-Kong-Proxy-Latency",
    "X-Kong-Request-Id",
    "X-Kong-Response-Latency",
    "X-Kong-Third-Party-Latency",
    "X-Kong-Total-Latency",
    "X-Kong-Upstream-Latency",
    "X-Kong-Upstream-Status",
    "X-Kubernetes-PF-FlowSchema-UI",
    "X-Kubernetes-PF-PriorityLevel-UID",
    "X-LiteSpeed-Cache",
    "X-LiteSpeed-Purge",
    "X-LiteSpeed-Tag",
    "X-LiteSpeed-Vary",
    "X-Litespeed-Cache-Control",
    "X-Mod-Pagespeed",
    "X-Nextjs-Cache",
    "X-Nextjs-Matched-Path",
    "X-Nextjs-Page",
    "X-Nextjs-Redirect",
    "X-OWA-Version",
    "X-Old-Content-Length",
    "X-OneAgent-JS-Injection",
    "X-Page-Speed",
    "X-Php-Version",
    "X-Powered-By",
    "X-Powered-By-Plesk",
    "X-Powered-CMS",
    "X-Redirect-By",
    "X-Server-Powered-By",
    "X-SourceFiles",
    "X-SourceMap",
    "X-Turbo-Charged-By",
    "X-Tyk-Trace-Id",
    "X-Umbraco-Version",
    "X-Varnish-Backend",
    "X-Varnish-Server",
    "X-Woodpecker-Version",
    "X-dtAgentId",
    "X-dtHealthCheck",
    "X-dtInjectedServlet",
    "X-ruxit-JS-Agent",
)


def _owasp(name: str) -> tuple[str, str]:
    return next(entry for entry in OWASP_HEADERS_ADD if entry[0] == name)


#: The ``api`` profile. The REST Security Cheat Sheet lists for every API response
#: ``Cache-Control: no-store``, ``Content-Security-Policy: frame-ancestors 'none'``,
#: ``Strict-Transport-Security``, ``X-Content-Type-Options: nosniff`` and
#: ``X-Frame-Options: DENY`` (``Content-Type`` too, which is the service's to set).
API_PROFILE: Final[tuple[tuple[str, str], ...]] = (
    # The cheat sheet's value. OSHP's adds ``max-age=0``, which ``no-store`` already implies.
    ("Cache-Control", "no-store"),
    # ``frame-ancestors 'none'`` is the cheat sheet's (drag-and-drop clickjacking);
    # ``default-src 'none'`` is its value for a response a browser renders: a JSON body
    # opened as a page, or an error page, can then load and run nothing.
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    # OSHP's value: an API answers fetch()/XHR, which CORS governs, never <img>/<script>
    # from another site; CORP only affects such no-cors loads, so it costs a CORS caller nothing.
    _owasp("Cross-Origin-Resource-Policy"),
    # The cheat sheet's HTML table; also keeps tokens in URLs out of Referer on redirects.
    _owasp("Referrer-Policy"),
    _owasp("Strict-Transport-Security"),
    _owasp("X-Content-Type-Options"),
    # Legacy browsers' form of frame-ancestors; OSHP's spelling of the cheat sheet's DENY.
    _owasp("X-Frame-Options"),
    # Left out, as they concern documents and a JSON response is none: Clear-Site-Data
    # (would wipe the caller's cookies), Cross-Origin-Embedder/Opener-Policy,
    # Permissions-Policy (the cheat sheet's HTML table; ~600 bytes on every response),
    # X-DNS-Prefetch-Control, X-Permitted-Cross-Domain-Policies (Flash/PDF cross-domain files).
)

_PROFILES: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "web": OWASP_HEADERS_ADD,
    "api": API_PROFILE,
    "none": (),
}

#: Never emitted, and removed from an upstream's response: deprecated, and its XSS filter
#: was itself a cross-site leak; OSHP recommends ``X-XSS-Protection: 0`` at most, CSP instead.
_DEPRECATED: Final = frozenset({"x-xss-protection"})

#: Names ``set`` may not touch: the message framing and connection (a wrong ``content-length``
#: corrupts the response), cookies (``set`` replaces, and would drop the service's own), and
#: CORS (the ``cors`` policy owns those, with its exact-origin rules).
_NOT_SETTABLE: Final = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-connection",
        "set-cookie",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Names ``remove`` may not strip: without them the response cannot be read.
_NOT_REMOVABLE: Final = frozenset(
    {"content-length", "transfer-encoding", "content-type", "content-encoding", "connection"}
)

_TOKEN: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
#: RFC 9110 §5.5: a field value is visible characters, SP and HTAB, and obs-text; CR, LF and
#: NUL (response splitting) and the other controls are refused.
_FIELD_VALUE: Final = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
MAX_VALUE_BYTES: Final = 8192


def _header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"{name!r} is not a header name (an RFC 9110 token, 1-64 characters)")
    return name.lower()


def _settable_name(name: str) -> str:
    lowered = _header_name(name)
    if lowered in _NOT_SETTABLE or lowered.startswith("access-control-"):
        raise ValueError(f"{name!r} cannot be set by a header profile")
    if lowered in _DEPRECATED:
        raise ValueError(f"{name!r} is deprecated and never sent; use Content-Security-Policy")
    return lowered


def _removable_name(name: str) -> str:
    lowered = _header_name(name)
    if lowered in _NOT_REMOVABLE:
        raise ValueError(f"{name!r} frames the response and cannot be removed")
    return lowered


def _header_value(value: str) -> str:
    if not _FIELD_VALUE.match(value):
        raise ValueError("the value holds a control character (CR, LF, NUL, ...) or non-Latin-1")
    if value != value.strip(" \t"):
        raise ValueError("the value starts or ends with whitespace")
    if len(value.encode("latin-1")) > MAX_VALUE_BYTES:
        raise ValueError(f"the value is longer than {MAX_VALUE_BYTES} bytes")
    return value


SettableName = Annotated[str, AfterValidator(_settable_name)]
RemovableName = Annotated[str, AfterValidator(_removable_name)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]


class HeaderRules(BaseModel):
    """A route's security-header policy (wire model).

    Example::

        HeaderRules(profile="web", set={"Content-Security-Policy": "default-src 'self'"},
                    remove=["Clear-Site-Data"])

    ``set`` adds or overrides headers (names are stored lowercase), ``remove`` strips extra
    names from the upstream's response and from the profile, ``hsts=False`` leaves
    ``Strict-Transport-Security`` out. A name may not be both set and removed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: HeaderProfileName = "api"
    set: dict[SettableName, HeaderValue] = Field(default_factory=dict, max_length=64)
    remove: list[RemovableName] = Field(default_factory=list, max_length=64)
    hsts: bool = True

    @field_validator("set", mode="before")
    @classmethod
    def _set_names_distinct(cls, value: object) -> object:
        # The names are lowercased afterwards, where "X-A" and "x-a" would silently merge.
        if isinstance(value, dict):
            lowered = [name.lower() for name in value if isinstance(name, str)]
            if len(set(lowered)) != len(lowered):
                raise ValueError("a header name is set twice (names are case-insensitive)")
        return value

    @model_validator(mode="after")
    def _set_and_remove_disjoint(self) -> HeaderRules:
        # Lowercased by the validators above, so "X-A" and "x-a" meet here.
        both = sorted(set(self.set) & set(self.remove))
        if both:
            raise ValueError(f"{both} are both set and removed")
        return self


class SecurityHeaders:
    """The compiled form of :class:`HeaderRules`, applied to a response's ASGI header list.

    Example::

        headers = SecurityHeaders(HeaderRules(profile="api"))
        message["headers"] = headers.apply(message["headers"])

    ``apply`` returns a new list: the upstream's headers in their order, less the removed and
    replaced names, followed by the profile's (then ``set``'s) headers, names lowercase.
    """

    __slots__ = ("_added", "_dropped")

    def __init__(self, rules: HeaderRules) -> None:
        added = _added_headers(rules)
        self._added: tuple[tuple[bytes, bytes], ...] = tuple(
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in added.items()
        )
        dropped = {name.lower() for name in OWASP_HEADERS_REMOVE}
        dropped |= _DEPRECATED | set(rules.remove) | set(added)
        self._dropped: frozenset[bytes] = frozenset(name.encode("latin-1") for name in dropped)

    @property
    def added(self) -> tuple[tuple[bytes, bytes], ...]:
        """The headers every response gets, in the order they are appended."""
        return self._added

    @property
    def dropped(self) -> frozenset[bytes]:
        """The lowercase names stripped from the upstream's response."""
        return self._dropped

    def apply(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The response's headers with the policy applied (the input is not changed)."""
        dropped = self._dropped
        # ASGI servers lowercase names, but a proxy may hand on an upstream's raw spelling.
        kept = [(name, value) for name, value in headers if name.lower() not in dropped]
        kept.extend(self._added)
        return kept


def _added_headers(rules: HeaderRules) -> dict[str, str]:
    """Profile, less ``remove`` and (without ``hsts``) HSTS, then ``set`` on top; lowercase
    names, insertion order kept (profile order, then ``set``'s new names)."""
    added = {name.lower(): value for name, value in _PROFILES[rules.profile]}
    if not rules.hsts:
        added.pop("strict-transport-security", None)
    for name in rules.remove:
        added.pop(name, None)
    added.update(rules.set)
    return added
