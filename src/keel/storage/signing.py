"""Signed URL tokens and presigned POST policies: Keel's own, verified without a database hit.

**URL tokens** (``GET|HEAD|PUT /storage/v1/signed/{token}``). A token is the base64url
(no padding) of ``version byte || claims || mac``: the claims a compact JSON array (UTF-8, no
whitespace, absent trailing claims left out), the mac the full HMAC-SHA256 under the
platform's ``storage-url-signing`` key
over a context label, the version byte and the claims. Verification works on the bytes as
sent (nothing is re-serialised before the comparison) in this order: the length cap (a token
over :data:`MAX_TOKEN_CHARS` is refused before any work), the strict base64url form (the
canonical encoding only, so that no two spellings of one token exist), the version, the mac
(:func:`hmac.compare_digest`), the claims' shape, and only then the expiry.

**POST policies** (``POST /storage/v1/forms/{tenant_id}/{bucket}``), shaped as S3's: the form
carries ``policy``, the base64 of a JSON document ``{"expiration": ..., "conditions": [...]}``,
and ``signature``, ``v1.`` and the hex HMAC-SHA256 of that base64 text under the same key
with a different context label (a URL token never passes as a policy, nor the reverse). The
conditions::

    {"x-keel-tenant": "<tenant id>"}                    the tenant of the route
    {"bucket": "<bucket>"}                              the bucket of the route
    ["starts-with", "$key", "<prefix>"]                 the key (after ${filename}) starts so
    {"key": "<key>"}                                    only when one exact key is allowed
    ["content-length-range", <min>, <max>]              the file's size, checked as it streams
    ["in", "$content-type", ["image/png", "image/*"]]   the declared type (Keel's extension)

(matched as bucket policies match types, :func:`keel.storage.sniffing.allowed`). The declared
type is only the client's word: the type the bytes show is the service's to check against
the same patterns.

As in S3, the form's ``key`` may hold ``${filename}``, replaced by the uploaded file's name
before the key is checked, and every form field must be covered by the policy (``key``,
``policy``, ``signature``, ``content-type``, or an ``x-ignore-`` name): any other is refused.

Errors never carry the key, a signature or the claims: :class:`SignatureInvalid` says only
``expired``, ``tampered`` or ``malformed``; :class:`PolicyConditionFailed` names the condition.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from keel.core.errors import Forbidden
from keel.storage import sniffing

#: Tokens longer than this are refused before they are decoded (a URL path stays short).
MAX_TOKEN_CHARS = 4096
#: The ``policy`` field of a POST form is refused above this size (also the forms' field cap).
MAX_POLICY_CHARS = 8192
#: The shortest signing key accepted: a 256-bit key for HMAC-SHA256.
MIN_KEY_BYTES = 32
#: The format of the tokens :func:`sign_url_token` makes; others are refused as malformed.
TOKEN_VERSION = 1
#: The prefix of the ``signature`` field of POST forms (the format's version).
POST_SIGNATURE_PREFIX = "v1."

_MAC_BYTES = hashlib.sha256().digest_size
_CLAIM_COUNT = 9  # the fields of UrlClaims, in their order
# Context labels: the one key signs two kinds of document, neither may pass for the other.
_URL_TOKEN_CONTEXT = b"keel-storage-url-token\x00"
_POST_POLICY_CONTEXT = b"keel-storage-post-policy\x00"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_HEX_SIGNATURE = re.compile(f"[0-9a-f]{{{2 * _MAC_BYTES}}}")
_EXPIRATION_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: The form fields a POST form may carry: those the policy covers, the policy and signature
#: themselves, and (as in S3) any ``x-ignore-`` name.
_FORM_FIELDS = frozenset({"key", "content-type", "policy", "signature"})
_FILENAME_VARIABLE = "${filename}"

Method = Literal["GET", "PUT"]
SignatureProblem = Literal["expired", "tampered", "malformed"]
PolicyCondition = Literal["bucket", "key", "content-type", "content-length-range", "fields"]

_SIGNATURE_DETAILS: dict[SignatureProblem, str] = {
    "expired": "The signature has expired.",
    "tampered": "The signature does not match.",
    "malformed": "The signature or its document is malformed.",
}


class SignatureInvalid(Forbidden):
    """A signed URL or POST policy that is refused: ``reason`` says why, nothing more."""

    def __init__(self, reason: SignatureProblem) -> None:
        super().__init__(_SIGNATURE_DETAILS[reason], reason=reason)
        self.reason: SignatureProblem = reason


class PolicyConditionFailed(Forbidden):
    """A validly signed POST form that breaks one of its policy's conditions."""

    def __init__(self, condition: PolicyCondition) -> None:
        super().__init__(
            f"The form breaks the policy's {condition} condition.", condition=condition
        )
        self.condition: PolicyCondition = condition


