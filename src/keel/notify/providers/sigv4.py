"""AWS Signature Version 4 for header-signed requests (what SES's HTTP API needs).

botocore is not a dependency of Keel and SES needs nothing else of it, so this is the
published algorithm (AWS General Reference, "Create a signed AWS API request"), small and
tested against AWS's own test suite vectors (``get-vanilla``, ``post-vanilla``,
``get-vanilla-query-order-key-case``). The same functions let a test server verify what a
client signed.

Scope: one region and service per signature, headers signed (never query-string
presigning), the payload hashed (never ``UNSIGNED-PAYLOAD``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"AwsCredentials(access_key_id={self.access_key_id!r}, secret_access_key=***)"


def _uri_encode(value: str, *, keep_slash: bool) -> str:
    # RFC 3986 unreserved characters stay, everything else is %XX in upper case.
    return quote(value, safe="-_.~/" if keep_slash else "-_.~")


def canonical_query(query: str) -> str:
    """The query string's pairs encoded and sorted by name, then value."""
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_uri_encode(name, keep_slash=False), _uri_encode(value, keep_slash=False)))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def canonical_request(
    method: str, url: str, headers: Mapping[str, str], payload_hash: str
) -> tuple[str, str]:
    """The canonical request and its signed-header list, from the headers to sign.

    Header values are trimmed and inner runs of spaces squeezed, names lower-cased and
    sorted; the path is encoded once (the non-S3 rule: each segment normalised, ``/``
    kept).
    """
    parts = urlsplit(url)
    path = _uri_encode(parts.path or "/", keep_slash=True)
    normalised = {name.lower().strip(): " ".join(value.split()) for name, value in headers.items()}
    names = sorted(normalised)
    signed_headers = ";".join(names)
    header_block = "".join(f"{name}:{normalised[name]}\n" for name in names)
    request = "\n".join(
        [method.upper(), path, canonical_query(parts.query), header_block, signed_headers]
    )
    return f"{request}\n{payload_hash}", signed_headers


def credential_scope(date: str, region: str, service: str) -> str:
    return f"{date}/{region}/{service}/aws4_request"


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def signing_key(secret_access_key: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(f"AWS4{secret_access_key}".encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def signature(
    secret_access_key: str,
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    payload_hash: str,
    amz_date: str,
    region: str,
    service: str,
) -> tuple[str, str]:
    """The hex signature of a request and its signed-header list. ``headers`` are exactly
    the headers signed, ``host`` and ``x-amz-date`` among them."""
    canonical, signed_headers = canonical_request(method, url, headers, payload_hash)
    scope = credential_scope(amz_date[:8], region, service)
    key = signing_key(secret_access_key, amz_date[:8], region, service)
    digest = hmac.new(
        key, string_to_sign(amz_date, scope, canonical).encode(), hashlib.sha256
    ).hexdigest()
    return digest, signed_headers


def sign_headers(
    credentials: AwsCredentials,
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    region: str,
    service: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """``headers`` plus ``Host``, ``X-Amz-Date``, ``X-Amz-Security-Token`` (for temporary
    credentials) and ``Authorization``: everything to send. Every given header is signed."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
    to_sign = dict(headers)
    to_sign["Host"] = urlsplit(url).netloc
    to_sign["X-Amz-Date"] = amz_date
    if credentials.session_token:
        to_sign["X-Amz-Security-Token"] = credentials.session_token
    digest, signed_headers = signature(
        credentials.secret_access_key,
        method=method,
        url=url,
        headers=to_sign,
        payload_hash=hashlib.sha256(body).hexdigest(),
        amz_date=amz_date,
        region=region,
        service=service,
    )
    scope = credential_scope(amz_date[:8], region, service)
    to_sign["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={digest}"
    )
    return to_sign
