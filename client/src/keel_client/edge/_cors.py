"""CORS per route: the policy (wire model) and the engine that answers preflights and
decorates actual responses, on raw ASGI header lists.

Origins match **exactly**. A policy lists serialised origins (``https://app.example.com``,
``http://localhost:8080``), each normalised when the policy is written — scheme and host
lowercase, the scheme's default port dropped — which is the form a browser sends in
``Origin`` (the WHATWG URL standard's ASCII serialisation of an origin). A request's origin is
looked up in that set after lowercasing; nothing is parsed, suffix-matched or reflected, so
``https://example.com.evil.com``, ``https://evil.com/https://example.com``, ``http://`` for
``https://``, another port or a trailing dot simply are not in the set.

Refused when the policy is written, each error's ``loc`` naming the field (and the index of
the origin):

- ``"*"`` with ``allow_credentials=True``: browsers refuse ``*`` with credentials, and the
  usual work-around — reflecting whatever ``Origin`` came — hands every site the caller's
  cookies. List the origins instead.
- ``"*"`` beside other origins (it already covers them).
- ``"null"``: the origin of sandboxed iframes, ``file:`` pages, ``data:`` URLs and some
  redirects; any site can produce it, so allowing it is allowing everyone, with credentials.
- anything that is not ``scheme://host[:port]``: a path (even ``/``), query, fragment,
  userinfo, wildcard or Unicode host (write the punycode ``xn--`` form browsers send), port
  out of range, a host ending in a dot.

``"*"`` (without credentials) answers ``Access-Control-Allow-Origin: *`` to any origin,
``null`` included: the route is public.

What :class:`Cors` answers:

- a preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``): ``204``
  with the allow fields and ``Access-Control-Max-Age`` when the origin, the method and every
  requested header are allowed (and, when asked, private-network access); otherwise ``403``
  with no ``Access-Control-Allow-*`` field, so the browser blocks the request. Both carry
  ``Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers``.
- an actual request: ``Access-Control-Allow-Origin`` (the listed origin, or ``*``),
  ``Access-Control-Allow-Credentials: true`` and ``Access-Control-Expose-Headers`` when the
  origin is allowed, and always ``Vary: Origin``, so a shared cache never hands one origin's
  answer to another. :meth:`Cors.apply` also strips the upstream's own CORS fields: the
  route's policy, not the service behind it, decides who may read the response.

Methods are compared as sent (a browser upper-cases only DELETE, GET, HEAD, OPTIONS, POST and
PUT; ``patch`` is not ``PATCH``, so write ``PATCH`` as the page does); header names
case-insensitively.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = ["MAX_ORIGINS", "Cors", "CorsPolicy", "normalize_origin"]

MAX_ORIGINS: Final = 256
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_ORIGIN: Final = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<host>\[[0-9A-Fa-f:.]+\]|[^\[\]:/?#@\s]+)"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)
_LABEL: Final = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_TOKEN: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
#: Fetch normalises these methods to upper case before sending them (``fetch("/", {method:
#: "delete"})`` sends ``DELETE``); others go as written.
_NORMALISED_METHODS: Final = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"})


def normalize_origin(origin: str) -> str:
    """The serialised form of an ``http``/``https`` origin, or ``ValueError`` saying why not.

    ``HTTPS://Example.COM:443`` becomes ``https://example.com``; see the module docstring for
    what is refused.
    """
    if origin == "null":
        raise ValueError("'null' is refused: any site can send Origin: null")
    match = _ORIGIN.match(origin)
    if match is None:
        raise ValueError(
            f"{origin!r} is not an origin 'scheme://host[:port]' (no path, not even '/', "
            "no query, fragment or userinfo)"
        )
    scheme = match["scheme"].lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{origin!r}: the scheme must be http or https")
    host = _normalize_host(origin, match["host"])
    port = match["port"]
    if port is None:
        return f"{scheme}://{host}"
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"{origin!r}: the port must be 1-65535")
    if number == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{number}"


def _normalize_host(origin: str, host: str) -> str:
    if host.startswith("["):
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{origin!r}: {host!r} is not an IPv6 address") from None
        return f"[{address.compressed}]"
    if not host.isascii():
        raise ValueError(f"{origin!r}: write the host in its punycode (xn--) form")
    host = host.lower()
    labels = host.split(".")
    if labels[-1].isdigit() or all(label.isdigit() for label in labels):
        # A numeric last label makes a URL parser read the whole host as IPv4 (``127.1``,
        # ``0x7f.1``): only the dotted-quad spelling a browser serialises is accepted.
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ValueError(f"{origin!r}: {host!r} is not a dotted-quad IPv4 address") from None
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(
            f"{origin!r}: {host!r} is not a host name (letters, digits and hyphens, "
            "no empty label, no trailing dot, no wildcard)"
        )
    return host


def _origin(value: str) -> str:
    return value if value == "*" else normalize_origin(value)


def _method(value: str) -> str:
    if value == "*" or not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not an HTTP method (list each; '*' is not supported)")
    upper = value.upper()
    return upper if upper in _NORMALISED_METHODS else value


def _header_name(value: str) -> str:
    if value == "*" or not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not a header name (list each; '*' is not supported)")
    return value.lower()


def _distinct(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice")
        seen.add(value)
    return values


Origin = Annotated[str, AfterValidator(_origin)]
Method = Annotated[str, AfterValidator(_method)]
HeaderName = Annotated[str, AfterValidator(_header_name)]


class CorsPolicy(BaseModel):
    """A route's CORS policy (wire model).

    Example::

        CorsPolicy(
            allow_origins=["https://app.example.com", "http://localhost:5173"],
            allow_methods=["GET", "POST", "PATCH"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["ETag"],
            allow_credentials=True,
        )

    ``allow_origins`` holds exact origins (normalised: ``https://App.example.com:443`` is
    stored as ``https://app.example.com``) or the single value ``"*"``.
    ``max_age_seconds`` (0-86400) is how long a browser may reuse a preflight's answer
    (browsers cap it: Chromium at 2 hours, Firefox at 24). ``allow_private_network`` answers
    a Private Network Access preflight (a public page calling this service on a private
    address) with ``Access-Control-Allow-Private-Network: true``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_origins: Annotated[list[Origin], AfterValidator(_distinct)] = Field(
        min_length=1, max_length=MAX_ORIGINS
    )
    allow_methods: Annotated[list[Method], AfterValidator(_distinct)] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST"], max_length=32
    )
    allow_headers: Annotated[list[HeaderName], AfterValidator(_distinct)] = Field(
        default_factory=list, max_length=64
    )
    expose_headers: Annotated[list[HeaderName], AfterValidator(_distinct)] = Field(
        default_factory=list, max_length=64
    )
    allow_credentials: bool = False
    max_age_seconds: int = Field(default=600, ge=0, le=86400)
    allow_private_network: bool = False

    @field_validator("allow_origins")
    @classmethod
    def _wildcard_stands_alone(cls, value: list[str]) -> list[str]:
        if "*" in value and len(value) > 1:
            raise ValueError("'*' already allows every origin; list it alone")
        return value

    @field_validator("allow_credentials")
    @classmethod
    def _no_wildcard_with_credentials(cls, value: bool, info: ValidationInfo) -> bool:
        # Declared after allow_origins, so its validated value is in info.data (absent when
        # it failed, and then that error is the one to report).
        if value and "*" in info.data.get("allow_origins", ()):
            raise ValueError(
                "credentials cannot be allowed for every origin ('*'): list the origins"
            )
        return value


_VARY_PREFLIGHT: Final = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
_TRUE: Final = b"true"


class Cors:
    """The compiled form of a :class:`CorsPolicy`: answers preflights and decorates responses.

    Example (an ASGI middleware's use)::

        cors = Cors(route.cors)
        if cors.is_preflight(scope["method"], scope["headers"]):
            status, headers = cors.preflight(scope["headers"])
            ...  # send status and headers, no body
        else:
            ...  # on http.response.start:
            message["headers"] = cors.apply(message["headers"], request_origin)

    Request header lists are ASGI's (lowercase names, bytes).
    """

    __slots__ = (
        "_allow_any",
        "_allow_private_network",
        "_allowed_headers",
        "_allowed_methods",
        "_origins",
        "_preflight_fields",
        "_response_fields",
    )

    def __init__(self, policy: CorsPolicy) -> None:
        self._allow_any = policy.allow_origins == ["*"]
        self._origins: dict[bytes, bytes] = {
            origin.encode("ascii"): origin.encode("ascii") for origin in policy.allow_origins
        }
        self._allowed_methods = frozenset(method.encode("ascii") for method in policy.allow_methods)
        self._allowed_headers = frozenset(name.encode("ascii") for name in policy.allow_headers)
        self._allow_private_network = policy.allow_private_network
        credentials = (
            [(b"access-control-allow-credentials", _TRUE)] if policy.allow_credentials else []
        )
        # Everything after Access-Control-Allow-Origin, precomputed per kind of answer.
        self._preflight_fields: tuple[tuple[bytes, bytes], ...] = (
            *credentials,
            (b"access-control-allow-methods", ", ".join(policy.allow_methods).encode("ascii")),
            *_optional(b"access-control-allow-headers", policy.allow_headers),
            (b"access-control-max-age", str(policy.max_age_seconds).encode("ascii")),
        )
        self._response_fields: tuple[tuple[bytes, bytes], ...] = (
            *credentials,
            *_optional(b"access-control-expose-headers", policy.expose_headers),
        )

    def allowed_origin(self, request_origin: bytes | None) -> bytes | None:
        """The ``Access-Control-Allow-Origin`` value for this ``Origin``, or ``None``."""
        if request_origin is None:
            return None
        if self._allow_any:
            return b"*"
        # Browsers send scheme and host lowercase; lowercasing can only turn a differently
        # cased spelling of a listed origin into it, never make another origin match.
        return self._origins.get(request_origin.lower())

    def is_preflight(self, method: str, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the request is a CORS preflight: ``OPTIONS`` with ``Origin`` and
        ``Access-Control-Request-Method``. Any other ``OPTIONS`` goes to the service."""
        if method != "OPTIONS":
            return False
        has_origin = has_method = False
        for name, _ in headers:
            if name == b"origin":
                has_origin = True
            elif name == b"access-control-request-method":
                has_method = True
        return has_origin and has_method

    def preflight(
        self, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """The answer to a preflight: ``(204, fields)`` or ``(403, fields without any
        Access-Control-Allow-*)``. The caller sends it without a body."""
        request = _PreflightRequest(headers)
        vary = [(b"vary", _VARY_PREFLIGHT)]
        allow_origin = None if request.is_ambiguous else self.allowed_origin(request.origin)
        if (
            allow_origin is None
            or request.method is None
            or request.method not in self._allowed_methods
            or not request.headers <= self._allowed_headers
            or (request.private_network and not self._allow_private_network)
        ):
            return 403, vary
        fields = [(b"access-control-allow-origin", allow_origin), *self._preflight_fields]
        if request.private_network:
            fields.append((b"access-control-allow-private-network", _TRUE))
        fields.extend(vary)
        return 204, fields

    def response_headers(self, request_origin: bytes | None) -> list[tuple[bytes, bytes]]:
        """The CORS fields for an actual (non-preflight) response, ``Vary: Origin`` always."""
        allow_origin = self.allowed_origin(request_origin)
        if allow_origin is None:
            return [(b"vary", b"Origin")]
        return [
            (b"access-control-allow-origin", allow_origin),
            *self._response_fields,
            (b"vary", b"Origin"),
        ]

    def apply(
        self, headers: list[tuple[bytes, bytes]], request_origin: bytes | None
    ) -> list[tuple[bytes, bytes]]:
        """A response's headers with the policy applied, in one pass: the upstream's CORS
        fields dropped, ``Origin`` merged into its ``Vary``, the allow fields appended."""
        result: list[tuple[bytes, bytes]] = []
        needs_vary = True
        for name, value in headers:
            lowered = name.lower()
            if lowered.startswith(b"access-control-"):
                continue
            if lowered == b"vary" and needs_vary:
                value = _vary_with_origin(value)
                needs_vary = False
            result.append((name, value))
        for field in self.response_headers(request_origin):
            if field[0] != b"vary" or needs_vary:
                result.append(field)
        return result


class _PreflightRequest:
    """What a preflight asks, read from its headers in one pass."""

    __slots__ = ("headers", "is_ambiguous", "method", "origin", "private_network")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.origin: bytes | None = None
        self.method: bytes | None = None
        self.headers: frozenset[bytes] = frozenset()
        self.private_network = False
        # Two Origin (or two request-method) fields: which one the browser meant is unknowable.
        self.is_ambiguous = False
        requested: list[bytes] = []
        for name, value in headers:
            if name == b"origin":
                self.is_ambiguous |= self.origin is not None
                self.origin = value
            elif name == b"access-control-request-method":
                self.is_ambiguous |= self.method is not None
                self.method = value
            elif name == b"access-control-request-headers":
                requested.extend(value.split(b","))
            elif name == b"access-control-request-private-network":
                self.private_network = value.strip().lower() == _TRUE
        self.headers = frozenset(
            token for token in (item.strip(b" \t").lower() for item in requested) if token
        )


def _optional(name: bytes, values: list[str]) -> list[tuple[bytes, bytes]]:
    return [(name, ", ".join(values).encode("ascii"))] if values else []


def _vary_with_origin(value: bytes) -> bytes:
    """An upstream's ``Vary`` that also names ``Origin`` (``*`` already covers it)."""
    members = {member.strip(b" \t").lower() for member in value.split(b",")}
    if b"*" in members or b"origin" in members:
        return value
    if not value.strip():
        return b"Origin"
    return value + b", Origin"