# -- signed URL tokens -------------------------------------------------------------------------


@dataclass(frozen=True)
class UrlClaims:
    """What a signed URL allows: one method on one object until ``expires_at`` (unix s)."""

    tenant_id: str
    bucket: str
    key: str
    method: Method
    expires_at: int
    version_id: str | None = None
    content_type: str | None = None
    max_bytes: int | None = None
    #: The attachment filename of ``Content-Disposition`` (GET), or None for inline.
    disposition: str | None = None


def sign_url_token(signing_key: bytes, claims: UrlClaims) -> str:
    """The URL-safe token of ``claims``; ValueError if they do not fit in a token."""
    _check_signing_key(signing_key)
    _check_claims(claims)
    document: list[str | int | None] = [
        claims.tenant_id,
        claims.bucket,
        claims.key,
        claims.method,
        claims.expires_at,
        claims.version_id,
        claims.content_type,
        claims.max_bytes,
        claims.disposition,
    ]
    while document[-1] is None:  # trailing absent claims are left out: a shorter URL
        document.pop()
    try:
        payload = _compact_json(document)
    except UnicodeEncodeError:
        raise ValueError("the claims are not valid Unicode text") from None
    signed = bytes([TOKEN_VERSION]) + payload
    token = _base64url_encode(signed + _mac(signing_key, _URL_TOKEN_CONTEXT, signed))
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"the claims make a token over {MAX_TOKEN_CHARS} characters")
    return token


def verify_url_token(signing_key: bytes, token: str, *, now: float) -> UrlClaims:
    """The claims of ``token`` if it is authentic and unexpired at ``now`` (unix s).

    Raises :class:`SignatureInvalid`: ``malformed`` (too long, not canonical base64url, an
    unknown version, claims of the wrong shape), ``tampered`` (the mac does not match: a
    changed token or another key) or ``expired`` (checked last, on authentic claims only).
    """
    _check_signing_key(signing_key)
    if len(token) > MAX_TOKEN_CHARS:
        raise SignatureInvalid("malformed")
    raw = _base64url_decode(token)
    if len(raw) <= 1 + _MAC_BYTES or raw[0] != TOKEN_VERSION:
        raise SignatureInvalid("malformed")
    signed, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(signing_key, _URL_TOKEN_CONTEXT, signed)):
        raise SignatureInvalid("tampered")
    claims = _parse_claims(signed[1:])
    if now >= claims.expires_at:
        raise SignatureInvalid("expired")
    return claims


def _check_claims(claims: UrlClaims) -> None:
    if claims.method not in ("GET", "PUT"):
        raise ValueError(f"a signed URL allows GET or PUT, not {claims.method!r}")
    if not _is_int(claims.expires_at) or (
        claims.max_bytes is not None and (not _is_int(claims.max_bytes) or claims.max_bytes < 0)
    ):
        raise ValueError("expires_at and max_bytes are whole numbers (max_bytes >= 0)")


def _parse_claims(payload: bytes) -> UrlClaims:
    document = _load_json(payload)
    if not isinstance(document, list) or not 5 <= len(document) <= _CLAIM_COUNT:
        raise SignatureInvalid("malformed")
    document += [None] * (_CLAIM_COUNT - len(document))
    tenant_id, bucket, key, method, expires_at, version_id, content_type, max_bytes, disposition = (
        document
    )
    if not (
        all(isinstance(value, str) for value in (tenant_id, bucket, key))
        and method in ("GET", "PUT")
        and _is_int(expires_at)
        and all(value is None or isinstance(value, str) for value in (version_id, content_type))
        and (max_bytes is None or (_is_int(max_bytes) and max_bytes >= 0))
        and (disposition is None or isinstance(disposition, str))
    ):
        raise SignatureInvalid("malformed")
    return UrlClaims(
        tenant_id=tenant_id,
        bucket=bucket,
        key=key,
        method=method,
        expires_at=expires_at,
        version_id=version_id,
        content_type=content_type,
        max_bytes=max_bytes,
        disposition=disposition,
    )


# -- presigned POST policies -------------------------------------------------------------------


@dataclass(frozen=True)
class PostPolicy:
    """What a presigned POST form allows.

    ``key`` None: any key starting with ``key_prefix``; otherwise exactly the form key ``key``
    (which may itself hold ``${filename}``). ``content_types`` are media types or ``type/*``
    / ``*/*`` patterns the declared type must match; ``min_bytes``..``max_bytes`` bound the file.
    """

    tenant_id: str
    bucket: str
    key_prefix: str
    key: str | None
    content_types: tuple[str, ...]
    min_bytes: int
    max_bytes: int
    expires_at: int


