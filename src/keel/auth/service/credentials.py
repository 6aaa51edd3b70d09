"""High-entropy credentials: API keys, client secrets, refresh tokens.

API keys look like ``keel_`` + 40 random base62 characters + a 6-character CRC-32 checksum, so
secret scanners can find leaked ones and reject look-alikes without asking Keel
(``keel_[0-9A-Za-z]{46}``). The first 12 random characters are the public lookup id; only a
keyed hash of the whole key is stored.
"""

from __future__ import annotations

import secrets
import string
import zlib

API_KEY_PREFIX = "keel_"
_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
_BODY_LENGTH = 40
_CHECKSUM_LENGTH = 6
LOOKUP_LENGTH = 12
API_KEY_LENGTH = len(API_KEY_PREFIX) + _BODY_LENGTH + _CHECKSUM_LENGTH


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(_ALPHABET[remainder])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LENGTH)


def new_api_key() -> tuple[str, str]:
    """A new API key and its lookup id."""
    body = _random_base62(_BODY_LENGTH)
    return f"{API_KEY_PREFIX}{body}{_checksum(body)}", body[:LOOKUP_LENGTH]


def parse_api_key(candidate: str) -> str | None:
    """The lookup id of a well-formed API key (checksum included), else None."""
    if len(candidate) != API_KEY_LENGTH or not candidate.startswith(API_KEY_PREFIX):
        return None
    body = candidate[len(API_KEY_PREFIX) : len(API_KEY_PREFIX) + _BODY_LENGTH]
    checksum = candidate[len(API_KEY_PREFIX) + _BODY_LENGTH :]
    if any(char not in _ALPHABET for char in body) or not secrets.compare_digest(
        checksum, _checksum(body)
    ):
        return None
    return body[:LOOKUP_LENGTH]


def looks_like_api_key(candidate: str) -> bool:
    return candidate.startswith(API_KEY_PREFIX)


def new_client_id() -> str:
    return "kc_" + _random_base62(22)


def new_client_secret() -> str:
    return "kcs_" + secrets.token_urlsafe(32)


def new_refresh_token() -> str:
    return "krt_" + secrets.token_urlsafe(32)