def sign_post_policy(signing_key: bytes, policy: PostPolicy) -> dict[str, str]:
    """The form fields that carry ``policy``: ``{"policy": ..., "signature": ...}``."""
    _check_signing_key(signing_key)
    if not (
        _is_int(policy.min_bytes)
        and _is_int(policy.max_bytes)
        and 0 <= policy.min_bytes <= policy.max_bytes
    ):
        raise ValueError("content-length-range needs 0 <= min_bytes <= max_bytes")
    if not policy.content_types or not all(
        _media_type_pattern(pattern) for pattern in policy.content_types
    ):
        raise ValueError("content_types needs at least one type/subtype pattern")
    if not _is_int(policy.expires_at) or policy.expires_at < 0:
        raise ValueError("expires_at is a unix time in whole seconds")
    conditions: list[Any] = [
        {"x-keel-tenant": policy.tenant_id},
        {"bucket": policy.bucket},
        ["starts-with", "$key", policy.key_prefix],
    ]
    if policy.key is not None:
        conditions.append({"key": policy.key})
    conditions += [
        ["content-length-range", policy.min_bytes, policy.max_bytes],
        ["in", "$content-type", [pattern.lower() for pattern in policy.content_types]],
    ]
    expiration = datetime.fromtimestamp(policy.expires_at, UTC).strftime(_EXPIRATION_FORMAT)
    try:
        document = _compact_json({"expiration": expiration, "conditions": conditions})
    except UnicodeEncodeError:
        raise ValueError("the policy is not valid Unicode text") from None
    encoded = base64.b64encode(document).decode("ascii")
    if len(encoded) > MAX_POLICY_CHARS:
        raise ValueError(f"the policy is over {MAX_POLICY_CHARS} characters")
    return {"policy": encoded, "signature": _post_signature(signing_key, encoded)}


def verify_post_policy(
    signing_key: bytes,
    fields: Mapping[str, str],
    *,
    tenant_id: str,
    bucket: str,
    filename: str,
    now: float,
    file_content_type: str | None = None,
) -> PostPolicy:
    """The policy of a POST form, once its signature, expiry and conditions hold.

    ``fields`` are the form's text fields (names compared without regard to case, as
    :func:`keel.storage.forms.read_post_form` gives them); ``tenant_id`` and ``bucket`` those
    of the route; ``filename`` the file part's name (for ``${filename}``); the declared type
    is the ``Content-Type`` field, else ``file_content_type`` (the file part's own header).
    The size condition is the caller's to apply while the file streams:
    :func:`enforce_content_length`. The object's key is :func:`form_key`.

    Raises :class:`SignatureInvalid` (a missing, forged or expired policy) or
    :class:`PolicyConditionFailed` (a validly signed policy the form does not satisfy).
    """
    _check_signing_key(signing_key)
    form = _fold_field_names(fields)
    encoded, signature = form.get("policy"), form.get("signature")
    if (
        encoded is None
        or signature is None
        or len(encoded) > MAX_POLICY_CHARS
        or not _BASE64.fullmatch(encoded)
        or not signature.startswith(POST_SIGNATURE_PREFIX)
        or not _HEX_SIGNATURE.fullmatch(signature.removeprefix(POST_SIGNATURE_PREFIX))
    ):
        raise SignatureInvalid("malformed")
    if not hmac.compare_digest(
        signature.encode("ascii"), _post_signature(signing_key, encoded).encode("ascii")
    ):
        raise SignatureInvalid("tampered")
    policy = _parse_post_policy(encoded)
    if now >= policy.expires_at:
        raise SignatureInvalid("expired")
    if policy.tenant_id != tenant_id or policy.bucket != bucket:
        raise PolicyConditionFailed("bucket")
    if any(name not in _FORM_FIELDS and not name.startswith("x-ignore-") for name in form):
        raise PolicyConditionFailed("fields")
    template = form.get("key")
    if template is None or (policy.key is not None and template != policy.key):
        raise PolicyConditionFailed("key")
    key = form_key(form, filename)
    if not key.startswith(policy.key_prefix):
        raise PolicyConditionFailed("key")
    declared = form.get("content-type", file_content_type)
    if declared is None or not sniffing.allowed(declared, policy.content_types):
        raise PolicyConditionFailed("content-type")
    return policy


def form_key(fields: Mapping[str, str], filename: str) -> str:
    """The object key of a POST form: its ``key`` field with ``${filename}`` replaced.

    Raises :class:`PolicyConditionFailed` (``key``) if there is no key, or the key needs a
    file name the form did not give. The key's syntax is the service's to check after.
    """
    template = _fold_field_names(fields).get("key")
    if not template:
        raise PolicyConditionFailed("key")
    if _FILENAME_VARIABLE in template and not filename:
        raise PolicyConditionFailed("key")
    return template.replace(_FILENAME_VARIABLE, filename)


async def enforce_content_length(
    policy: PostPolicy, chunks: AsyncIterable[bytes]
) -> AsyncIterator[bytes]:
    """``chunks`` passed through while they hold the policy's ``content-length-range``.

    Raises :class:`PolicyConditionFailed` (``content-length-range``) as soon as the total goes
    over ``max_bytes``, before yielding the chunk that does (so the caller stops reading and
    nothing over the limit is stored), or at the end if it stays under ``min_bytes``.
    """
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > policy.max_bytes:
            raise PolicyConditionFailed("content-length-range")
        yield chunk
    if total < policy.min_bytes:
        raise PolicyConditionFailed("content-length-range")


def _parse_post_policy(encoded: str) -> PostPolicy:
    # Only documents this module signed get here (the mac matched): strict, no leniency.
    try:
        document = _load_json(base64.b64decode(encoded, validate=True))
    except binascii.Error:
        raise SignatureInvalid("malformed") from None
    if not isinstance(document, dict) or set(document) != {"expiration", "conditions"}:
        raise SignatureInvalid("malformed")
    expiration, conditions = document["expiration"], document["conditions"]
    if not isinstance(expiration, str) or not isinstance(conditions, list):
        raise SignatureInvalid("malformed")
    try:
        expires_at = int(
            datetime.strptime(expiration, _EXPIRATION_FORMAT).replace(tzinfo=UTC).timestamp()
        )
    except ValueError:
        raise SignatureInvalid("malformed") from None
    found: dict[str, Any] = {}
    for condition in conditions:
        name, value = _parse_condition(condition)
        if name in found:
            raise SignatureInvalid("malformed")
        found[name] = value
    if not {"x-keel-tenant", "bucket", "starts-with", "content-length-range", "in"} <= set(found):
        raise SignatureInvalid("malformed")
    min_bytes, max_bytes = found["content-length-range"]
    return PostPolicy(
        tenant_id=found["x-keel-tenant"],
        bucket=found["bucket"],
        key_prefix=found["starts-with"],
        key=found.get("key"),
        content_types=tuple(found["in"]),
        min_bytes=min_bytes,
        max_bytes=max_bytes,
        expires_at=expires_at,
    )


def _parse_condition(condition: Any) -> tuple[str, Any]:
    if isinstance(condition, dict) and len(condition) == 1:
        ((name, value),) = condition.items()
        if name in ("x-keel-tenant", "bucket", "key") and isinstance(value, str):
            return name, value
    elif isinstance(condition, list) and len(condition) == 3:
        operator, first, second = condition
        if operator == "starts-with" and first == "$key" and isinstance(second, str):
            return operator, second
        if (
            operator == "content-length-range"
            and _is_int(first)
            and _is_int(second)
            and 0 <= first <= second
        ):
            return operator, (first, second)
        if (
            operator == "in"
            and first == "$content-type"
            and isinstance(second, list)
            and second
            and all(isinstance(pattern, str) for pattern in second)
        ):
            return operator, second
    raise SignatureInvalid("malformed")


def _post_signature(signing_key: bytes, encoded_policy: str) -> str:
    mac = _mac(signing_key, _POST_POLICY_CONTEXT, encoded_policy.encode("ascii"))
    return POST_SIGNATURE_PREFIX + mac.hex()


def _fold_field_names(fields: Mapping[str, str]) -> dict[str, str]:
    # Form field names are compared without regard to case (as S3's); a name given twice in
    # two spellings is ambiguous and refused rather than resolved either way.
    folded: dict[str, str] = {}
    for name, value in fields.items():
        lowered = name.lower()
        if lowered in folded:
            raise PolicyConditionFailed("fields")
        folded[lowered] = value
    return folded


def _media_type_pattern(pattern: str) -> bool:
    kind, slash, subtype = pattern.partition("/")
    return bool(slash and kind and subtype) and (kind != "*" or subtype == "*")


# -- shared pieces -----------------------------------------------------------------------------


def _check_signing_key(signing_key: bytes) -> None:
    if len(signing_key) < MIN_KEY_BYTES:
        raise ValueError(f"a signing key has at least {MIN_KEY_BYTES} bytes")


def _mac(signing_key: bytes, context: bytes, message: bytes) -> bytes:
    return hmac.new(signing_key, context + message, hashlib.sha256).digest()


def _compact_json(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _load_json(payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are both ValueErrors
        raise SignatureInvalid("malformed") from None


def _base64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _base64url_decode(token: str) -> bytes:
    """The bytes of a canonical unpadded base64url text; ``malformed`` for anything else.

    The standard decoder skips characters outside the alphabet and ignores the unused low
    bits of the last character: either would let two different texts name one token.
    """
    if not _BASE64URL.fullmatch(token) or len(token) % 4 == 1:
        raise SignatureInvalid("malformed")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    if _base64url_encode(raw) != token:
        raise SignatureInvalid("malformed")
    return raw


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
